//! The crowd: N members of one channel each moving a cursor (`state`, a small `{"x","y"}`
//! object) at just under the rate limit, or each toggling `typing`, while the healthy pair
//! talks in another channel. It tells whether one channel's crowd delays everyone else, and
//! whether the crowd's members still see each other's cursors move.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::skim::{digits, error_code, frame_type, number_after, user_index};
use super::swarm::{self, Counter, Role};
use super::{AttackResult, Common, Particular, Run, Window, check_files, details};
use crate::args::Args;
use crate::hist::Hist;
use crate::ws::{Kind, Source, classify};

/// What the crowd sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frames {
    /// `{"type":"state","state":{…}}`: a live cursor.
    State,
    /// `{"type":"typing","typing":true|false}`, alternately.
    Typing,
}

#[derive(Debug, Clone)]
pub struct CrowdOpts {
    pub clients: usize,
    /// Frames a second per member (the default limit is 20).
    pub rate: f64,
    pub frames: Frames,
    pub channel: String,
    /// Channels the members are spread over (`<channel>-0`, `-1`, …); 1: all in `channel`.
    pub channels: usize,
    /// A state's size, about: past its cursor, a `"z"` string pads it (0: none).
    pub state_bytes: usize,
}

impl CrowdOpts {
    pub fn new(clients: usize) -> CrowdOpts {
        CrowdOpts {
            clients,
            rate: 19.0,
            frames: Frames::State,
            channel: "crowd".into(),
            channels: 1,
            state_bytes: 0,
        }
    }

    /// `-n N`, `--rate R`, `--frames state|typing` (`--kind` too, from the `crowd` command),
    /// `--channel NAME`, `--channels K`, `--state-bytes B`.
    pub fn parse(a: &mut Args) -> Result<CrowdOpts, String> {
        let d = CrowdOpts::new(1000);
        let frames = match a.value(&["--frames", "--kind"])?.as_deref() {
            None | Some("state") => Frames::State,
            Some("typing") => Frames::Typing,
            Some(other) => return Err(format!("--kind {other:?}: state or typing")),
        };
        let o = CrowdOpts {
            clients: a.get(&["-n", "--clients"], d.clients)?,
            rate: a.get(&["-r", "--rate"], d.rate)?,
            frames,
            channel: a.get(&["--channel"], d.channel)?,
            channels: a.get(&["--channels"], 1)?,
            state_bytes: a.get(&["--state-bytes"], 0)?,
        };
        if o.state_bytes > MAX_STATE {
            return Err(format!(
                "--state-bytes: at most {MAX_STATE} (the server's limit for a state)"
            ));
        }
        if o.clients < 2 || o.channels == 0 || !(o.rate > 0.0 && o.rate.is_finite()) {
            return Err("a crowd needs -n of at least 2 and a positive --rate".into());
        }
        Ok(o)
    }
}

/// The largest `--state-bytes`: the largest state the server takes.
const MAX_STATE: usize = 1024;
/// What a padded state's cursor and the padding's key take at most, so that a state padded
/// to `--state-bytes` never passes it: `{"k":` and a 9-digit run, `,"s":` and a member,
/// `,"t":` and up to 20 digits of nanoseconds, `,"x":`, `,"y":`, `,"z":""` and `}`.
const CURSOR_BYTES: usize = 86;

/// Members are named `m0`, `m1`, …, so a `state` or `typing` frame says who sent it.
const NAME: &[u8] = b"m";

struct Shared {
    run: u32,
    clients: usize,
    frames: Frames,
    /// What pads each state (`,"z":"…"`), empty for none.
    pad: String,
    layout: Layout,
    /// Members that have seen every member arrive.
    ready: AtomicUsize,
    refused: Counter,
    errors: Counter,
}

/// A member as its receiving thread holds it.
struct Member {
    shared: Arc<Shared>,
    /// The most members its channel was seen to have, and how many it will have.
    members: usize,
    expected: usize,
    ready: bool,
    /// The senders whose frames it got during the window, one bit each.
    seen: Vec<u64>,
}

/// A receiving thread's share of the figures.
#[derive(Default)]
struct Tally {
    /// Crowd frames (`state` or `typing`) received during the window, all members together.
    frames: u64,
    /// How old each window `state` was when it arrived.
    ages: Hist,
}

impl Role for Member {
    type Tally = Tally;

