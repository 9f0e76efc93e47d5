//! The fixed-newstyle handshake: greeting, client flags, then option haggling until the
//! client picks the export (`NBD_OPT_GO` / `NBD_OPT_EXPORT_NAME`) or leaves.
//!
//! The functions are generic over `Read`/`Write` so that the state machine can be tested
//! against in-memory byte streams.

use std::io::{self, Read, Write};

use tracing::{debug, warn};

use crate::proto::*;
use crate::ExportInfo;

/// How option haggling ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The client selected the export; the transmission phase starts now. `structured`
    /// tells whether `NBD_OPT_STRUCTURED_REPLY` was negotiated on the way.
    Transmission { structured: bool },
    /// The session is over (abort, refused export, protocol violation): close the socket.
    Closed,
}

/// A client that sends this many options without choosing an export is considered
/// abusive and is disconnected (the specification allows this for denial of service).
const MAX_OPTIONS: u32 = 1024;

/// Length of the server greeting: NBDMAGIC, IHAVEOPT and the 16-bit handshake flags.
const GREETING_LEN: usize = 8 + 8 + 2;
/// The reply to `NBD_OPT_EXPORT_NAME`: the export size and the transmission flags...
const EXPORT_NAME_REPLY_LEN: usize = 8 + 2;
/// ...then these zero bytes, unless the client set `NO_ZEROES`.
const EXPORT_NAME_PADDING: usize = 124;

/// What one option does to the haggling.
enum Step {
    /// Answered; wait for the next option.
    Next,
    /// The haggling is over.
    Done(Outcome),
}

/// Runs the server side of the handshake on an already-connected stream.
///
/// `Err` means the transport failed or the peer hung up; `Ok(Outcome::Closed)` means the
/// server decided to end the session. In both cases the caller closes the connection.
pub(crate) fn negotiate<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    export: &ExportInfo,
) -> io::Result<Outcome> {
    // State 1: greeting.
    send_greeting(w)?;

    // State 2: client flags.
    let Some(no_zeroes) = read_client_flags(r)? else {
        return Ok(Outcome::Closed);
    };

    // State 3: option haggling. `structured` persists across options until the client
    // enters transmission.
    let mut structured = false;
    for _ in 0..MAX_OPTIONS {
        let Some((option, data)) = read_option(r, w)? else {
            return Ok(Outcome::Closed);
        };
        let step = match option {
            OPT_EXPORT_NAME => export_name(w, export, &data, no_zeroes, structured)?,
            OPT_ABORT => {
                // Soft disconnect requested: acknowledge (any payload is ignored, as the
                // specification asks), then the caller closes. A client that already hung
                // up makes the write fail, which is just as final.
                if let Err(e) = send(w, option, REP_ACK, &[]) {
                    debug!("NBD_OPT_ABORT acknowledgement not sent: {e}");
                }
                Step::Done(Outcome::Closed)
            }
            OPT_LIST => list(w, export, &data)?,
            OPT_INFO | OPT_GO => info_or_go(w, option, export, &data, structured)?,
            OPT_STRUCTURED_REPLY => {
                if data.is_empty() {
                    // From now on reads are answered with structured reply chunks.
                    structured = true;
                    send(w, option, REP_ACK, &[])?;
                } else {
                    let why = "NBD_OPT_STRUCTURED_REPLY takes no data";
                    send_error(w, option, REP_ERR_INVALID, why)?;
                }
                Step::Next
            }
            OPT_STARTTLS => {
                // This server runs without TLS ("NOTLS" mode in the specification).
                send_error(w, option, REP_ERR_UNSUP, "TLS is not supported")?;
                Step::Next
            }
            _ => {
                // Includes the metadata-context and extended-header options: without them
                // clients fall back to plain reads, which is all a read-only export needs.
                send_error(w, option, REP_ERR_UNSUP, "option not supported")?;
                Step::Next
            }
        };
        if let Step::Done(outcome) = step {
            return Ok(outcome);
        }
    }
    warn!("client sent too many options; closing");
    Ok(Outcome::Closed)
}

/// State 1: advertise fixed newstyle and the ability to skip the zero padding.
fn send_greeting<W: Write>(w: &mut W) -> io::Result<()> {
    let mut greeting = Vec::with_capacity(GREETING_LEN);
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&greeting)?;
    w.flush()
}

