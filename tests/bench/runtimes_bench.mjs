// Random device reads per second through jco in Node.js, measured like
// `erofs-host bench --pattern random`: open the device with the default options, then
// `count` reads of `io-size` bytes at random io-size-aligned offsets; only the reads are
// timed. Prints one JSON line. Needs tests/node/out (tests/node/run.sh or
// tests/bench/runtimes_bench.sh transpiles it).
//
//   node tests/bench/runtimes_bench.mjs --io-size 4096 --count 2000 [--fixture DIR] [--seed N]
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = path.dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: {
    'io-size': { type: 'string', default: '4096' },
    count: { type: 'string', default: '2000' },
    fixture: { type: 'string', default: path.join(here, '../fixtures/large') },
    seed: { type: 'string', default: '1' },
  },
});
const io = Number(values['io-size']);
const count = Number(values.count);

const started = performance.now();
const { Vfile } = await import('../node/vfile.js');
const { tarindex } = await import('../node/out/erofs.js');
const dir = values.fixture;
const dev = tarindex.open(
  new Vfile(path.join(dir, 'meta.erofs')),
  new Vfile(path.join(dir, 'layer.tar.gz')),
  new Vfile(path.join(dir, 'layer.zinfo')),
  {},
);
const openMs = performance.now() - started;

// xorshift64*: a fixed seed, so runs compare.
let s = BigInt(values.seed) | 1n;
const next = () => {
  s ^= s >> 12n; s ^= (s << 25n) & 0xffffffffffffffffn; s ^= s >> 27n;
  return (s * 0x2545f4914f6cdd1dn) & 0xffffffffffffffffn;
};
const size = dev.size();
const slots = size / BigInt(io) || 1n;
const lat = [];
let bytes = 0;
const t0 = performance.now();
for (let i = 0; i < count; i++) {
  const off = (next() % slots) * BigInt(io);
  const t = performance.now();
  bytes += dev.pread(off, io).length;
  lat.push(performance.now() - t);
}
const seconds = (performance.now() - t0) / 1000;
lat.sort((a, b) => a - b);
const pct = (p) => lat[Math.round((lat.length - 1) * p)] * 1000;
console.log(JSON.stringify({
  runtime: `node ${process.version} (jco)`,
  io_size: io, count, bytes, seconds,
  reads_per_s: count / seconds, mb_per_s: bytes / seconds / 1e6,
  open_ms: openMs, p50_us: pct(0.5), p99_us: pct(0.99),
}));