    fn text(&mut self, tally: &mut Tally, head: &[u8], _len: u64, now: u64, w: &Window) {
        let shared = &*self.shared;
        let crowd = match shared.layout.read(head) {
            Some(read) => Some(read),
            None if frame_type(head) == shared.layout.kind => {
                // Not the layout the server writes today: search instead.
                let sender = user_index(head, NAME);
                let stamp = number_after(head, b"\"k\":").zip(number_after(head, b"\"t\":"));
                Some((sender, stamp))
            }
            None => None,
        };
        if let Some((sender, stamp)) = crowd {
            if !w.in_window(now) {
                return;
            }
            tally.frames += 1;
            if let Some(sender) = sender.filter(|s| *s < shared.clients) {
                self.seen[sender / 64] |= 1 << (sender % 64);
            }
            if let Some((run, sent)) = stamp
                && run == u64::from(shared.run)
            {
                tally.ages.record(now.saturating_sub(sent));
            }
        } else if let Some(code) = error_code(head) {
            swarm::bump(if code == b"rate_limited" {
                &shared.refused
            } else {
                &shared.errors
            });
        } else if let Kind::Joined(count) = classify(head) {
            self.members = self.members.max(count);
            if !self.ready && self.members >= self.expected {
                self.ready = true;
                shared.ready.fetch_add(1, Relaxed);
            }
        }
    }
}

/// How the server writes a crowd frame: `{"type":"state","channel":"crowd","user":{"id":"`,
/// a 36-character id, `","username":"m`, the member's number, `"}`, then the state
/// (`,"state":{"k":…,"s":…,"t":…` with its keys in order) or `,"typing":…`. A frame is
/// checked against it byte for byte in one pass: the bench must read millions a second, and
/// searching each for its keys took most of its core.
struct Layout {
    kind: &'static [u8],
    start: Vec<u8>,
}

/// A crowd frame: its sender (when one of the crowd), and a state's run and send time.
type CrowdFrame = (Option<usize>, Option<(u64, u64)>);

/// A uuid's length in canonical form.
const ID_LEN: usize = 36;

