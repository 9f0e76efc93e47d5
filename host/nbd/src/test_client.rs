//! A minimal raw NBD client for protocol tests (feature `test-client`): it speaks the
//! bytes of the specification directly, so a test can send what no real client would
//! (bad magics, oversized options, writes) and check every byte of every reply. Used by
//! this crate's tests and by erofs-host's `serve-nbd` tests; it panics on anything
//! unexpected, which is what a test wants.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::proto::{
    CLIENT_FLAGS_KNOWN, FLAG_FIXED_NEWSTYLE, INFO_EXPORT, REPLY_FLAG_DONE, REPLY_TYPE_ERROR,
    REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA,
};
pub use crate::proto::{
    CMD_DISC, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES, EINVAL, EIO, EPERM,
    IHAVEOPT, INFO_BLOCK_SIZE, NBDMAGIC, OPTION_REPLY_MAGIC as OPT_REPLY_MAGIC, OPT_ABORT,
    OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_LIST, OPT_STRUCTURED_REPLY, REP_ACK, REP_ERR_INVALID,
    REP_ERR_TOO_BIG, REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_INFO, REP_SERVER, REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC as SIMPLE_MAGIC, STRUCTURED_REPLY_MAGIC as STRUCTURED_MAGIC,
};

/// How long a read may wait before the test fails instead of hanging.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

pub enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

pub struct Conn {
    pub sock: Sock,
    /// Whether structured replies were negotiated (reads may then come in chunks).
    pub structured: bool,
}

/// One decoded transmission reply: cookie, error (0 = success) and the data.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub cookie: u64,
    pub error: u32,
    pub data: Vec<u8>,
}

