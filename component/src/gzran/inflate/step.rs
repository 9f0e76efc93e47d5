//! What one inflate call reports, shared by both engines (zlib.rs, miniz.rs).

/// What the inflater reached when a call returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Ran out of input or output space.
    Progress,
    /// Stopped right after a block ended (only with `stop_at_block`). `unused_bits` of the
    /// last consumed byte belong to the next block; `after_last` is true when the block
    /// that ended was the stream's final one, so it is no place to restart.
    BlockBoundary { unused_bits: u8, after_last: bool },
    /// The deflate stream ended (its final block is complete).
    StreamEnd,
}

/// One call's result: input bytes consumed, output bytes produced, and where it stopped.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub consumed: usize,
    pub produced: usize,
    pub status: Status,
}
