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

/// Consume zero bytes up to the end of the blob. `gzip -t` accepts zero padding after
/// the last member (tape blocks, preallocated files), so do we; any other byte there is
/// neither padding nor a member, and is refused with its blob offset.
pub fn skip_zero_padding(input: &mut Input, blob: &SizedSource) -> Result<()> {
    let from = input.position();
    loop {
        let at = input.position();
        let available = input.available();
        if let Some((index, &byte)) = available.iter().enumerate().find(|(_, &b)| b != 0) {
            return Err(Error::bad(format!(
                "gzip: byte {byte:#04x} at blob offset {} inside the zero padding that starts at blob offset {from} after the last member: only zero bytes may follow the last member",
                at.saturating_add(index as u64)
            )));
        }
        let all = available.len();
        input.consume(all);
        // Everything fetched so far was zero: fetch more, or stop at the blob's end.
        if !input.refill(blob)? {
            return Ok(());
        }
    }
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

    fn skip_padding(bytes: Vec<u8>) -> Result<u64> {
        let blob = SizedSource::new("blob", Box::new(MemSource(bytes)))?;
        let mut input = Input::new();
        input.seek(2);
        skip_zero_padding(&mut input, &blob)?;
        Ok(input.position())
    }

    #[test]
    fn zero_padding_is_skipped_to_the_end() {
        let mut padded = vec![0xaa, 0xbb];
        padded.resize(2 + 3 * crate::gzran::input::READ_SIZE + 17, 0);
        assert_eq!(skip_padding(padded.clone()).unwrap(), padded.len() as u64);
        assert_eq!(skip_padding(vec![0xaa, 0xbb]).unwrap(), 2);
    }

    #[test]
    fn garbage_in_the_padding_is_refused_with_its_offset() {
        let mut padded = vec![0xaa, 0xbb];
        padded.resize(2 + crate::gzran::input::READ_SIZE + 5, 0);
        padded.push(0x1f);
        padded.extend_from_slice(&[0; 40]);
        let at = 2 + crate::gzran::input::READ_SIZE + 5;
        let err = skip_padding(padded).unwrap_err().to_string();
        assert!(err.contains(&format!("byte 0x1f at blob offset {at}")), "{err}");
        assert!(err.contains("starts at blob offset 2"), "{err}");
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
