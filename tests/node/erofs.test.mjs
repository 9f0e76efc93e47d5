// The erofs-wasm component in Node.js, through jco (`npm test` transpiles it first).
//
// For every fixture with a zinfo (and plain-tar, which has none):
//   - sha256 of the whole device == sha256(meta.erofs ‖ gunzip(layer.tar.gz));
//   - 1,000 random (offset, length) reads == the same bytes of that buffer;
//   - through the filesystem interface: the root directory lists the top-level names of
//     expected.json, and one file read by path (lookup per component, then read) has the
//     sha256 that the kernel showed.
// And: a bad zinfo is a thrown `bad-input` error, not a crash, and the instance goes on.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';

import { Vfile, VfileError } from './vfile.js';
import { tarindex, filesystem } from './out/erofs.js';

const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../fixtures');

const CASES = [
  { name: 'basic', blob: 'layer.tar.gz', zinfo: 'layer.zinfo' },
  { name: 'basic', blob: 'layer.tar.gz', zinfo: 'layer.v1.zinfo' },
  { name: 'multimember', blob: 'layer.tar.gz', zinfo: 'layer.zinfo' },
  { name: 'pigz', blob: 'layer.tar.gz', zinfo: 'layer.zinfo' },
  { name: 'aufs', blob: 'layer.tar.gz', zinfo: 'layer.zinfo' },
  { name: 'large', blob: 'layer.tar.gz', zinfo: 'layer.zinfo' },
  { name: 'plain-tar', blob: 'layer.tar', zinfo: null },
];

const RANDOM_READS = 1000;
const CHUNK = 8 << 20;

const sha256 = (...parts) => {
  const h = crypto.createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest('hex');
};

/** A small seeded PRNG (mulberry32), so a failure can be replayed. */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function openDevice(dir, c, options = {}) {
  return tarindex.open(
    new Vfile(path.join(dir, 'meta.erofs')),
    new Vfile(path.join(dir, c.blob)),
    c.zinfo ? new Vfile(path.join(dir, c.zinfo)) : undefined,
    options,
  );
}

/** Call `f` and return the WIT error it throws (its payload), failing if it does not throw. */
function witError(f) {
  try {
    f();
  } catch (e) {
    assert.ok(e && e.payload && typeof e.payload.tag === 'string', `not a WIT error: ${e}`);
    return e.payload;
  }
  assert.fail('expected a WIT error, got a result');
}

const names = (entries) => entries.map((e) => Buffer.from(e.name).toString('latin1'));