impl Layout {
    fn new(frames: Frames, channel: &str) -> Layout {
        let kind: &'static [u8] = match frames {
            Frames::State => b"state",
            Frames::Typing => b"typing",
        };
        let start = format!(
            r#"{{"type":"{}","channel":"{channel}","user":{{"id":""#,
            String::from_utf8_lossy(kind)
        );
        Layout {
            kind,
            start: start.into_bytes(),
        }
    }

    /// The sender, and for a state the run and send time it carries; `None` when `head` is
    /// not a crowd frame in this layout.
    fn read(&self, head: &[u8]) -> Option<CrowdFrame> {
        let rest = head.strip_prefix(self.start.as_slice())?;
        let rest = rest.get(ID_LEN..)?.strip_prefix(br#"","username":""#)?;
        let rest = rest.strip_prefix(NAME)?;
        let (sender, rest) = digits(rest)?;
        let rest = rest.strip_prefix(br#""}"#)?;
        if self.kind == b"typing" {
            return Some((usize::try_from(sender).ok(), None));
        }
        let stamp = (|| {
            let (run, rest) = digits(rest.strip_prefix(br#","state":{"k":"#)?)?;
            let (_, rest) = digits(rest.strip_prefix(br#","s":"#)?)?;
            let (sent, _) = digits(rest.strip_prefix(br#","t":"#)?)?;
            Some((run, sent))
        })();
        Some((usize::try_from(sender).ok(), stamp))
    }
}

/// The state a member sends: its cursor, and who and when, so the receivers can tell how
/// old a cursor is. Keys in alphabetical order, as the server's JSON maps write them.
fn frame(shared: &Shared, member: usize, seq: u64, now: u64, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let _ = match shared.frames {
        Frames::State => write!(
            out,
            r#"{{"type":"state","state":{{"k":{},"s":{member},"t":{now},"x":{},"y":{}{}}}}}"#,
            shared.run,
            (seq * 37 + member as u64 * 11) % 1920,
            (seq * 23 + member as u64 * 7) % 1080,
            shared.pad
        ),
        Frames::Typing => write!(
            out,
            r#"{{"type":"typing","typing":{}}}"#,
            seq.is_multiple_of(2)
        ),
    };
}

/// The padding that brings a state to about `bytes`, never past it.
fn pad(bytes: usize) -> String {
    match bytes.checked_sub(CURSOR_BYTES) {
        Some(n) if n > 0 => format!(r#","z":"{}""#, "z".repeat(n)),
        _ => String::new(),
    }
}

pub fn run(o: &CrowdOpts, c: &Common) -> Result<AttackResult, String> {
    check_files(o.clients + 2)?;
    let channel = o.channel.clone();
    let spread = format!("{channel}-");
    let ours = |name: &str| name == channel || o.channels > 1 && name.starts_with(&spread);
    let mut run = Run::begin(c, ours)?;
    let shared = Arc::new(Shared {
        run: run.run,
        clients: o.clients,
        frames: o.frames,
        pad: pad(o.state_bytes),
        // Spread over channels, frames are searched rather than read in one layout.
        layout: Layout::new(o.frames, if o.channels > 1 { "" } else { &o.channel }),
        ready: AtomicUsize::new(0),
        refused: swarm::counter(),
        errors: swarm::counter(),
    });
    let channel_of = |i: usize| match o.channels {
        1 => o.channel.clone(),
        k => format!("{}-{}", o.channel, i % k),
    };
    // Members in the channel of member `i`.
    let expected = |i: usize| (o.clients + o.channels - 1 - i % o.channels) / o.channels;
    let query = |i: usize| format!("channel={}&username=m{i}", channel_of(i));
    let conns = swarm::connect(c, o.clients, &query, Source::default())?;
    let words = o.clients.div_ceil(64);
    let peers = swarm::peers(conns, u64::from(run.run), |conn| {
        // Its welcome listed who was there before it: the last to arrive is ready at once.
        let ready = conn.members >= expected(conn.index);
        if ready {
            shared.ready.fetch_add(1, Relaxed);
        }
        Member {
            shared: Arc::clone(&shared),
            members: conn.members,
            expected: expected(conn.index),
            ready,
            seen: vec![0; words],
        }
    })?;
    let outs: Vec<_> = peers.iter().map(|p| Arc::clone(&p.out)).collect();
    let receivers = swarm::receive(&run.w, peers, c.rx_threads)?;

    // Everyone must have seen everyone arrive before the first cursor moves, or the
    // arrival storm of a large crowd would land in the window.
    let ready = || shared.ready.load(Relaxed);
    run.wait_for(o.clients, ready, "members had seen every member arrive");
    let shared2 = Arc::clone(&shared);
    let (pair, paced, received) =
        run.paced(c, receivers, outs, o.rate, move |member, seq, now, out| {
            frame(&shared2, member, seq, now, out);
        })?;
    let swarm::Received { peers, tallies } = received;
    let ended = run.leave(&peers, "members");
    let errors = swarm::count(&shared.errors);
    if errors > 0 {
        run.notes.push(format!(
            "the crowd was sent {errors} errors other than rate_limited"
        ));
    }
    run.gone(c);

    let secs = c.secs.max(1e-9);
    let n = o.clients as f64;
    let frames: u64 = tallies.iter().map(|t| t.frames).sum();
    let mut ages = Hist::new();
    for t in &tallies {
        ages.merge(&t.ages);
    }
    let seen: f64 = peers
        .iter()
        .map(|p| {
            let own = p.role.seen[p.index / 64] >> (p.index % 64) & 1;
            let others = p.role.seen.iter().map(|w| w.count_ones()).sum::<u32>() - own as u32;
            f64::from(others) / (n - 1.0)
        })
        .sum::<f64>()
        / n;
    let per_member = frames as f64 / n / secs;
    let state = o.frames == Frames::State;
    let kind = if state { "state" } else { "typing" };
    let refused = swarm::count(&shared.refused);
    let details = details([
        ("rate", Some(o.rate)),
        ("offered_per_s", Some(n * o.rate)),
        ("sent_per_s", Some(paced.window as f64 / secs)),
        ("skipped", Some(paced.skipped as f64)),
        ("rx_per_member_s", Some(per_member)),
        ("rx_per_sender_per_member_s", Some(per_member / (n - 1.0))),
        ("senders_seen_pct", Some(100.0 * seen)),
        (
            "cursor_age_p50_ms",
            (state && frames > 0).then(|| ages.quantile(0.5) as f64 / 1e6),
        ),
        (
            "cursor_age_p99_ms",
            (state && frames > 0).then(|| ages.quantile(0.99) as f64 / 1e6),
        ),
    ]);
    let mut details = details;
    details.insert("frames".into(), kind.into());
    let p = Particular {
        attack: "crowd",
        attackers: o.clients,
        ended,
        refused,
        details,
    };
    Ok(run.finish(c, pair, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crowd_frames_are_read_in_the_servers_layout_and_others_refused() {
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let layout = Layout::new(Frames::State, "crowd");
        let state = format!(
            r#"{{"type":"state","channel":"crowd","user":{{"id":"{id}","username":"m42"}},"state":{{"k":7,"s":42,"t":123456,"x":1,"y":2}}}}"#
        );
        assert_eq!(
            layout.read(state.as_bytes()),
            Some((Some(42), Some((7, 123_456))))
        );
        let other_room = state.replace("\"crowd\"", "\"quiet\"");
        assert_eq!(layout.read(other_room.as_bytes()), None);
        let stranger = state.replace("\"m42\"", "\"alex\"");
        assert_eq!(layout.read(stranger.as_bytes()), None);
        let typing = Layout::new(Frames::Typing, "crowd");
        let frame = format!(
            r#"{{"type":"typing","channel":"crowd","user":{{"id":"{id}","username":"m3"}},"typing":true}}"#
        );
        assert_eq!(typing.read(frame.as_bytes()), Some((Some(3), None)));
        assert_eq!(typing.read(state.as_bytes()), None);
    }
}
