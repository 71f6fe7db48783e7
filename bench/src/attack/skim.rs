//! Server frames read as a stream, for clients that may be sent frames of a megabyte (a
//! `welcome` with a full history, a `channels` list of thousands): each frame's opcode, its
//! length and its first bytes are kept, the rest is counted and skipped, so a client costs the
//! bench a few hundred bytes whatever the server sends it.

/// How much of each payload is kept: every chat frame the attacks look into (a `state`, a
/// `typing`, a `left`, a short `message`, a ping) fits whole.
pub const CAPTURE: usize = 1024;

/// One frame as the skimmer saw it.
#[derive(Debug)]
pub struct Seen<'a> {
    pub opcode: u8,
    /// The whole payload's length.
    pub len: u64,
    /// Its first `min(len, CAPTURE)` bytes.
    pub head: &'a [u8],
}

/// A frame whose payload is still arriving.
#[derive(Debug)]
struct Partial {
    opcode: u8,
    len: u64,
    left: u64,
    kept: Vec<u8>,
}

/// The skimming state of one connection.
#[derive(Debug, Default)]
pub struct Skim {
    /// A frame header split across reads (at most 10 bytes: servers do not mask).
    header: Vec<u8>,
    frame: Option<Partial>,
}

/// Parses a server frame header: opcode, payload length, header length. `Ok(None)` when
/// `data` does not hold the whole header yet.
fn header(data: &[u8]) -> Result<Option<(u8, u64, usize)>, String> {
    if data.len() < 2 {
        return Ok(None);
    }
    if data[1] & 0x80 != 0 {
        return Err("the server sent a masked frame".into());
    }
    let opcode = data[0] & 0x0f;
    Ok(match data[1] & 0x7f {
        126 if data.len() >= 4 => {
            Some((opcode, u64::from(u16::from_be_bytes([data[2], data[3]])), 4))
        }
        127 if data.len() >= 10 => Some((
            opcode,
            u64::from_be_bytes(data[2..10].try_into().expect("8 bytes")),
            10,
        )),
        126 | 127 => None,
        n => Some((opcode, u64::from(n), 2)),
    })
}

impl Skim {
    /// Feeds bytes as read from the socket, calling `seen` for each frame they complete.
    ///
    /// # Errors
    /// A frame a server must not send (a masked one).
    pub fn feed(&mut self, mut data: &[u8], seen: &mut impl FnMut(Seen)) -> Result<(), String> {
        loop {
            if let Some(p) = &mut self.frame {
                let take = usize::try_from(p.left)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let keep = take.min(CAPTURE.saturating_sub(p.kept.len()));
                p.kept.extend_from_slice(&data[..keep]);
                p.left -= take as u64;
                data = &data[take..];
                if p.left > 0 {
                    return Ok(());
                }
                seen(Seen {
                    opcode: p.opcode,
                    len: p.len,
                    head: &p.kept,
                });
                self.frame = None;
                continue;
            }
            if data.is_empty() {
                return Ok(());
            }
            if !self.header.is_empty() {
                // A header split across reads: complete it a byte at a time (at most 9).
                self.header.push(data[0]);
                data = &data[1..];
                if let Some((opcode, len, _)) = header(&self.header)? {
                    self.header.clear();
                    self.start(opcode, len, seen);
                }
                continue;
            }
            match header(data)? {
                None => {
                    self.header.extend_from_slice(data);
                    return Ok(());
                }
                Some((opcode, len, at)) => {
                    data = &data[at..];
                    match usize::try_from(len) {
                        // The whole frame is here: no copy.
                        Ok(n) if n <= data.len() => {
                            seen(Seen {
                                opcode,
                                len,
                                head: &data[..n.min(CAPTURE)],
                            });
                            data = &data[n..];
                        }
                        _ => self.start(opcode, len, seen),
                    }
                }
            }
        }
    }

    /// Begins a frame whose payload follows.
    fn start(&mut self, opcode: u8, len: u64, seen: &mut impl FnMut(Seen)) {
        if len == 0 {
            seen(Seen {
                opcode,
                len,
                head: &[],
            });
        } else {
            self.frame = Some(Partial {
                opcode,
                len,
                left: len,
                kept: Vec::new(),
            });
        }
    }
}

