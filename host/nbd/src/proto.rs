//! Wire constants and message layouts of the NBD protocol (the public `proto.md`
//! specification), limited to what a read-only server needs.
//!
//! Every number on the wire is big-endian. Parsing here never trusts a length from the
//! peer: callers bound lengths before allocating, and the helpers only decode fixed-size
//! arrays that have already been read in full.

use std::io::{self, IoSlice, Read, Write};

// ---------------------------------------------------------------------------------------
// Handshake phase
// ---------------------------------------------------------------------------------------

/// First 8 bytes the server sends: ASCII "NBDMAGIC".
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// Second 8 bytes the server sends, and the prefix of every client option: ASCII "IHAVEOPT".
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic that starts every fixed-newstyle option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Handshake flag: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

/// Client flag: the client speaks fixed newstyle.
pub const CLIENT_FLAG_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: the client does not want the 124 zero bytes.
pub const CLIENT_FLAG_NO_ZEROES: u32 = 1 << 1;
/// Every client flag this server understands; any other bit means "hang up".
pub const CLIENT_FLAGS_KNOWN: u32 = CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES;

// Option codes (client -> server).
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;

// Option reply types (server -> client). Errors have bit 31 set.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
const REP_ERR_BIT: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR_BIT | 1;
pub const REP_ERR_INVALID: u32 = REP_ERR_BIT | 3;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR_BIT | 6;
pub const REP_ERR_TOO_BIG: u32 = REP_ERR_BIT | 9;

// Information types carried in `REP_INFO` replies to `NBD_OPT_INFO` / `NBD_OPT_GO`.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Largest option payload accepted during the handshake. Real options are tiny (an export
/// name is at most 4096 bytes); anything bigger is refused rather than buffered.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// Longest string (export name, description) the specification allows.
pub const MAX_STRING_LEN: usize = 4096;
/// Minimum and preferred block sizes advertised in `NBD_INFO_BLOCK_SIZE`.
pub const MIN_BLOCK_SIZE: u32 = 1;
pub const PREFERRED_BLOCK_SIZE: u32 = 4096;

// Transmission flags (sent with the export size).
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// The exact set this server advertises: read-only, flush accepted, and safe to use with
/// several connections at once (there is no cache: every read goes to the one source).
pub const TRANSMISSION_FLAGS: u16 =
    TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_SEND_FLUSH | TFLAG_CAN_MULTI_CONN;

// ---------------------------------------------------------------------------------------
// Transmission phase
// ---------------------------------------------------------------------------------------

pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Size of a (compact, non-extended) request header.
pub const REQUEST_LEN: usize = 28;

// Command types (low 16 bits of the request's type word).
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

// Command flags (high 16 bits of the request's type word).
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_DF: u16 = 1 << 2;

// Structured reply chunk flags and types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;

/// Error values of the transmission phase (the protocol's own numbering, which happens
/// to match Linux errno values).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;

/// Write payloads up to this size are read and thrown away so that the stream stays in
/// step; the specification says payloads up to 32 MiB should never be treated as abuse.
pub const WRITE_DRAIN_FLOOR: u32 = 32 * 1024 * 1024;

/// One decoded request header. `len` bytes of payload follow on the wire only for
/// `NBD_CMD_WRITE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

/// Why a 28-byte request header could not be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadMagic(pub u32);

impl Request {
    /// Decodes a request header. Only the magic can make a header invalid; every other
    /// field is judged later by the command handler.
    pub fn parse(raw: &[u8; REQUEST_LEN]) -> Result<Request, BadMagic> {
        let magic = be_u32(raw, 0);
        if magic != REQUEST_MAGIC {
            return Err(BadMagic(magic));
        }
        Ok(Request {
            flags: be_u16(raw, 4),
            kind: be_u16(raw, 6),
            cookie: be_u64(raw, 8),
            offset: be_u64(raw, 16),
            len: be_u32(raw, 24),
        })
    }
}

// Fixed-position big-endian decoders. The callers pass arrays whose size guarantees that
// `at + N` is in bounds, so the slice-to-array conversions cannot fail; they fall back to
// zero instead of panicking all the same.
pub fn be_u16(buf: &[u8], at: usize) -> u16 {
    buf.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_be_bytes)
        .unwrap_or(0)
}

