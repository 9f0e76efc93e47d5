//! gzip member framing (RFC 1952): the header before each deflate stream and the
//! 8-byte trailer after it. A layer blob may hold several members back to back.

// Parses outside data under erofs-image's lint rules (`parser_modules!` in lib.rs).

use super::input::Input;
use crate::error::{Error, Result};
use crate::source::SizedSource;

const FTEXT: u8 = 0x01;
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const RESERVED_FLAGS: u8 = !(FTEXT | FHCRC | FEXTRA | FNAME | FCOMMENT);

/// The two magic bytes that open every gzip member.
pub const MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Consume one member header at the input's position, leaving it at the first deflate
/// byte. Names and comments are skipped, however long: they are bounded by the blob.
pub fn read_header(input: &mut Input, blob: &SizedSource) -> Result<()> {
    let at = input.position();
    let fixed: [u8; 10] = input.bytes(blob, "gzip header")?;
    if fixed[0..2] != MAGIC {
        return Err(Error::bad(format!(
            "gzip: no gzip magic at blob offset {at} (found {:02x} {:02x})",
            fixed[0], fixed[1]
        )));
    }
    if fixed[2] != 8 {
        return Err(Error::bad(format!(
            "gzip: member at blob offset {at}: compression method {} is not deflate",
            fixed[2]
        )));
    }
    let flags = fixed[3];
    if flags & RESERVED_FLAGS != 0 {
        return Err(Error::bad(format!(
            "gzip: member at blob offset {at}: reserved header flags {flags:#04x} are set"
        )));
    }
    if flags & FEXTRA != 0 {
        let xlen = u16::from_le_bytes(input.bytes(blob, "gzip extra field length")?);
        for _ in 0..xlen {
            input.bytes::<1>(blob, "gzip extra field")?;
        }
    }
    for (flag, what) in [(FNAME, "gzip file name"), (FCOMMENT, "gzip comment")] {
        if flags & flag != 0 {
            while input.bytes::<1>(blob, what)?[0] != 0 {}
        }
    }
    if flags & FHCRC != 0 {
        input.bytes::<2>(blob, "gzip header CRC")?;
    }
    Ok(())
}

/// The member trailer: CRC-32 and length (mod 2^32) of the member's uncompressed data.
pub struct Trailer {
    pub crc32: u32,
    pub isize: u32,
}

pub fn read_trailer(input: &mut Input, blob: &SizedSource) -> Result<Trailer> {
    let raw: [u8; 8] = input.bytes(blob, "gzip trailer")?;
    Ok(Trailer {
        crc32: u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]),
        isize: u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemSource;

    fn parse(bytes: Vec<u8>) -> Result<u64> {
        let blob = SizedSource::new("blob", Box::new(MemSource(bytes)))?;
        let mut input = Input::new();
        input.seek(0);
        read_header(&mut input, &blob)?;
        Ok(input.position())
    }

    #[test]
    fn headers_with_optional_fields() {
        let minimal = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xaa];
        assert_eq!(parse(minimal).unwrap(), 10);
        let mut named = vec![0x1f, 0x8b, 8, FNAME | FEXTRA | FHCRC, 0, 0, 0, 0, 0, 3];
        named.extend_from_slice(&[2, 0, 9, 9]);
        named.extend_from_slice(b"layer.tar\0");
        named.extend_from_slice(&[1, 2]);
        assert_eq!(parse(named).unwrap(), 10 + 4 + 10 + 2);
    }

    #[test]
    fn bad_headers_are_refused() {
        assert!(parse(b"ustar".to_vec())
            .unwrap_err()
            .to_string()
            .contains("inside the gzip header"));
        let wrong = vec![0x1f, 0x8c, 8, 0, 0, 0, 0, 0, 0, 3];
        assert!(parse(wrong)
            .unwrap_err()
            .to_string()
            .contains("no gzip magic"));
        let method = vec![0x1f, 0x8b, 7, 0, 0, 0, 0, 0, 0, 3];
        assert!(parse(method)
            .unwrap_err()
            .to_string()
            .contains("not deflate"));
        let reserved = vec![0x1f, 0x8b, 8, 0x80, 0, 0, 0, 0, 0, 3];
        assert!(parse(reserved)
            .unwrap_err()
            .to_string()
            .contains("reserved"));
        let endless_name = vec![0x1f, 0x8b, 8, FNAME, 0, 0, 0, 0, 0, 3, b'a', b'b'];
        assert!(parse(endless_name)
            .unwrap_err()
            .to_string()
            .contains("file name"));
    }
}