/// State 2: the client's flags. Any bit we did not offer means the client expects
/// something we do not speak, and the specification requires us to drop the connection
/// (`None`). Otherwise: whether the client asked for `NO_ZEROES`.
fn read_client_flags<R: Read>(r: &mut R) -> io::Result<Option<bool>> {
    let client_flags = read_u32(r)?;
    if client_flags & !CLIENT_FLAGS_KNOWN != 0 {
        warn!(client_flags, "client set unknown handshake flags; closing");
        return Ok(None);
    }
    if client_flags & CLIENT_FLAG_FIXED_NEWSTYLE == 0 {
        // Allowed by the specification: we still answer options in the fixed format,
        // which an old-newstyle client never triggers because it only sends EXPORT_NAME.
        debug!("client did not set FIXED_NEWSTYLE; continuing anyway");
    }
    Ok(Some(client_flags & CLIENT_FLAG_NO_ZEROES != 0))
}

/// One option's header and payload; `None` when the session must end (bad magic, or a
/// payload too large to buffer).
fn read_option<R: Read, W: Write>(r: &mut R, w: &mut W) -> io::Result<Option<(u32, Vec<u8>)>> {
    let magic = read_u64(r)?;
    if magic != IHAVEOPT {
        warn!(magic, "bad option magic; closing");
        return Ok(None);
    }
    let option = read_u32(r)?;
    let len = read_u32(r)?;
    // Never buffer an unbounded option. EXPORT_NAME cannot carry an error reply, so it
    // can only be refused by hanging up; other options get TOO_BIG first. The oversized
    // payload is not drained (it may be gigabytes), so the stream is out of step
    // afterwards and the session ends either way.
    if len > MAX_OPTION_LEN {
        warn!(option, len, "option payload too large; closing");
        if option != OPT_EXPORT_NAME {
            send_error(w, option, REP_ERR_TOO_BIG, "option payload too large")?;
        }
        return Ok(None);
    }
    let mut data = vec![0u8; len as usize];
    r.read_exact(&mut data)?;
    debug!(option, len, "option received");
    Ok(Some((option, data)))
}

/// `NBD_OPT_EXPORT_NAME`, the old way into transmission. It has no way to report an
/// error, so an unknown name ends the session (as the specification requires).
fn export_name<W: Write>(
    w: &mut W,
    export: &ExportInfo,
    name: &[u8],
    no_zeroes: bool,
    structured: bool,
) -> io::Result<Step> {
    if !export.matches(name) {
        warn!(
            name = %String::from_utf8_lossy(name),
            "EXPORT_NAME for unknown export; closing"
        );
        return Ok(Step::Done(Outcome::Closed));
    }
    let mut reply = Vec::with_capacity(EXPORT_NAME_REPLY_LEN + EXPORT_NAME_PADDING);
    reply.extend_from_slice(&export.size.to_be_bytes());
    reply.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
    if !no_zeroes {
        reply.extend_from_slice(&[0u8; EXPORT_NAME_PADDING]);
    }
    w.write_all(&reply)?;
    w.flush()?;
    Ok(Step::Done(Outcome::Transmission { structured }))
}

/// `NBD_OPT_LIST`: one `REP_SERVER` per export (we have one), then the final ACK.
fn list<W: Write>(w: &mut W, export: &ExportInfo, data: &[u8]) -> io::Result<Step> {
    if !data.is_empty() {
        send_error(w, OPT_LIST, REP_ERR_INVALID, "NBD_OPT_LIST takes no data")?;
        return Ok(Step::Next);
    }
    let name = export.name.as_bytes();
    let mut payload = Vec::with_capacity(4 + name.len());
    payload.extend_from_slice(&(name.len() as u32).to_be_bytes());
    payload.extend_from_slice(name);
    if let Some(d) = &export.description {
        payload.extend_from_slice(d.as_bytes());
    }
    send(w, OPT_LIST, REP_SERVER, &payload)?;
    send(w, OPT_LIST, REP_ACK, &[])?;
    Ok(Step::Next)
}

/// `NBD_OPT_INFO` and `NBD_OPT_GO`: the export's information; a successful GO ends the
/// haggling (no padding follows an OPT_GO reply).
fn info_or_go<W: Write>(
    w: &mut W,
    option: u32,
    export: &ExportInfo,
    data: &[u8],
    structured: bool,
) -> io::Result<Step> {
    let (name, requests) = match parse_info_request(data) {
        Ok(parsed) => parsed,
        Err(why) => {
            send_error(w, option, REP_ERR_INVALID, why)?;
            return Ok(Step::Next);
        }
    };
    if !export.matches(name) {
        send_error(w, option, REP_ERR_UNKNOWN, "no export with that name")?;
        return Ok(Step::Next);
    }
    let used_canonical_name = name == export.name.as_bytes();
    send_export_info(w, option, export, &requests, used_canonical_name)?;
    send(w, option, REP_ACK, &[])?;
    if option == OPT_GO {
        return Ok(Step::Done(Outcome::Transmission { structured }));
    }
    Ok(Step::Next)
}