pub fn be_u32(buf: &[u8], at: usize) -> u32 {
    buf.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0)
}

pub fn be_u64(buf: &[u8], at: usize) -> u64 {
    buf.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// Reads one big-endian u32 from the stream.
pub fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// Reads one big-endian u64 from the stream.
pub fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// Reads and throws away exactly `n` bytes, in bounded pieces (no allocation of `n`).
pub fn discard(r: &mut impl Read, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied != n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed the connection inside a payload",
        ));
    }
    Ok(())
}

/// Builds a fixed-newstyle option reply: magic, the option it answers, the reply type,
/// the payload length and the payload.
pub fn option_reply(option: u32, reply_type: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + payload.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    // Payloads are built by this server and stay far below 4 GiB.
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The 16-byte header of a simple reply. Data follows only for a successful read.
pub fn simple_reply(cookie: u64, error: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// The 20-byte header of one structured reply chunk; `payload_len` bytes follow it.
pub fn chunk_header(cookie: u64, flags: u16, kind: u16, payload_len: u32) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&kind.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..20].copy_from_slice(&payload_len.to_be_bytes());
    out
}

/// A complete, final `NBD_REPLY_TYPE_ERROR` chunk: error number, message length and a
/// short human-readable message (cut to a sane length).
pub fn error_chunk(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    let msg = truncate_utf8(message, 256).as_bytes();
    let payload_len = 4 + 2 + msg.len();
    let mut out = Vec::with_capacity(20 + payload_len);
    out.extend_from_slice(&chunk_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        payload_len as u32,
    ));
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// Cuts a string to at most `max` bytes without splitting a UTF-8 sequence.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Writes every byte of every part, using vectored writes so that a reply header and its
/// data leave in as few system calls as possible without first being copied together.
pub fn write_all_parts(w: &mut impl Write, parts: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut rest: &mut [IoSlice<'_>] = &mut slices;
    while !rest.is_empty() {
        match w.write_vectored(rest) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "connection accepted no more bytes",
                ))
            }
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let mut raw = [0u8; REQUEST_LEN];
        raw[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        raw[4..6].copy_from_slice(&CMD_FLAG_FUA.to_be_bytes());
        raw[6..8].copy_from_slice(&CMD_READ.to_be_bytes());
        raw[8..16].copy_from_slice(&0xdead_beef_u64.to_be_bytes());
        raw[16..24].copy_from_slice(&4096u64.to_be_bytes());
        raw[24..28].copy_from_slice(&512u32.to_be_bytes());
        let r = Request::parse(&raw).expect("valid header");
        assert_eq!(r.flags, CMD_FLAG_FUA);
        assert_eq!(r.kind, CMD_READ);
        assert_eq!(r.cookie, 0xdead_beef);
        assert_eq!(r.offset, 4096);
        assert_eq!(r.len, 512);
        raw[0] ^= 1;
        assert!(Request::parse(&raw).is_err());
    }

    #[test]
    fn error_chunk_layout() {
        let c = error_chunk(7, EIO, "boom");
        assert_eq!(be_u32(&c, 0), STRUCTURED_REPLY_MAGIC);
        assert_eq!(be_u16(&c, 4), REPLY_FLAG_DONE);
        assert_eq!(be_u16(&c, 6), REPLY_TYPE_ERROR);
        assert_eq!(be_u64(&c, 8), 7);
        assert_eq!(be_u32(&c, 16) as usize, c.len() - 20);
        assert_eq!(be_u32(&c, 20), EIO);
        assert_eq!(be_u16(&c, 24), 4);
        assert_eq!(&c[26..], b"boom");
    }

    #[test]
    fn truncation_keeps_utf8() {
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("abc", 10), "abc");
    }

    #[test]
    fn vectored_writer_handles_short_writes() {
        // A writer that accepts at most 3 bytes per call exercises the advance logic.
        struct Dribble(Vec<u8>);
        impl Write for Dribble {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                let n = b.len().min(3);
                self.0.extend_from_slice(&b[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut d = Dribble(Vec::new());
        write_all_parts(&mut d, &[b"hello", b"", b" world"]).expect("write");
        assert_eq!(d.0, b"hello world");
    }
}