for (const c of CASES) {
  const label = `${c.name} (${c.zinfo ?? 'no zinfo'})`;
  describe(label, () => {
    const dir = path.join(FIXTURES, c.name);
    const expected = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8'));
    let want; // meta ‖ tar, the device as it must read

    before(() => {
      const meta = fs.readFileSync(path.join(dir, 'meta.erofs'));
      const blob = fs.readFileSync(path.join(dir, c.blob));
      const tar = c.zinfo ? zlib.gunzipSync(blob) : blob;
      assert.equal(meta.length, expected.meta_size);
      assert.equal(tar.length, expected.tar_size);
      assert.equal(sha256(tar), expected.tar_sha256);
      want = Buffer.concat([meta, tar]);
    });

    test('whole device sha256 == sha256(meta ‖ gunzip)', () => {
      const dev = openDevice(dir, c);
      try {
        const size = dev.size();
        assert.equal(size, BigInt(want.length));
        assert.equal(dev.metaSize(), BigInt(expected.meta_size));
        const h = crypto.createHash('sha256');
        for (let off = 0n; off < size; off += BigInt(CHUNK)) {
          const got = dev.pread(off, CHUNK);
          const left = size - off;
          assert.equal(got.length, Number(left < BigInt(CHUNK) ? left : BigInt(CHUNK)), `short read at ${off}`);
          h.update(got);
        }
        assert.equal(h.digest('hex'), sha256(want));
        assert.equal(dev.pread(size, 4096).length, 0, 'a read at the end returns nothing');
        assert.equal(dev.pread(size + 12345n, 1).length, 0, 'a read past the end returns nothing');
      } finally {
        dev[Symbol.dispose]();
      }
    });

    test('span boundaries: ascending from 0; each part read on its own instance matches', () => {
      const dev = openDevice(dir, c);
      try {
        const starts = dev.spanBoundaries();
        assert.equal(starts[0], 0n);
        for (let i = 1; i < starts.length; i++) assert.ok(starts[i] > starts[i - 1], `boundary ${i}`);
        if (c.zinfo === null) assert.equal(starts.length, 1, 'a plain tar gives just [0]');
        // The last two parts, each on a fresh device (as `cat --jobs` reads them).
        const ends = [...starts.slice(1), BigInt(want.length)];
        for (let k = Math.max(0, starts.length - 2); k < starts.length; k++) {
          const part = openDevice(dir, c);
          try {
            const got = part.pread(starts[k], Number(ends[k] - starts[k]));
            assert.ok(got.equals ? got.equals(want.subarray(Number(starts[k]), Number(ends[k])))
              : Buffer.from(got).equals(want.subarray(Number(starts[k]), Number(ends[k]))), `part ${k}`);
          } finally {
            part[Symbol.dispose]();
          }
        }
      } finally {
        dev[Symbol.dispose]();
      }
    });

    test(`${RANDOM_READS} random reads match the uncompressed bytes`, () => {
      const seed = 0x5eed0000 + want.length % 65536;
      const rand = rng(seed);
      const dev = openDevice(dir, c);
      try {
        const size = want.length;
        for (let i = 0; i < RANDOM_READS; i++) {
          const r = rand();
          // Mostly small reads, some large ones, some at and across the end.
          const len = r < 0.5 ? 1 + Math.floor(rand() * 4096)
            : r < 0.9 ? 4096 + Math.floor(rand() * (128 << 10))
              : Math.floor(rand() * (1 << 20));
          const off = rand() < 0.05 ? Math.max(0, size - Math.floor(rand() * 2 * len))
            : Math.floor(rand() * size);
          const got = dev.pread(BigInt(off), len);
          const exp = want.subarray(off, Math.min(size, off + len));
          if (got.length !== exp.length || !Buffer.from(got.buffer, got.byteOffset, got.length).equals(exp)) {
            assert.fail(`read ${i} (seed ${seed.toString(16)}): pread(${off}, ${len}) returned ${got.length} bytes that differ from the expected ${exp.length}`);
          }
        }
        const st = dev.stats();
        assert.equal(typeof st.bytesDecoded, 'bigint');
      } finally {
        dev[Symbol.dispose]();
      }
    });

    test('filesystem: list the root, read one file by path', () => {
      const fsys = filesystem.open(openDevice(dir, c));
      try {
        assert.equal(fsys.deviceSize(), BigInt(want.length));
        const root = fsys.root();
        const entries = [];
        for (let cookie = 0n; ;) {
          const batch = fsys.readdir(root, cookie, 7);
          if (batch.length === 0) break;
          entries.push(...batch);
          cookie = batch[batch.length - 1].nextCookie;
        }
        const listed = names(entries);
        assert.deepEqual(listed.slice(0, 2), ['.', '..']);
        const top = expected.entries.filter((e) => !e.path.includes('/'))
          .map((e) => Buffer.from(e.path, 'utf8').toString('latin1'));
        assert.deepEqual(listed.slice(2).sort(), top.sort());

        // The deepest regular file with data (first in expected.json order among equals).
        const files = expected.entries.filter((e) => e.mode.startsWith('0o100') && e.size > 0);
        const pick = files.reduce((a, b) => (b.path.split('/').length > a.path.split('/').length ? b : a));
        let ino = root;
        let attrs;
        for (const part of pick.path.split('/')) {
          attrs = fsys.lookup(ino, Buffer.from(part, 'utf8'));
          ino = attrs.ino;
        }
        assert.equal(attrs.kind, 'regular');
        assert.equal(attrs.size, BigInt(pick.size));
        assert.equal(attrs.mode, parseInt(pick.mode.slice(2), 8));
        assert.equal(attrs.uid, pick.uid);
        assert.equal(attrs.gid, pick.gid);
        assert.equal(attrs.nlink, pick.nlink);
        const h = crypto.createHash('sha256');
        let off = 0n;
        for (;;) {
          const got = fsys.read(ino, off, 256 << 10);
          if (got.length === 0) break;
          h.update(got);
          off += BigInt(got.length);
        }
        assert.equal(off, BigInt(pick.size), pick.path);
        assert.equal(h.digest('hex'), pick.sha256, pick.path);

        assert.equal(witError(() => fsys.lookup(root, Buffer.from('no such name'))).tag, 'not-found');
      } finally {
        fsys[Symbol.dispose]();
      }
    });
  });
}

