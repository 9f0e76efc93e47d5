// The `erofs:reader/vfile` import for jco: a read-only local file.
//
// jco maps the WIT resource to this class (see `--map` in package.json): the component
// calls `size()` and `pread(offset, len)` on the instances we hand to `tarindex.open`.
// u64 arrives and leaves as BigInt. A WIT `result` error is signalled by throwing an
// object whose `payload` is the error variant, e.g. `{ tag: 'io', val: 'why' }`.
import fs from 'node:fs';

/** The largest single read we serve (the component asks for 256 KiB pieces). */
const MAX_PREAD = 64 * 1024 * 1024;

/** A WIT `error` thrown to the component as `result::err`. */
export class VfileError extends Error {
  constructor(tag, message) {
    super(`${tag}: ${message}`);
    this.payload = { tag, val: message };
  }
}

export class Vfile {
  #fd;
  #path;
  #size;

  /** Open `path` read-only. Throws (in JS, before the component sees it) if it cannot. */
  constructor(path) {
    this.#path = path;
    this.#fd = fs.openSync(path, 'r');
    const st = fs.fstatSync(this.#fd, { bigint: true });
    if (st.isDirectory()) {
      fs.closeSync(this.#fd);
      throw new Error(`${path}: is a directory`);
    }
    this.#size = st.size;
  }

  get path() {
    return this.#path;
  }

  /** @returns {bigint} */
  size() {
    return this.#size;
  }

  /**
   * Exactly `len` bytes at `offset`, fewer only past the end of the file.
   * @param {bigint} offset
   * @param {number} len
   * @returns {Uint8Array}
   */
  pread(offset, len) {
    if (this.#fd === undefined) throw new VfileError('io', `${this.#path}: file is closed`);
    if (len > MAX_PREAD) throw new VfileError('out-of-range', `${this.#path}: read of ${len} bytes is too large`);
    if (offset >= this.#size) return new Uint8Array(0);
    const want = Number((this.#size - offset < BigInt(len)) ? this.#size - offset : BigInt(len));
    const buf = Buffer.allocUnsafe(want);
    let done = 0;
    while (done < want) {
      let n;
      try {
        n = fs.readSync(this.#fd, buf, done, want - done, offset + BigInt(done));
      } catch (e) {
        throw new VfileError('io', `${this.#path}: read at ${offset + BigInt(done)}: ${e.message}`);
      }
      if (n === 0) throw new VfileError('io', `${this.#path}: file shrank: read at ${offset + BigInt(done)} returned nothing`);
      done += n;
    }
    return new Uint8Array(buf.buffer, buf.byteOffset, want);
  }

  /** Called by jco when the component drops its handle. */
  [Symbol.dispose]() {
    if (this.#fd !== undefined) {
      fs.closeSync(this.#fd);
      this.#fd = undefined;
    }
  }
}