/// Splits the payload of `NBD_OPT_INFO`/`NBD_OPT_GO`: a 32-bit name length, the name, a
/// 16-bit count and that many 16-bit information types. The declared sizes must add up to
/// the option length exactly.
pub(crate) fn parse_info_request(data: &[u8]) -> Result<(&[u8], Vec<u16>), &'static str> {
    if data.len() < 6 {
        return Err("option data shorter than 6 bytes");
    }
    let name_len = be_u32(data, 0) as usize;
    if name_len > data.len() - 6 {
        return Err("export name length exceeds option data");
    }
    if name_len > MAX_STRING_LEN {
        return Err("export name longer than 4096 bytes");
    }
    let name = &data[4..4 + name_len];
    let count_at = 4 + name_len;
    let count = be_u16(data, count_at) as usize;
    let list = &data[count_at + 2..];
    if list.len() != count * 2 {
        return Err("information request count does not match option length");
    }
    let requests = list
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Ok((name, requests))
}

/// Sends the `NBD_REP_INFO` replies for a successful INFO/GO. `NBD_INFO_EXPORT` is
/// mandatory. `NBD_INFO_BLOCK_SIZE` is always sent (the specification allows unrequested
/// information, and it tells clients our maximum payload). The name goes out when asked
/// for or when the client used the default name `""`; the description when asked for and
/// configured. Unknown information types are ignored, as the specification requires.
fn send_export_info<W: Write>(
    w: &mut W,
    option: u32,
    export: &ExportInfo,
    requests: &[u16],
    used_canonical_name: bool,
) -> io::Result<()> {
    let mut info = Vec::with_capacity(12);
    info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    info.extend_from_slice(&export.size.to_be_bytes());
    info.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
    send(w, option, REP_INFO, &info)?;

    if requests.contains(&INFO_NAME) || !used_canonical_name {
        let mut info = INFO_NAME.to_be_bytes().to_vec();
        info.extend_from_slice(export.name.as_bytes());
        send(w, option, REP_INFO, &info)?;
    }
    if requests.contains(&INFO_DESCRIPTION) {
        if let Some(d) = &export.description {
            let mut info = INFO_DESCRIPTION.to_be_bytes().to_vec();
            info.extend_from_slice(d.as_bytes());
            send(w, option, REP_INFO, &info)?;
        }
    }
    let mut info = Vec::with_capacity(14);
    info.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    info.extend_from_slice(&MIN_BLOCK_SIZE.to_be_bytes());
    info.extend_from_slice(&PREFERRED_BLOCK_SIZE.to_be_bytes());
    info.extend_from_slice(&export.max_request.to_be_bytes());
    send(w, option, REP_INFO, &info)
}

fn send<W: Write>(w: &mut W, option: u32, reply_type: u32, payload: &[u8]) -> io::Result<()> {
    w.write_all(&option_reply(option, reply_type, payload))?;
    w.flush()
}

