//! The clients that tell what was lost: *senders*, each sending its messages one at a time and
//! waiting for the answer (its own copy back, or `unavailable`), so every answer belongs to one
//! message; and one *observer* per server, recording every probe message it is delivered, in
//! order, and what a resync `welcome` gives it back.

use std::collections::HashSet;
use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::ws::{self, FrameBuf, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, Rng, Target};

/// The channel every probe talks in.
pub const CHANNEL: &str = "probe";

/// A blocking chat client that parses every frame (the probes see little traffic).
struct Client {
    stream: TcpStream,
    fb: FrameBuf,
    rng: Rng,
    closed: bool,
}

impl Client {
    fn connect(target: &Target, query: &str, from: Ipv4Addr) -> Result<Client, String> {
        let stream = ws::open_from(target, query, from, None).map_err(|e| e.to_string())?;
        let mut fb = FrameBuf::new(1 << 20);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(end) = fb.data().windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&fb.data()[..end]).into_owned();
                if !head.starts_with("HTTP/1.1 101") {
                    return Err(format!(
                        "handshake refused: {}",
                        head.lines().next().unwrap_or("")
                    ));
                }
                let rest = fb.data()[end + 4..].to_vec();
                fb.load(&rest);
                break;
            }
            if Instant::now() >= deadline {
                return Err("no handshake answer in 30 s".into());
            }
            stream
                .set_read_timeout(Some(Duration::from_secs(1)))
                .map_err(|e| e.to_string())?;
            match fb.fill(&stream) {
                Ok(0) => return Err("closed during the handshake".into()),
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(Client {
            stream,
            fb,
            rng: Rng::seeded(u64::from(from.to_bits())),
            closed: false,
        })
    }

    fn send(&mut self, json: &Value) {
        self.write(OP_TEXT, json.to_string().as_bytes());
    }

    fn write(&mut self, opcode: u8, payload: &[u8]) {
        let mut frame = Vec::new();
        ws::encode_frame(&mut frame, opcode, payload, self.rng.next_u32());
        if (&self.stream).write_all(&frame).is_err() {
            self.closed = true;
        }
    }

    /// The next text frame, parsed, within `wait`; pings answered on the way.
    fn next(&mut self, wait: Duration) -> Option<Value> {
        let deadline = Instant::now() + wait;
        loop {
            match self.fb.next_frame() {
                Ok(Some(frame)) => {
                    let payload = self.fb.payload(&frame).to_vec();
                    match frame.opcode {
                        OP_TEXT => return serde_json::from_slice(&payload).ok(),
                        OP_PING => self.write(OP_PONG, &payload),
                        OP_CLOSE => self.closed = true,
                        _ => {}
                    }
                    continue;
                }
                Ok(None) => {}
                Err(_) => self.closed = true,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if self.closed || left.is_zero() {
                return None;
            }
            let _ = self
                .stream
                .set_read_timeout(Some(left.min(Duration::from_millis(100))));
            match self.fb.fill(&self.stream) {
                Ok(0) => self.closed = true,
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {}
                Err(_) => self.closed = true,
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// What became of one probe message, as its sender saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer {
    /// Its own copy came back: accepted, with this id, after this many seconds.
    Accepted(u64, f64),
    /// `unavailable`, after this many seconds.
    Refused(f64),
    /// Nothing within the sender's patience.
    None,
}

/// One message a sender sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub text: String,
    /// Seconds from the run's start.
    pub at: f64,
    pub answer: Answer,
}

/// Everything one sender saw.
#[derive(Debug, Default)]
pub struct SenderLog {
    pub sent: Vec<Sent>,
    /// Texts of its messages answered `unavailable` whose copy came later all the same.
    pub refused_then_delivered: HashSet<String>,
    pub errors: Vec<String>,
}

/// Everything one observer saw.
#[derive(Debug, Default)]
pub struct ObserverLog {
    /// Probe messages delivered live, in order: (id, text).
    pub live: Vec<(u64, String)>,
    /// Probe texts a resync `welcome` carried in its history.
    pub resynced: HashSet<String>,
    /// Welcomes after the first, and those that said they are a resync.
    pub welcomes: usize,
    pub resyncs: usize,
    pub closed: bool,
}

/// The run's clock and stop flag, shared by every probe.
pub struct Clock {
    pub start: Instant,
    pub stop: AtomicBool,
}

impl Clock {
    pub fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

fn is_probe(text: &str, tag: &str) -> bool {
    text.starts_with(tag)
}

/// Connects an observer to `target` (its channel, [`CHANNEL`]) and records until the clock stops.
pub fn observe(
    target: &Target,
    name: &str,
    from: Ipv4Addr,
    tag: String,
    clock: Arc<Clock>,
) -> Result<JoinHandle<ObserverLog>, String> {
    let query = format!("username={name}&channel={CHANNEL}");
    let mut client = Client::connect(target, &query, from)?;
    Ok(thread::spawn(move || {
        let mut log = ObserverLog::default();
        let mut first = true;
        while !clock.stop.load(Relaxed) && !client.closed {
            let Some(frame) = client.next(Duration::from_millis(200)) else {
                continue;
            };
            match frame["type"].as_str() {
                Some("message") => {
                    let text = frame["text"].as_str().unwrap_or_default();
                    if is_probe(text, &tag) {
                        let id = frame["id"].as_u64().unwrap_or(0);
                        log.live.push((id, text.to_owned()));
                    }
                }
                Some("welcome") if first => first = false,
                Some("welcome") => {
                    log.welcomes += 1;
                    if frame
                        .get("resync")
                        .is_some_and(|r| r != &Value::Bool(false))
                    {
                        log.resyncs += 1;
                        for m in frame["history"].as_array().into_iter().flatten() {
                            let text = m["text"].as_str().unwrap_or_default();
                            if is_probe(text, &tag) {
                                log.resynced.insert(text.to_owned());
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        log.closed = client.closed;
        log
    }))
}

/// When a sender sends, and how long it waits for an answer.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Messages each sender sends, one every `every`, from `begin` (seconds on the clock).
    pub count: usize,
    pub every: f64,
    pub begin: f64,
    /// Nothing is sent from then on (a sender behind its schedule skips the rest).
    pub end: f64,
    /// How long a sender waits for an answer before it counts none.
    pub patience: f64,
}

/// Connects sender `index` to `target` and sends its share of the probes.
pub fn send(
    target: &Target,
    index: usize,
    from: Ipv4Addr,
    tag: String,
    schedule: Schedule,
    clock: Arc<Clock>,
) -> Result<JoinHandle<SenderLog>, String> {
    let query = format!("username=ps{index}&channel={CHANNEL}");
    let mut client = Client::connect(target, &query, from)?;
    Ok(thread::spawn(move || {
        let mut log = SenderLog::default();
        let mut refused: HashSet<String> = HashSet::new();
        // A copy of a message refused, or not answered in time, that comes after all.
        let copies = |frame: &Value, refused: &HashSet<String>, log: &mut SenderLog| {
            let text = frame["text"].as_str().unwrap_or_default();
            if refused.contains(text) {
                log.refused_then_delivered.insert(text.to_owned());
            }
            if let Some(sent) = log.sent.iter_mut().find(|s| s.text == text)
                && sent.answer == Answer::None
            {
                let id = frame["id"].as_u64().unwrap_or(0);
                sent.answer = Answer::Accepted(id, f64::INFINITY);
            }
        };
        for k in 0..schedule.count {
            let at = schedule.begin + (k as f64) * schedule.every;
            while clock.secs() < at && !clock.stop.load(Relaxed) {
                if let Some(frame) = client.next(Duration::from_millis(50))
                    && frame["type"] == "message"
                {
                    copies(&frame, &refused, &mut log);
                }
            }
            if clock.stop.load(Relaxed) || client.closed || clock.secs() >= schedule.end {
                break;
            }
            let text = format!("{tag}{index}:{k}");
            let sent_at = clock.secs();
            client.send(&serde_json::json!({"type": "message", "text": text}));
            let mut answer = Answer::None;
            while clock.secs() < sent_at + schedule.patience && !client.closed {
                let Some(frame) = client.next(Duration::from_millis(200)) else {
                    continue;
                };
                match (frame["type"].as_str(), frame["code"].as_str()) {
                    (Some("message"), _) if frame["text"] == text.as_str() => {
                        let id = frame["id"].as_u64().unwrap_or(0);
                        answer = Answer::Accepted(id, clock.secs() - sent_at);
                        break;
                    }
                    (Some("message"), _) => copies(&frame, &refused, &mut log),
                    (Some("error"), Some("unavailable")) => {
                        refused.insert(text.clone());
                        answer = Answer::Refused(clock.secs() - sent_at);
                        break;
                    }
                    (Some("error"), code) => log.errors.push(code.unwrap_or("?").to_owned()),
                    _ => {}
                }
            }
            log.sent.push(Sent {
                text,
                at: sent_at,
                answer,
            });
        }
        // Refused messages that come back late still count against the server.
        while !clock.stop.load(Relaxed) && !client.closed {
            if let Some(frame) = client.next(Duration::from_millis(200))
                && frame["type"] == "message"
            {
                copies(&frame, &refused, &mut log);
            }
        }
        log
    }))
}

/// The texts in the history of the `welcome` a new client connecting with `query` gets
/// (within 30 s; the client leaves at once).
pub fn welcome_history(
    target: &Target,
    query: &str,
    from: Ipv4Addr,
) -> Result<Vec<String>, String> {
    let mut client = Client::connect(target, query, from)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !client.closed {
        if let Some(frame) = client.next(Duration::from_millis(200))
            && frame["type"] == "welcome"
        {
            client.write(OP_CLOSE, &1000u16.to_be_bytes());
            let history = frame["history"].as_array().cloned().unwrap_or_default();
            return Ok(history
                .iter()
                .filter_map(|m| Some(m["text"].as_str()?.to_owned()))
                .collect());
        }
    }
    Err("no welcome within 30 s".into())
}
