//! GzRan tests: cursors are dropped after an error, zero padding after the last member.

use std::cell::Cell;
use std::rc::Rc;

use super::*;
use crate::build::zinfo_writer::tests::{gzip, sample};
use crate::build::zinfo_writer::ZinfoWriter;
use crate::error::Kind;
use crate::gzran::inflate::crc32;
use crate::gzran::input::READ_SIZE;
use crate::source::{MemSource, Source};

/// A source that fails once, when armed, on the first read covering `fail_at`.
struct FailOnce {
    data: Vec<u8>,
    fail_at: u64,
    armed: Rc<Cell<bool>>,
}

impl Source for FailOnce {
    fn size(&self) -> Result<u64> {
        Ok(self.data.len() as u64)
    }
    fn pread(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        if self.armed.get() && offset <= self.fail_at && self.fail_at < offset + len as u64 {
            self.armed.set(false);
            return Err(Error::io(format!("injected failure at offset {offset}")));
        }
        MemSource(self.data.clone()).pread(offset, len)
    }
}

/// A gzip member of stored deflate blocks, so its compressed layout is known exactly.
fn stored_member(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let blocks: Vec<&[u8]> = data.chunks(65535).collect();
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&crc32(0, data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// The zinfo of `blob`, with checkpoints far apart (only the one at the start).
fn zinfo_of(blob: &[u8]) -> Vec<u8> {
    let mut writer = ZinfoWriter::new(1 << 40).unwrap();
    writer.feed(blob, &mut |_| Ok(())).unwrap();
    writer.finish().unwrap().0
}

fn open(blob: Box<dyn Source>, zinfo: Vec<u8>) -> Result<GzRan> {
    GzRan::open(
        SizedSource::new("blob", blob)?,
        SizedSource::new("zinfo", Box::new(MemSource(zinfo)))?,
        Options::default(),
    )
}

#[test]
fn an_io_error_inside_a_trailer_drops_the_cursor() {
    // Member one's deflate data is READ_SIZE - 3 bytes (4 stored blocks of 5 bytes of
    // framing each), so the second refill starts 3 bytes into its trailer.
    let first_data = sample(READ_SIZE - 3 - 4 * 5);
    let first = stored_member(&first_data);
    assert_eq!(first.len(), 10 + READ_SIZE - 3 + 8);
    let second_data: Vec<u8> = sample(100_000).into_iter().rev().collect();
    let mut blob = first.clone();
    blob.extend_from_slice(&gzip(&second_data));
    let mut expected = first_data.clone();
    expected.extend_from_slice(&second_data);

    let trailer_at = (first.len() - 8) as u64;
    let armed = Rc::new(Cell::new(false));
    let source = FailOnce {
        data: blob.clone(),
        fail_at: trailer_at + 3,
        armed: armed.clone(),
    };
    let mut ran = open(Box::new(source), zinfo_of(&blob)).unwrap();
    assert_eq!(ran.size(), expected.len() as u64);

    armed.set(true);
    // A read across the member crossing; it restarts at the blob's first checkpoint
    // (the zinfo has another at member two's start, past this page's start).
    let offset = first_data.len() as u64 - 100;
    let mut out = Vec::new();
    let err = ran.read_into(offset, 5000, &mut out).unwrap_err();
    assert_eq!(err.kind, Kind::Io, "{err}");
    assert!(!armed.get(), "the failure was not injected");

    // The retry restarts from a checkpoint instead of resuming inside the trailer.
    let mut out = Vec::new();
    ran.read_into(offset, 5000, &mut out).unwrap();
    assert_eq!(out, expected[offset as usize..offset as usize + 5000]);
}

#[test]
fn zero_padding_after_the_last_member_is_accepted() {
    let data = sample(300_000);
    let gz = gzip(&data);
    let mut padded = gz.clone();
    padded.resize(gz.len() + 4096, 0);
    let mut ran = open(Box::new(MemSource(padded)), zinfo_of(&gz)).unwrap();
    assert_eq!(ran.size(), data.len() as u64);
    let mut out = Vec::new();
    ran.read_into(0, data.len() as u64 + 10, &mut out).unwrap();
    assert!(out == data);
}

#[test]
fn other_bytes_after_the_last_member_are_refused() {
    let gz = gzip(&sample(50_000));
    let mut garbage = gz.clone();
    garbage.extend_from_slice(&[0, 0, 7, 0]);
    let err = open(Box::new(MemSource(garbage)), zinfo_of(&gz))
        .err()
        .unwrap()
        .to_string();
    let at = gz.len() + 2;
    assert!(
        err.contains(&format!("byte 0x07 at blob offset {at}")),
        "{err}"
    );

    let mut text = gz.clone();
    text.extend_from_slice(b"trailing text");
    let err = open(Box::new(MemSource(text)), zinfo_of(&gz))
        .err()
        .unwrap()
        .to_string();
    let at = gz.len();
    assert!(
        err.contains(&format!("no gzip magic at blob offset {at}")),
        "{err}"
    );
}