/// The `type` of a chat frame, from the start of its JSON (the server writes it first).
pub fn frame_type(head: &[u8]) -> &[u8] {
    let Some(rest) = head.strip_prefix(b"{\"type\":\"") else {
        return b"";
    };
    &rest[..rest.iter().position(|b| *b == b'"').unwrap_or(rest.len())]
}

/// An `error` frame's code (`rate_limited`, …); `None` for any other frame.
pub fn error_code(head: &[u8]) -> Option<&[u8]> {
    if frame_type(head) != b"error" {
        return None;
    }
    const KEY: &[u8] = b"\"code\":\"";
    let at = head.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let code = &head[at..];
    Some(&code[..code.iter().position(|b| *b == b'"').unwrap_or(code.len())])
}

/// The digits after `{prefix}` in a frame's first `"username":"…"`: which of the bench's own
/// clients (named `{prefix}{index}`) a frame is about. `None` for anyone else.
pub fn user_index(head: &[u8], prefix: &[u8]) -> Option<usize> {
    const KEY: &[u8] = b"\"username\":\"";
    let at = head.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let name = head[at..].strip_prefix(prefix)?;
    let end = name.iter().position(|b| *b == b'"')?;
    let digits = &name[..end];
    if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + usize::from(d - b'0')))
}

/// The number after `key` (such as `"t":`) in a frame, if one follows it.
pub fn number_after(head: &[u8], key: &[u8]) -> Option<u64> {
    let at = head.windows(key.len()).position(|w| w == key)? + key.len();
    digits(&head[at..]).map(|(n, _)| n)
}

/// The number at the start of `b`, and what follows it.
pub fn digits(b: &[u8]) -> Option<(u64, &[u8])> {
    let n = b.iter().take_while(|d| d.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let value = b[..n]
        .iter()
        .fold(0u64, |v, d| v.wrapping_mul(10) + u64::from(d - b'0'));
    Some((value, &b[n..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= 0xffff => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    /// Every split of the stream into reads gives the same frames.
    #[test]
    fn frames_of_every_size_survive_any_split() {
        let big = vec![b'x'; 70_000];
        let mut wire = server_frame(1, br#"{"type":"state","user":{"username":"m12"}}"#);
        wire.extend(server_frame(9, b"ping"));
        wire.extend(server_frame(1, &big));
        wire.extend(server_frame(1, &[b'y'; 300]));
        wire.extend(server_frame(10, b""));
        for step in [1, 2, 3, 7, 100, 4096, wire.len()] {
            let mut skim = Skim::default();
            let mut frames = Vec::new();
            for chunk in wire.chunks(step) {
                skim.feed(chunk, &mut |s: Seen| {
                    frames.push((s.opcode, s.len, s.head.to_vec()));
                })
                .unwrap();
            }
            assert_eq!(frames.len(), 5, "step {step}");
            assert_eq!(frame_type(&frames[0].2), b"state");
            assert_eq!(user_index(&frames[0].2, b"m"), Some(12));
            assert_eq!(frames[1], (9, 4, b"ping".to_vec()));
            assert_eq!((frames[2].1, frames[2].2.len()), (70_000, CAPTURE));
            assert_eq!(frames[3].2, vec![b'y'; 300]);
            assert_eq!(frames[4], (10, 0, Vec::new()));
        }
    }

    #[test]
    fn a_masked_frame_is_refused() {
        let mut skim = Skim::default();
        assert!(
            skim.feed(&[0x81, 0x81, 1, 2, 3, 4, 5], &mut |_| {})
                .is_err()
        );
    }

    #[test]
    fn numbers_and_names_are_read_from_the_json() {
        let head = br#"{"type":"state","channel":"crowd","user":{"id":"a","username":"m7"},"state":{"k":5,"s":7,"t":123456789,"x":3}}"#;
        assert_eq!(number_after(head, b"\"t\":"), Some(123_456_789));
        assert_eq!(user_index(head, b"m"), Some(7));
        assert_eq!(user_index(head, b"h"), None);
        assert_eq!(user_index(br#"{"username":"m7x"}"#, b"m"), None);
        assert_eq!(frame_type(b"{\"type\":\"left\",\"x\":1}"), b"left");
    }
}
