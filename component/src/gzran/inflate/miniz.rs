//! The same raw-deflate inflater interface as `zlib.rs`, on miniz_oxide 0.9 (the engine
//! we compared against; docs/formats.md, "Inflate engines"), selected with the `miniz`
//! cargo feature so `just bench` can measure both.
//!
//! miniz_oxide reads back-references from its own output buffer, so this engine keeps a
//! 64 KiB ring (a power of two, as miniz's wrapping mode needs) holding at least the last
//! 32 KiB of output, decodes into it, and copies out. A restart writes the checkpoint's
//! history into the ring and resumes from a block-boundary state whose bit buffer holds
//! the primed bits.

use miniz_oxide::inflate::core::inflate_flags::{
    TINFL_FLAG_HAS_MORE_INPUT, TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY,
};
use miniz_oxide::inflate::core::{decompress_with_limit, BlockBoundaryState, DecompressorOxide};
use miniz_oxide::inflate::TINFLStatus;

use super::step::{Status, Step};
use crate::error::{Error, Result};

const RING: usize = 64 * 1024;

pub struct RawInflater {
    state: Box<DecompressorOxide>,
    ring: Box<[u8]>,
    /// Where the next output byte goes in the ring.
    pos: usize,
}

impl RawInflater {
    pub fn new() -> Result<Self> {
        Ok(Self {
            state: Box::new(DecompressorOxide::new()),
            ring: vec![0u8; RING].into_boxed_slice(),
            pos: 0,
        })
    }

    pub fn restart(&mut self, prime: Option<(u8, u8)>, history: &[u8]) -> Result<()> {
        let mut boundary = BlockBoundaryState::default();
        if let Some((bits, byte)) = prime {
            if bits > 0 {
                boundary.num_bits = bits;
                boundary.bit_buf = byte >> (8 - bits);
            }
        }
        *self.state = DecompressorOxide::from_block_boundary_state(&boundary);
        let h = history.len().min(RING / 2);
        self.ring[..h].copy_from_slice(&history[history.len() - h..]);
        self.pos = h;
        Ok(())
    }

    pub fn reset(&mut self) -> Result<()> {
        self.state.init();
        self.pos = 0;
        Ok(())
    }

    pub fn inflate(
        &mut self,
        input: &[u8],
        output: &mut [u8],
        stop_at_block: bool,
    ) -> Result<Step> {
        let mut flags = TINFL_FLAG_HAS_MORE_INPUT;
        if stop_at_block {
            flags |= TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY;
        }
        // Decode at most to the end of the ring and at most what the caller can take.
        let room = (RING - self.pos).min(output.len());
        let (status, consumed, produced) = decompress_with_limit(
            &mut self.state,
            input,
            &mut self.ring,
            self.pos,
            room,
            flags,
        );
        output[..produced].copy_from_slice(&self.ring[self.pos..self.pos + produced]);
        self.pos = (self.pos + produced) % RING;
        let status = match status {
            TINFLStatus::Done => Status::StreamEnd,
            TINFLStatus::BlockBoundary => {
                let bits = self
                    .state
                    .block_boundary_state()
                    .map(|s| s.num_bits)
                    .unwrap_or(0);
                Status::BlockBoundary {
                    unused_bits: bits,
                    after_last: false,
                }
            }
            TINFLStatus::NeedsMoreInput | TINFLStatus::HasMoreOutput => Status::Progress,
            bad => return Err(Error::bad(format!("gzip: corrupt deflate data: {bad:?}"))),
        };
        Ok(Step {
            consumed,
            produced,
            status,
        })
    }
}