describe('errors are values, not crashes', () => {
  const dir = path.join(FIXTURES, 'basic');
  const meta = path.join(dir, 'meta.erofs');
  const blob = path.join(dir, 'layer.tar.gz');
  let tmp;

  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'erofs-node-'));
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  const bad = (name, bytes) => {
    const p = path.join(tmp, name);
    fs.writeFileSync(p, bytes);
    return p;
  };

  test('a truncated zinfo is bad-input', () => {
    const zinfo = fs.readFileSync(path.join(dir, 'layer.zinfo'));
    for (const cut of [0, 7, 100, zinfo.length >> 1, zinfo.length - 1]) {
      const z = bad(`cut${cut}.zinfo`, zinfo.subarray(0, cut));
      const err = witError(() => tarindex.open(new Vfile(meta), new Vfile(blob), new Vfile(z), {}));
      assert.equal(err.tag, 'bad-input', `zinfo cut at ${cut}: ${JSON.stringify(err)}`);
      assert.match(err.val, /zinfo/);
    }
  });

  test('a zinfo of garbage is bad-input', () => {
    const z = bad('garbage.zinfo', crypto.randomBytes(4096));
    assert.equal(witError(() => tarindex.open(new Vfile(meta), new Vfile(blob), new Vfile(z), {})).tag, 'bad-input');
  });

  test('a gzip blob without a zinfo is bad-input', () => {
    assert.equal(witError(() => tarindex.open(new Vfile(meta), new Vfile(blob), undefined, {})).tag, 'bad-input');
  });

  test('a vfile that fails gives the io error back', () => {
    class Failing extends Vfile {
      pread() {
        throw new VfileError('io', 'disk on fire');
      }
    }
    const err = witError(() => tarindex.open(new Vfile(meta), new Failing(blob), new Vfile(path.join(dir, 'layer.zinfo')), {}));
    assert.equal(err.tag, 'io');
  });

  test('open-remote with the network denied is an error, not a crash', (t) => {
    if (typeof tarindex.openRemote !== 'function') {
      t.skip('this build has no tarindex.open-remote');
      return;
    }
    // deny-http.js refuses every wasi:http request (run.sh maps it), so nothing leaves.
    const err = witError(() => tarindex.openRemote(new Vfile(meta), { tag: 'url', val: 'https://registry.invalid/blob' },
      new Vfile(path.join(dir, 'layer.zinfo')), {}, { maxRetries: 0 }));
    assert.notEqual(err.tag, 'bad-input', JSON.stringify(err));
    assert.match(String(err.val), /denied|allow-list|not allowed/i, JSON.stringify(err));
  });

  test('the instance still serves a good device afterwards', () => {
    const dev = openDevice(dir, CASES[0]);
    try {
      const got = dev.pread(0n, 1024);
      assert.ok(Buffer.from(got).equals(fs.readFileSync(meta).subarray(0, 1024)));
    } finally {
      dev[Symbol.dispose]();
    }
  });
});