/// Error replies carry a short message for humans.
fn send_error<W: Write>(w: &mut W, option: u32, reply_type: u32, msg: &str) -> io::Result<()> {
    send(w, option, reply_type, msg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn export() -> ExportInfo {
        ExportInfo {
            name: "disk".into(),
            description: Some("test disk".into()),
            size: 1 << 20,
            max_request: 1 << 25,
        }
    }

    fn opt(option: u32, data: &[u8]) -> Vec<u8> {
        let mut v = IHAVEOPT.to_be_bytes().to_vec();
        v.extend_from_slice(&option.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    fn info_data(name: &str, reqs: &[u16]) -> Vec<u8> {
        let mut v = (name.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
        for r in reqs {
            v.extend_from_slice(&r.to_be_bytes());
        }
        v
    }

    /// Runs the handshake against a scripted client; returns the outcome and the option
    /// replies as (option, type, payload), skipping the 18-byte greeting.
    fn run(client: Vec<u8>) -> (io::Result<Outcome>, Vec<u8>) {
        let mut r = Cursor::new(client);
        let mut w = Vec::new();
        let out = negotiate(&mut r, &mut w, &export());
        (out, w)
    }

    fn replies(mut raw: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while raw.len() >= 20 && be_u64(raw, 0) == OPTION_REPLY_MAGIC {
            let len = be_u32(raw, 16) as usize;
            out.push((be_u32(raw, 8), be_u32(raw, 12), raw[20..20 + len].to_vec()));
            raw = &raw[20 + len..];
        }
        out
    }

    fn flags(f: u32) -> Vec<u8> {
        f.to_be_bytes().to_vec()
    }

    #[test]
    fn greeting_and_go_with_structured_replies() {
        let mut c = flags(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES);
        c.extend(opt(OPT_STRUCTURED_REPLY, &[]));
        c.extend(opt(OPT_GO, &info_data("", &[INFO_DESCRIPTION, 77])));
        let (out, w) = run(c);
        assert_eq!(
            out.expect("negotiated"),
            Outcome::Transmission { structured: true }
        );
        assert_eq!(be_u64(&w, 0), NBDMAGIC);
        assert_eq!(be_u64(&w, 8), IHAVEOPT);
        assert_eq!(be_u16(&w, 16), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        let reps = replies(&w[18..]);
        assert_eq!(reps[0].1, REP_ACK);
        let infos: Vec<u16> = reps[1..reps.len() - 1]
            .iter()
            .map(|(o, t, p)| {
                assert_eq!((*o, *t), (OPT_GO, REP_INFO));
                be_u16(p, 0)
            })
            .collect();
        // Default name "" -> canonical name sent; description requested; 77 ignored.
        assert_eq!(
            infos,
            vec![INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE]
        );
        let export_info = &reps[1].2;
        assert_eq!(export_info.len(), 12);
        assert_eq!(be_u64(export_info, 2), 1 << 20);
        assert_eq!(be_u16(export_info, 10), TRANSMISSION_FLAGS);
        assert_eq!(reps.last().map(|r| r.1), Some(REP_ACK));
    }

    #[test]
    fn info_unknown_export_then_abort() {
        let mut c = flags(CLIENT_FLAG_FIXED_NEWSTYLE);
        c.extend(opt(OPT_INFO, &info_data("nope", &[])));
        c.extend(opt(OPT_INFO, &[0, 0, 0, 9, 0, 0])); // name length lies
        c.extend(opt(99, b"whatever"));
        c.extend(opt(OPT_LIST, b"x"));
        c.extend(opt(OPT_ABORT, &[]));
        let (out, w) = run(c);
        assert_eq!(out.expect("clean"), Outcome::Closed);
        let types: Vec<u32> = replies(&w[18..]).iter().map(|r| r.1).collect();
        assert_eq!(
            types,
            vec![
                REP_ERR_UNKNOWN,
                REP_ERR_INVALID,
                REP_ERR_UNSUP,
                REP_ERR_INVALID,
                REP_ACK
            ]
        );
    }

    #[test]
    fn export_name_padding_follows_client_flag() {
        for (f, expect_len) in [(CLIENT_FLAG_FIXED_NEWSTYLE, 134), (CLIENT_FLAGS_KNOWN, 10)] {
            let mut c = flags(f);
            c.extend(opt(OPT_EXPORT_NAME, b"disk"));
            let (out, w) = run(c);
            assert_eq!(
                out.expect("ok"),
                Outcome::Transmission { structured: false }
            );
            assert_eq!(w.len() - 18, expect_len);
            assert_eq!(be_u64(&w, 18), 1 << 20);
        }
        let mut c = flags(CLIENT_FLAG_FIXED_NEWSTYLE);
        c.extend(opt(OPT_EXPORT_NAME, b"other"));
        assert_eq!(run(c).0.expect("closed"), Outcome::Closed);
    }

    #[test]
    fn hostile_inputs_end_the_session() {
        // Unknown client flag.
        assert_eq!(run(flags(1 << 7)).0.expect("closed"), Outcome::Closed);
        // Oversized option: TOO_BIG, then closed.
        let mut c = flags(CLIENT_FLAG_FIXED_NEWSTYLE);
        c.extend(IHAVEOPT.to_be_bytes());
        c.extend(OPT_INFO.to_be_bytes());
        c.extend((MAX_OPTION_LEN + 1).to_be_bytes());
        let (out, w) = run(c);
        assert_eq!(out.expect("closed"), Outcome::Closed);
        assert_eq!(replies(&w[18..])[0].1, REP_ERR_TOO_BIG);
        // Bad option magic.
        let mut c = flags(CLIENT_FLAG_FIXED_NEWSTYLE);
        c.extend([0u8; 16]);
        assert_eq!(run(c).0.expect("closed"), Outcome::Closed);
        // Truncated stream: an error, not a panic.
        let mut c = flags(CLIENT_FLAG_FIXED_NEWSTYLE);
        c.extend(&opt(OPT_GO, &info_data("disk", &[]))[..20]);
        assert!(run(c).0.is_err());
    }

    #[test]
    fn info_request_parser_bounds() {
        assert!(parse_info_request(&[]).is_err());
        assert!(parse_info_request(&[0xff, 0xff, 0xff, 0xff, 0, 0]).is_err());
        assert!(parse_info_request(&[0, 0, 0, 0, 0, 2, 0, 1]).is_err());
        let data = info_data("ab", &[1, 3]);
        let (n, r) = parse_info_request(&data).expect("valid");
        assert_eq!((n, r), (&b"ab"[..], vec![1, 3]));
    }
}
