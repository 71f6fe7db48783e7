//! One client's write (tutorial step 2, going faster): the slices of shared buffers it is made
//! of, nothing copied, and what each frame in it is, so that once the socket has taken part of
//! it the hub knows which frames the client now has and where to carry on.

use std::sync::Arc;

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

/// Frames end to end in one shared buffer: where each ends, and each one's version. A run of
/// them goes into a write as one slice and one piece, however many frames it holds.
#[derive(Debug, Default)]
pub(super) struct Table {
    pub(super) ends: Vec<usize>,
    pub(super) versions: Vec<u64>,
}

/// What part of a write is.
#[derive(Debug)]
enum Piece {
    /// One frame, ending there (from the start of the write).
    Frame { end: usize, mark: Mark },
    /// Frames `from..to` of a table, the first of which starts at `at` of the write and at
    /// `begin` of the table's buffer.
    Run {
        at: usize,
        begin: usize,
        table: Arc<Table>,
        from: usize,
        to: usize,
    },
}

/// Frames end to end, in slices: the write a client is given in one `send`. A slice holds whole
/// frames, or a frame is several slices.
#[derive(Debug, Default)]
pub(super) struct Write {
    pub(super) slices: Vec<Bytes>,
    pieces: Vec<Piece>,
    frames: usize,
    len: usize,
}

impl Write {
    pub(super) fn clear(&mut self) {
        self.slices.clear();
        self.pieces.clear();
        self.frames = 0;
        self.len = 0;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// Bytes in the write.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Frames in the write.
    pub(super) fn frames(&self) -> usize {
        self.frames
    }

    /// Adds a slice holding whole frames, each given by its length and mark.
    pub(super) fn add(&mut self, slice: Bytes, frames: impl IntoIterator<Item = (usize, Mark)>) {
        let start = self.len;
        for (len, mark) in frames {
            self.len += len;
            self.frames += 1;
            let end = self.len;
            self.pieces.push(Piece::Frame { end, mark });
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
        self.frames += 1;
        let end = self.len;
        self.pieces.push(Piece::Frame { end, mark });
    }

    /// Adds frames `from..to` of `table`, whose frames are end to end in `buffer`, as one slice.
    pub(super) fn run(&mut self, buffer: &Bytes, table: &Arc<Table>, from: usize, to: usize) {
        if from >= to {
            return;
        }
        let begin = from.checked_sub(1).map_or(0, |i| table.ends[i]);
        let end = table.ends[to - 1];
        self.slices.push(buffer.slice(begin..end));
        let table = Arc::clone(table);
        self.pieces.push(Piece::Run {
            at: self.len,
            begin,
            table,
            from,
            to,
        });
        self.len += end - begin;
        self.frames += to - from;
    }

    /// Of the first `sent` bytes: the bytes of the whole frames among them, and the end of the
    /// frame `sent` cuts (the same, when it cuts none).
    pub(super) fn bounds(&self, sent: usize) -> (usize, usize) {
        let (whole, cut) = self.cut(sent);
        if whole == sent {
            (sent, sent)
        } else {
            (whole, cut)
        }
    }

    fn cut(&self, sent: usize) -> (usize, usize) {
        let mut whole = 0;
        for piece in &self.pieces {
            let within = piece.within(sent);
            if let Some((end, _)) = within.whole {
                whole = end;
            }
            if let Some(end) = within.cut {
                return (whole, end);
            }
        }
        (whole, whole)
    }

    /// The marks of the whole frames in the first `taken` bytes: a run's frames give one, the
    /// last one's.
    pub(super) fn taken(&self, taken: usize) -> impl Iterator<Item = Mark> + '_ {
        (self.pieces.iter()).map_while(move |piece| Some(piece.within(taken).whole?.1))
    }
}

/// What of a piece lies within a write's first bytes.
struct Within {
    /// The end (from the start of the write) and mark of its last whole frame there, if any.
    whole: Option<(usize, Mark)>,
    /// The end of its frame they cut, if they cut one.
    cut: Option<usize>,
}

impl Piece {
    fn within(&self, bytes: usize) -> Within {
        match self {
            Piece::Frame { end, mark } if *end <= bytes => Within {
                whole: Some((*end, *mark)),
                cut: None,
            },
            Piece::Frame { end, .. } => Within {
                whole: None,
                cut: Some(*end),
            },
            Piece::Run {
                at,
                begin,
                table,
                from,
                to,
            } => {
                let end_of = |i: usize| at + table.ends[i] - begin;
                let whole = table.ends[*from..*to].partition_point(|end| at + end - begin <= bytes);
                let last = (whole > 0).then(|| from + whole - 1);
                Within {
                    whole: last.map(|i| (end_of(i), Mark::Newest(table.versions[i]))),
                    cut: (from + whole < *to).then(|| end_of(from + whole)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step2_a_write_knows_which_frames_a_partial_send_took() {
        // A frame of 10 bytes, then frames 1..3 of a table of four 100-byte frames: a run that
        // starts 100 bytes into its buffer.
        let table = Arc::new(Table {
            ends: vec![100, 200, 300, 400],
            versions: vec![7, 8, 9, 10],
        });
        let buffer = Bytes::from(vec![0u8; 400]);
        let mut write = Write::default();
        write.frame(Bytes::from(vec![1u8; 10]), Mark::Own);
        write.run(&buffer, &table, 1, 3);
        assert_eq!((write.len(), write.frames()), (210, 3));
        assert_eq!(write.slices[1].len(), 200);
        assert_eq!(write.bounds(5), (0, 10), "the first frame cut");
        assert_eq!(write.bounds(10), (10, 10));
        assert_eq!(write.bounds(150), (110, 210), "the run's second frame cut");
        assert_eq!(write.bounds(210), (210, 210));
        let marks = |n| write.taken(n).collect::<Vec<_>>();
        assert_eq!(marks(9), []);
        assert_eq!(marks(150), [Mark::Own, Mark::Newest(8)]);
        assert_eq!(marks(210), [Mark::Own, Mark::Newest(9)]);
    }
}
