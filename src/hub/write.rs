//! One client's write (tutorial step 2, going faster): the slices of shared buffers it is made
//! of, nothing copied, and what each frame in it is, so that once the socket has taken part of
//! it the hub knows which frames the client now has and where to carry on.

use tungstenite::Bytes;

/// What a frame of a write is: once it is taken, the client's places move past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mark {
    /// From the channel's log: the client needs the log from this number on.
    Log(u64),
    /// The first of the client's own frames (a `welcome`, an `error`).
    Own,
    /// The newest `state` or `typing` of someone, of this version.
    Newest(u64),
    /// The channel list, as it was at this version.
    List(u64),
}

/// Frames end to end, in slices: the write a client is given in one `send`. A slice holds whole
/// frames, or a frame is several slices.
#[derive(Debug, Default)]
pub(super) struct Write {
    pub(super) slices: Vec<Bytes>,
    /// Where each frame ends, from the start of the write.
    pub(super) ends: Vec<usize>,
    marks: Vec<Mark>,
    len: usize,
}

impl Write {
    pub(super) fn clear(&mut self) {
        self.slices.clear();
        self.ends.clear();
        self.marks.clear();
        self.len = 0;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes in the write.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Adds a slice holding whole frames, each given by its length and mark.
    pub(super) fn add(&mut self, slice: Bytes, frames: impl IntoIterator<Item = (usize, Mark)>) {
        let start = self.len;
        for (len, mark) in frames {
            self.len += len;
            self.ends.push(self.len);
            self.marks.push(mark);
        }
        debug_assert_eq!(self.len - start, slice.len(), "a slice holds whole frames");
        self.slices.push(slice);
    }

    /// Adds one frame.
    pub(super) fn frame(&mut self, frame: Bytes, mark: Mark) {
        let len = frame.len();
        self.add(frame, [(len, mark)]);
    }

    /// Adds one frame made of several slices (a `welcome` around a channel's shared history).
    pub(super) fn frame_of(&mut self, slices: &[Bytes], mark: Mark) {
        for slice in slices {
            self.len += slice.len();
            self.slices.push(slice.clone());
        }
        self.ends.push(self.len);
        self.marks.push(mark);
    }

    /// The marks of the whole frames in the first `taken` bytes.
    pub(super) fn taken(&self, taken: usize) -> &[Mark] {
        &self.marks[..self.ends.partition_point(|&end| end <= taken)]
    }
}