impl Conn {
    pub fn tcp(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).expect("connect tcp");
        s.set_nodelay(true).expect("nodelay");
        let mut c = Conn {
            sock: Sock::Tcp(s),
            structured: false,
        };
        c.set_timeout(Some(DEFAULT_TIMEOUT));
        c
    }

    pub fn unix(path: &Path) -> Conn {
        let s = UnixStream::connect(path).expect("connect unix");
        let mut c = Conn {
            sock: Sock::Unix(s),
            structured: false,
        };
        c.set_timeout(Some(DEFAULT_TIMEOUT));
        c
    }

    /// The read timeout for every later receive.
    pub fn set_timeout(&mut self, t: Option<Duration>) {
        match &self.sock {
            Sock::Tcp(s) => s.set_read_timeout(t),
            Sock::Unix(s) => s.set_read_timeout(t),
        }
        .expect("set the read timeout");
    }

    pub fn send(&mut self, b: &[u8]) -> io::Result<()> {
        match &mut self.sock {
            Sock::Tcp(s) => s.write_all(b),
            Sock::Unix(s) => s.write_all(b),
        }
    }

    pub fn recv(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        match &mut self.sock {
            Sock::Tcp(s) => s.read_exact(&mut b)?,
            Sock::Unix(s) => s.read_exact(&mut b)?,
        }
        Ok(b)
    }

    fn recv_array<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        match &mut self.sock {
            Sock::Tcp(s) => s.read_exact(&mut b),
            Sock::Unix(s) => s.read_exact(&mut b),
        }
        .expect("recv");
        b
    }
    fn recv_u16(&mut self) -> u16 {
        u16::from_be_bytes(self.recv_array())
    }
    fn recv_u32(&mut self) -> u32 {
        u32::from_be_bytes(self.recv_array())
    }
    fn recv_u64(&mut self) -> u64 {
        u64::from_be_bytes(self.recv_array())
    }

    /// True once the server has closed the connection (read returns EOF or an error
    /// other than a timeout).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        let r = match &mut self.sock {
            Sock::Tcp(s) => s.read(&mut b),
            Sock::Unix(s) => s.read(&mut b),
        };
        match r {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
    }

    /// Shut the connection down both ways (a peer that is already gone is fine).
    pub fn close(self) {
        let _ = match &self.sock {
            Sock::Tcp(s) => s.shutdown(Shutdown::Both),
            Sock::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    /// Reads the greeting and answers with `client_flags`; returns the handshake flags.
    pub fn greet(&mut self, client_flags: u32) -> u16 {
        assert_eq!(self.recv_u64(), NBDMAGIC);
        assert_eq!(self.recv_u64(), IHAVEOPT);
        let flags = self.recv_u16();
        self.send(&client_flags.to_be_bytes()).expect("send flags");
        flags
    }

    pub fn send_option(&mut self, option: u32, data: &[u8]) {
        let mut v = IHAVEOPT.to_be_bytes().to_vec();
        v.extend_from_slice(&option.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        self.send(&v).expect("send option");
    }

    /// Reads one option reply: (option, reply type, payload).
    pub fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        assert_eq!(self.recv_u64(), OPT_REPLY_MAGIC);
        let option = self.recv_u32();
        let kind = self.recv_u32();
        let len = self.recv_u32() as usize;
        let payload = self.recv(len).expect("reply payload");
        (option, kind, payload)
    }

    /// Sends INFO or GO and collects the replies up to the final one.
    pub fn info_or_go(&mut self, option: u32, name: &str, reqs: &[u16]) -> Vec<(u32, Vec<u8>)> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
        for r in reqs {
            d.extend_from_slice(&r.to_be_bytes());
        }
        self.send_option(option, &d);
        let mut out = Vec::new();
        loop {
            let (o, kind, p) = self.option_reply();
            assert_eq!(o, option);
            out.push((kind, p));
            if kind != REP_INFO {
                return out;
            }
        }
    }

    /// Full fixed-newstyle handshake with NBD_OPT_GO on `export` (`""` is the default
    /// export), optionally negotiating structured replies first; returns the export size.
    pub fn handshake(&mut self, export: &str, structured: bool) -> u64 {
        let flags = self.greet(CLIENT_FLAGS_KNOWN);
        assert_eq!(
            flags & FLAG_FIXED_NEWSTYLE,
            FLAG_FIXED_NEWSTYLE,
            "fixed newstyle"
        );
        if structured {
            self.send_option(OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(self.option_reply().1, REP_ACK, "STRUCTURED_REPLY refused");
            self.structured = true;
        }
        let replies = self.info_or_go(OPT_GO, export, &[INFO_BLOCK_SIZE]);
        assert_eq!(replies.last().map(|r| r.0), Some(REP_ACK), "GO failed");
        let export = replies
            .iter()
            .find(|(k, p)| *k == REP_INFO && p[..2] == INFO_EXPORT.to_be_bytes())
            .expect("NBD_INFO_EXPORT");
        u64::from_be_bytes(export.1[2..10].try_into().expect("size"))
    }

    pub fn request(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) {
        self.send(&request_bytes(kind, flags, cookie, offset, len))
            .expect("send request");
    }

    /// A request header with any `magic`, followed by `payload` (the data of a WRITE).
    pub fn request_with(
        &mut self,
        magic: u32,
        kind: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        let mut v = request_bytes(kind, 0, cookie, offset, len);
        v[..4].copy_from_slice(&magic.to_be_bytes());
        v.extend_from_slice(payload);
        self.send(&v).expect("send request");
    }

    /// Reads one complete reply (simple, or all chunks of a structured one). For simple
    /// replies the caller says how much data to expect on success.
    pub fn reply(&mut self, simple_read_len: usize) -> Reply {
        self.reply_lookup(|_| simple_read_len)
    }

    /// Like `reply`, with the expected simple-reply data length looked up by cookie.
    /// Without structured replies every reply must be simple; with them, a reply to
    /// anything but a read may still be simple. An error chunk carries no data, and a
    /// failed read carries none either.
    pub fn reply_lookup(&mut self, len_of: impl Fn(u64) -> usize) -> Reply {
        let mut magic = self.recv_u32();
        if !self.structured || magic == SIMPLE_MAGIC {
            assert_eq!(magic, SIMPLE_MAGIC, "unexpected reply magic {magic:#x}");
            let error = self.recv_u32();
            let cookie = self.recv_u64();
            let data = if error == 0 {
                self.recv(len_of(cookie)).expect("data")
            } else {
                Vec::new()
            };
            return Reply {
                cookie,
                error,
                data,
            };
        }
        let mut error = 0;
        let mut data = Vec::new();
        loop {
            assert_eq!(magic, STRUCTURED_MAGIC, "unexpected reply magic {magic:#x}");
            let flags = self.recv_u16();
            let kind = self.recv_u16();
            let cookie = self.recv_u64();
            let len = self.recv_u32() as usize;
            let payload = self.recv(len).expect("chunk payload");
            match kind {
                REPLY_TYPE_NONE => assert_eq!(len, 0),
                REPLY_TYPE_OFFSET_DATA => data.extend_from_slice(&payload[8..]),
                REPLY_TYPE_ERROR => {
                    error = u32::from_be_bytes(payload[..4].try_into().expect("errno"));
                    let msg_len = u16::from_be_bytes([payload[4], payload[5]]) as usize;
                    assert_eq!(len, 6 + msg_len, "an error chunk carries no data");
                }
                other => panic!("unexpected chunk type {other:#x}"),
            }
            if flags & REPLY_FLAG_DONE != 0 {
                if error != 0 {
                    assert!(data.is_empty(), "a failed read must carry no data");
                }
                return Reply {
                    cookie,
                    error,
                    data,
                };
            }
            magic = self.recv_u32();
        }
    }

    /// READ then its reply.
    pub fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Reply {
        self.request(CMD_READ, 0, cookie, offset, len);
        let r = self.reply(len as usize);
        assert_eq!(r.cookie, cookie);
        r
    }
}

/// The 28 bytes of a transmission request.
pub fn request_bytes(kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut v = REQUEST_MAGIC.to_be_bytes().to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}
