//! The sequential streams of a remote blob's readers: which reads continue which
//! stream, and each stream's readahead state.

/// Sequential streams tracked at once (like the inflater's cursors: a few files read
/// side by side each keep their own readahead).
const MAX_STREAMS: usize = 4;

pub struct Stream {
    /// Offset of the last read and end of the furthest one.
    last_offset: u64,
    end: u64,
    /// Current readahead window in bytes (0 until the stream proves sequential).
    pub window: u64,
    used: u64,
    /// The chunk after the last one fetched or asked ahead for this stream.
    pub ahead_to: u64,
}

#[derive(Default)]
pub struct Streams {
    streams: Vec<Stream>,
    tick: u64,
}

impl Streams {
    pub fn get(&self, i: usize) -> Option<&Stream> {
        self.streams.get(i)
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut Stream> {
        self.streams.get_mut(i)
    }

    /// Find the stream a read of `offset..end` continues (it starts at or after the
    /// stream's last read and at most `slack` bytes past its end), or start a new one
    /// (replacing the least recently used). Returns its index and whether the read was
    /// sequential.
    pub fn touch(&mut self, offset: u64, end: u64, slack: u64) -> (usize, bool) {
        self.tick = self.tick.wrapping_add(1);
        let tick = self.tick;
        for (i, s) in self.streams.iter_mut().enumerate() {
            if offset >= s.last_offset && offset <= s.end.saturating_add(slack) {
                s.last_offset = offset;
                s.end = s.end.max(end);
                s.used = tick;
                return (i, true);
            }
        }
        let fresh = Stream {
            last_offset: offset,
            end,
            window: 0,
            used: tick,
            ahead_to: 0,
        };
        if self.streams.len() < MAX_STREAMS {
            self.streams.push(fresh);
            return (self.streams.len().saturating_sub(1), false);
        }
        // Full: the least recently used stream gives way.
        let oldest = self
            .streams
            .iter_mut()
            .enumerate()
            .min_by_key(|(_, s)| s.used);
        match oldest {
            Some((i, slot)) => {
                *slot = fresh;
                (i, false)
            }
            None => {
                self.streams.push(fresh);
                (0, false)
            }
        }
    }
}
