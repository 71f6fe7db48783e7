//! A bounded soak: a few hundred clients of mixed behaviour against one in-process server.
//!
//! Roles (each a plain thread with its own connection):
//! - **healthy** chatters stay in one of four channels and send numbered messages; each checks
//!   it gets every healthy peer's messages, whole and in order;
//! - **switchers** hop between channels, **renamers** rename (and try a taken name);
//! - **dozers** stop reading for a few seconds (not long enough to be dropped);
//! - **sleepers** stop reading in a flooded channel until the server cuts them off as slow
//!   readers, then reconnect; **flooders** send large messages there, an **observer** counts
//!   the `left`s;
//! - **garbage** senders send bad JSON, binary frames, unknown types, bursts (rate limit) and
//!   oversize frames (1009), reconnecting after each 1009;
//! - **abrupt** clients connect and vanish (reset, half a frame, half-close, or politely),
//!   over and over;
//! - hostile ones: **spammers** pipeline tiny frames far over the rate until closed with 1008,
//!   and come back; **greedy** clients never read (tiny windows) and ask for welcomes into the
//!   flood channel's full history until dropped; **churners** connect into a new channel and
//!   leave, as fast as they can; a **lurker** holds silent sockets from another address.
//!
//! At the end everyone parks, `/stats` must count exactly the parked connections, then
//! everyone leaves and the process's threads and file descriptors must return to their
//! baseline. Duration: `SOAK_SECS`, else 50 s under `CI=true`, else 20 s.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::rng::Rng;
use common::{Client, DEADLINE, Flood, eventually, flood_once, start, stats};
use serde_json::{Value, json};
use tungstenite::Message;

const HEALTHY_CHANNELS: usize = 4;
const HEALTHY: usize = 100;
const SWITCHERS: usize = 20;
const RENAMERS: usize = 20;
const DOZERS: usize = 12;
const SLEEPERS: usize = 16;
const FLOODERS: usize = 12;
const GARBAGE: usize = 20;
const ABRUPT: usize = 40;
const SPAMMERS: usize = 3;
const GREEDY: usize = 3;
const CHURNERS: usize = 2;
const LURKERS: usize = 1;
/// Healthy chatters send one message per this, each (the rate limit is 20 a second).
const HEALTHY_PERIOD: Duration = Duration::from_millis(500);
/// Flooders send one large message per this, each.
const FLOOD_PERIOD: Duration = Duration::from_millis(60);
/// How many flood frames the flooders may be ahead of the slowest of the flood channel's own
/// readers (flooders and observer): 512 KB, far below the 4 MiB at which the server cuts a
/// reader off, so a test thread the machine leaves unscheduled for a while is not cut off as
/// a slow reader when the sleepers are. The flood's rate is otherwise unchanged.
const FLOOD_WINDOW: u64 = 64;
/// A text frame at least this long is one of the flood's (about 8 KB; nothing else is).
const FLOOD_FRAME: usize = 4000;
/// How long past the end the flood may go on for a sleeper not yet cut off.
const FLOOD_GRACE: Duration = Duration::from_secs(30);
/// After the soak, how long the healthy may take to receive what is still on its way.
const DRAIN: Duration = Duration::from_secs(30);
/// Client read timeout: the granularity of each client's own clock.
const TICK: Duration = Duration::from_millis(20);

fn soak_duration() -> Duration {
    let secs = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(if std::env::var("CI").is_ok_and(|v| v == "true") {
            50.0
        } else {
            20.0
        });
    Duration::from_secs_f64(secs)
}

// ---------------------------------------------------------------------------------------------
// Process figures.

fn threads_now() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

fn fds_now() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Shared bookkeeping.

/// Named counters (faults injected, drops by cause, …), shared by every thread.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    fn add(&self, kind: &str, n: u64) {
        *self.0.lock().unwrap().entry(kind.to_owned()).or_default() += n;
    }
    fn get(&self, kind: &str) -> u64 {
        self.0.lock().unwrap().get(kind).copied().unwrap_or(0)
    }
    fn with_prefix(&self, prefix: &str) -> BTreeMap<String, u64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_owned(), *v)))
            .collect()
    }
}

/// Where every client waits at the end, connected or not, until the figures are checked.
#[derive(Default)]
struct Gate {
    state: Mutex<(usize, usize, bool)>, // (arrived, connected, released)
    changed: Condvar,
}

impl Gate {
    fn arrive(&self, connected: bool) {
        let mut state = self.state.lock().unwrap();
        state.0 += 1;
        state.1 += usize::from(connected);
        self.changed.notify_all();
    }

    /// Arrives and waits for the release (bounded, so a lost main thread cannot hang us).
    fn park(&self, connected: bool) {
        self.arrive(connected);
        let state = self.state.lock().unwrap();
        let _ = self
            .changed
            .wait_timeout_while(state, Duration::from_secs(180), |s| !s.2)
            .unwrap();
    }

    fn wait_all(&self, total: usize, limit: Duration) -> (usize, usize) {
        let state = self.state.lock().unwrap();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, limit, |s| s.0 < total)
            .unwrap();
        (state.0, state.1)
    }

    fn release(&self) {
        self.state.lock().unwrap().2 = true;
        self.changed.notify_all();
    }
}

/// Makes sure a thread that panics still counts as arrived (not connected).
struct Arrival<'a> {
    gate: &'a Gate,
    done: bool,
}

impl Arrival<'_> {
    fn park(mut self, connected: bool) {
        self.done = true;
        self.gate.park(connected);
    }

    /// Parks at the gate, then leaves politely if still connected.
    fn finish(self, client: Client, alive: bool) {
        self.park(alive);
        if alive {
            leave(client);
        }
    }
}

impl Drop for Arrival<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.gate.arrive(false);
        }
    }
}

struct Soak {
    addr: SocketAddr,
    end: Instant,
    tally: Tally,
    gate: Gate,
    /// Protocol violations seen by clients (the first few are kept).
    violations: Mutex<Vec<String>>,
    /// How many messages each healthy chatter sent, once it has stopped (`u64::MAX` before).
    healthy_sent: Vec<AtomicU64>,
    /// Sleepers the observer saw leave the flood channel.
    sleeper_dropped: Vec<AtomicBool>,
    sleepers_left: AtomicUsize,
    /// Flood frames sent, and how many of them each flooder (then the observer) has read,
    /// counted from the moment it joined; `u64::MAX` for one not reading (yet, or any more).
    flood_sent: AtomicU64,
    flood_read: Vec<AtomicU64>,
    started: Instant,
    deliveries: AtomicU64,
    connections: AtomicU64,
}

impl Soak {
    /// A client's place at the gate; see [`Arrival`].
    fn arrival(&self) -> Arrival<'_> {
        Arrival {
            gate: &self.gate,
            done: false,
        }
    }
}

impl Soak {
    fn violation(&self, what: String) {
        let mut v = self.violations.lock().unwrap();
        if v.len() < 40 {
            v.push(what);
        }
    }

    /// Starts counting reader `slot`'s flood frames; call once it has joined (its welcome
    /// read): frames sent while it joined never reach it, and must not hold the flood back.
    fn flood_reader_joined(&self, slot: usize) {
        let sent = self.flood_sent.load(Ordering::SeqCst);
        self.flood_read[slot].store(sent, Ordering::SeqCst);
    }

    /// Reader `slot` read a flood frame.
    fn flood_read_one(&self, slot: usize) {
        self.flood_read[slot].fetch_add(1, Ordering::SeqCst);
    }

    /// Reader `slot` stopped reading: it holds the flood back no longer.
    fn flood_reader_gone(&self, slot: usize) {
        self.flood_read[slot].store(u64::MAX, Ordering::SeqCst);
    }

    /// Whether a flooder may send: every reader of the flood channel is within
    /// [`FLOOD_WINDOW`] of it. Claims the frame when it may.
    fn flood_claim(&self) -> bool {
        let slowest = self
            .flood_read
            .iter()
            .map(|read| read.load(Ordering::SeqCst))
            .min()
            .unwrap_or(u64::MAX);
        let sent = self.flood_sent.load(Ordering::SeqCst);
        sent < slowest.saturating_add(FLOOD_WINDOW)
            && self
                .flood_sent
                .compare_exchange(sent, sent + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
    }

    fn over(&self) -> bool {
        Instant::now() >= self.end
    }

    /// The flood goes on past the end, if need be, until every sleeper has been cut off.
    fn flood_over(&self) -> bool {
        self.over()
            && (self.sleepers_left.load(Ordering::SeqCst) >= SLEEPERS
                || Instant::now() >= self.end + FLOOD_GRACE)
    }

    /// Connects a chat client (retrying briefly: a few hundred connect at once) and reads its
    /// welcome. Short read timeouts let each client keep its own clock.
    fn connect(&self, name: &str, channel: &str) -> Option<(Client, Value)> {
        let path = format!("/?username={name}&channel={channel}");
        let deadline = Instant::now() + DEADLINE;
        let mut client = loop {
            let attempt = common::tcp_from(machine(name), self.addr)
                .map_err(tungstenite::Error::Io)
                .and_then(|stream| common::handshake(stream, self.addr, &path, &[]));
            match attempt {
                Ok(client) => break client,
                Err(err) if Instant::now() > deadline => {
                    self.violation(format!("{name}: cannot connect: {err}"));
                    return None;
                }
                Err(_) => {
                    self.tally.add("connect retries", 1);
                    thread::sleep(Duration::from_millis(100));
                }
            }
        };
        self.connections.fetch_add(1, Ordering::Relaxed);
        let welcome = client.recv_type("welcome");
        if welcome["user"]["username"] != name || welcome["channel"] != channel {
            self.violation(format!("{name}: unexpected welcome {welcome}"));
        }
        client
            .ws
            .get_ref()
            .set_read_timeout(Some(TICK))
            .expect("set a read timeout");
        Some((client, welcome))
    }
}

/// The address a client connects from: a crowd sits at many machines, and the server limits
/// how fast one address may arrive. Reconnects of one client (`abrupt-3-1`, `abrupt-3-2`) come
/// from the same machine; spammers and churners use 127.0.0.1 and are limited as one.
fn machine(name: &str) -> Ipv4Addr {
    let who: Vec<&str> = name.split('-').take(2).collect();
    let hash = who.join("-").bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    Ipv4Addr::new(
        127,
        1 + (hash >> 16) as u8 % 200,
        (hash >> 8) as u8,
        1 + hash as u8 % 250,
    )
}

/// One read with the client's short timeout: `Ok(None)` when nothing came in time.
fn poll(client: &mut Client) -> Result<Option<Message>, tungstenite::Error> {
    match client.ws.read() {
        Ok(message) => Ok(Some(message)),
        Err(tungstenite::Error::Io(e))
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn as_json(message: &Message) -> Option<Value> {
    match message {
        Message::Text(text) => serde_json::from_str(text).ok(),
        _ => None,
    }
}

/// Reads (answering pings) until a frame passes `want`, within the deadline.
fn wait_for(client: &mut Client, mut want: impl FnMut(&Value) -> bool) -> Result<Value, String> {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        match poll(client) {
            Ok(Some(message)) => {
                if let Some(frame) = as_json(&message)
                    && want(&frame)
                {
                    return Ok(frame);
                }
                if let Message::Close(close) = message {
                    return Err(format!("closed: {close:?}"));
                }
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("nothing in time".into())
}

/// Leaves politely: close frame, then wait for the server's.
fn leave(mut client: Client) {
    let _ = client.ws.close(None);
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        match poll(&mut client) {
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Sends a message; false if the connection is gone.
fn send(client: &mut Client, value: Value) -> bool {
    client.ws.send(Message::text(value.to_string())).is_ok()
}

// ---------------------------------------------------------------------------------------------
// The roles.

fn healthy(soak: &Soak, me: usize, mut client: Client) {
    let arrival = soak.arrival();
    let mut rng = Rng::new(me as u64);
    let peers: Vec<usize> = (0..HEALTHY)
        .filter(|p| p % HEALTHY_CHANNELS == me % HEALTHY_CHANNELS)
        .collect();
    let mut next_from: HashMap<usize, u64> = peers.iter().map(|p| (*p, 0)).collect();
    let mut sent = 0u64;
    let mut next_send = Instant::now() + rng.millis(0, HEALTHY_PERIOD.as_millis() as u64);
    let mut alive = true;
    let handle = |frame: &Value, next_from: &mut HashMap<usize, u64>| {
        if frame["type"] != "message" {
            return;
        }
        soak.deliveries.fetch_add(1, Ordering::Relaxed);
        let Some((sender, n)) = frame["text"]
            .as_str()
            .and_then(|t| t.strip_prefix('h'))
            .and_then(|t| t.split_once(':'))
            .and_then(|(s, n)| Some((s.parse::<usize>().ok()?, n.parse::<u64>().ok()?)))
        else {
            return; // not from a healthy chatter
        };
        if frame["user"]["username"] != format!("healthy-{sender}") {
            soak.violation(format!(
                "healthy-{me}: h{sender}'s text from {}",
                frame["user"]
            ));
            return;
        }
        match next_from.get_mut(&sender) {
            Some(next) if *next == n => *next += 1,
            Some(next) => {
                soak.violation(format!(
                    "healthy-{me}: from healthy-{sender} got #{n}, expected #{next}"
                ));
                *next = n + 1;
            }
            None => soak.violation(format!(
                "healthy-{me}: got healthy-{sender}'s message from another channel"
            )),
        }
    };
    // Chat until the end of the soak.
    while alive && !soak.over() {
        if Instant::now() >= next_send {
            if !send(
                &mut client,
                json!({"type": "message", "text": format!("h{me}:{sent}")}),
            ) {
                alive = false;
                break;
            }
            sent += 1;
            next_send = (next_send + HEALTHY_PERIOD).max(Instant::now());
        }
        match poll(&mut client) {
            Ok(Some(message)) => {
                if let Some(frame) = as_json(&message) {
                    handle(&frame, &mut next_from);
                }
            }
            Ok(None) => {}
            Err(e) => {
                soak.violation(format!("healthy-{me} was disconnected: {e}"));
                alive = false;
            }
        }
    }
    soak.healthy_sent[me].store(sent, Ordering::SeqCst);
    // Receive whatever is still on its way from the others.
    let drain_until = Instant::now() + DRAIN;
    while alive {
        let complete = peers.iter().all(|p| {
            let total = soak.healthy_sent[*p].load(Ordering::SeqCst);
            total != u64::MAX && next_from[p] >= total
        });
        if complete {
            break;
        }
        if Instant::now() > drain_until {
            let missing: Vec<String> = peers
                .iter()
                .filter_map(|p| {
                    let total = soak.healthy_sent[*p].load(Ordering::SeqCst);
                    (next_from[p] < total).then(|| format!("h{p}: {}/{total}", next_from[p]))
                })
                .collect();
            soak.violation(format!("healthy-{me} never got: {}", missing.join(", ")));
            break;
        }
        match poll(&mut client) {
            Ok(Some(message)) => {
                if let Some(frame) = as_json(&message) {
                    handle(&frame, &mut next_from);
                }
            }
            Ok(None) => {}
            Err(e) => {
                soak.violation(format!("healthy-{me} was disconnected while draining: {e}"));
                alive = false;
            }
        }
    }
    soak.tally.add("sent: healthy", sent);
    arrival.finish(client, alive);
}

fn switcher(soak: &Soak, me: usize) {
    let arrival = soak.arrival();
    const ROUTE: [&str; 6] = ["sw-a", "soak-0", "sw-b", "general", "sw-c", "soak-1"];
    let name = format!("switcher-{me}");
    let Some((mut client, _)) = soak.connect(&name, ROUTE[me % ROUTE.len()]) else {
        return;
    };
    let mut hop = me;
    let mut alive = true;
    while alive && !soak.over() {
        hop += 1;
        let to = ROUTE[hop % ROUTE.len()];
        if !send(&mut client, json!({"type": "join", "channel": to})) {
            alive = false;
            break;
        }
        if let Err(e) = wait_for(&mut client, |f| f["type"] == "welcome") {
            soak.violation(format!("{name}: no welcome to #{to}: {e}"));
            alive = false;
            break;
        }
        soak.tally.add("switches", 1);
        // After the welcome, only the new channel speaks to us.
        let text = format!("{name} in {to} #{hop}");
        if !send(&mut client, json!({"type": "message", "text": text})) {
            alive = false;
            break;
        }
        let result = wait_for(&mut client, |f| {
            if f["type"] == "message" && f["channel"] != to {
                soak.violation(format!(
                    "{name}: in #{to}, got a message of {}",
                    f["channel"]
                ));
            }
            f["type"] == "message" && f["text"] == text.as_str()
        });
        if let Err(e) = result {
            soak.violation(format!("{name}: own message lost in #{to}: {e}"));
            alive = false;
        }
        // Stay a little while, reading.
        let stay = Instant::now() + Duration::from_millis(600 + (me as u64 % 5) * 100);
        while alive && Instant::now() < stay {
            if let Err(e) = poll(&mut client) {
                soak.violation(format!("{name} was disconnected: {e}"));
                alive = false;
            }
        }
    }
    arrival.finish(client, alive);
}

fn renamer(soak: &Soak, me: usize) {
    let arrival = soak.arrival();
    let mut name = format!("renamer-{me}");
    let Some((mut client, _)) = soak.connect(&name, "general") else {
        return;
    };
    let mut alive = true;
    let mut k = 0;
    while alive && !soak.over() {
        k += 1;
        let (wanted, taken) = if k % 4 == 0 {
            ("TAKEN-name".to_owned(), true)
        } else {
            (format!("renamer-{me}-{k}"), false)
        };
        if !send(&mut client, json!({"type": "username", "username": wanted})) {
            alive = false;
            break;
        }
        let answer = wait_for(&mut client, |f| {
            (f["type"] == "renamed" && f["old"] == name.as_str()) || f["type"] == "error"
        });
        match answer {
            Ok(f) if taken && f["code"] == "username_taken" => {
                soak.tally.add("renames refused (taken)", 1)
            }
            Ok(f) if !taken && f["user"]["username"] == wanted.as_str() => {
                soak.tally.add("renames", 1);
                name = wanted;
            }
            Ok(f) => soak.violation(format!("renamer-{me}: asked for {wanted}, got {f}")),
            Err(e) => {
                soak.violation(format!("renamer-{me}: no answer to a rename: {e}"));
                alive = false;
            }
        }
        let pause = Instant::now() + Duration::from_millis(400);
        while alive && Instant::now() < pause {
            if let Err(e) = poll(&mut client) {
                soak.violation(format!("renamer-{me} was disconnected: {e}"));
                alive = false;
            }
        }
    }
    arrival.finish(client, alive);
}

fn dozer(soak: &Soak, me: usize) {
    let arrival = soak.arrival();
    let name = format!("dozer-{me}");
    let channel = format!("soak-{}", me % HEALTHY_CHANNELS);
    let Some((mut client, _)) = soak.connect(&name, &channel) else {
        return;
    };
    let mut alive = true;
    let mut nap = 0;
    while alive && !soak.over() {
        // Awake for two seconds.
        let awake = Instant::now() + Duration::from_secs(2);
        while alive && Instant::now() < awake {
            match poll(&mut client) {
                Ok(Some(message)) if as_json(&message).is_some_and(|f| f["type"] == "message") => {
                    soak.deliveries.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    soak.violation(format!("{name} was disconnected while awake: {e}"));
                    alive = false;
                }
            }
        }
        if !alive || soak.over() {
            break;
        }
        // Asleep for three: hundreds of frames pile up, well under the 1024 limit.
        nap += 1;
        soak.tally.add("fault: reader stalls 3 s (dozer)", 1);
        thread::sleep(Duration::from_secs(3));
        let text = format!("{name} woke #{nap}");
        alive = send(&mut client, json!({"type": "message", "text": text}));
        if alive && let Err(e) = wait_for(&mut client, |f| f["text"] == text.as_str()) {
            soak.violation(format!("{name} did not survive a 3 s nap: {e}"));
            alive = false;
        }
    }
    arrival.finish(client, alive);
}

/// Stops reading in the flooded channel until dropped; then reconnects.
fn sleeper(soak: &Soak, me: usize) {
    let arrival = soak.arrival();
    let name = format!("sleeper-{me}");
    let Some((mut client, _)) = soak.connect(&name, "flood") else {
        return;
    };
    soak.tally.add("fault: reader stops for good (sleeper)", 1);
    while !soak.sleeper_dropped[me].load(Ordering::SeqCst) && !soak.flood_over() {
        thread::sleep(Duration::from_millis(100));
    }
    // Read what was buffered: the stream must end (the server cut us off).
    let mut ended = false;
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        match poll(&mut client) {
            Ok(Some(Message::Close(_))) => {}
            Ok(_) => {}
            Err(_) => {
                ended = true;
                break;
            }
        }
        if !soak.sleeper_dropped[me].load(Ordering::SeqCst) && soak.flood_over() {
            break; // never dropped: it stays
        }
    }
    let connected = if ended {
        soak.tally.add("drop: slow reader cut off", 1);
        // Come back, as a person would.
        match soak.connect(&format!("{name}-again"), "flood") {
            Some((again, _)) => {
                client = again;
                soak.tally.add("reconnects", 1);
                true
            }
            None => false,
        }
    } else {
        soak.violation(format!("{name} was never dropped as a slow reader"));
        true
    };
    // Keep up from now on, until the end.
    let mut alive = connected;
    while alive && !soak.over() {
        if poll(&mut client).is_err() {
            soak.violation(format!("{name} was disconnected after coming back"));
            alive = false;
        }
    }
    arrival.finish(client, alive);
}

fn flooder(soak: &Soak, me: usize) {
    let arrival = soak.arrival();
    let name = format!("flooder-{me}");
    let Some((mut client, _)) = soak.connect(&name, "flood") else {
        return;
    };
    soak.flood_reader_joined(me);
    // 2000 four-byte characters: about 8 KB a frame.
    let big = "😀".repeat(1990);
    let mut alive = true;
    let mut next = Instant::now();
    let mut sent = 0u64;
    while alive && !soak.flood_over() {
        let flooding = soak.sleepers_left.load(Ordering::SeqCst) < SLEEPERS;
        if flooding && Instant::now() >= next && soak.flood_claim() {
            alive = send(
                &mut client,
                json!({"type": "message", "text": format!("{me}:{sent} {big}")}),
            );
            sent += 1;
            next = (next + FLOOD_PERIOD).max(Instant::now());
        }
        match poll(&mut client) {
            Ok(Some(Message::Text(text))) => {
                soak.deliveries.fetch_add(1, Ordering::Relaxed);
                if text.len() >= FLOOD_FRAME {
                    soak.flood_read_one(me);
                }
            }
            Ok(_) => {}
            Err(e) => {
                soak.violation(format!("{name} was disconnected: {e}"));
                alive = false;
            }
        }
    }
    soak.flood_reader_gone(me);
    soak.tally.add("sent: flood (8 KB)", sent);
    arrival.finish(client, alive);
}

fn observer(soak: &Soak) {
    let arrival = soak.arrival();
    let Some((mut client, _)) = soak.connect("observer", "flood") else {
        return;
    };
    soak.flood_reader_joined(FLOODERS);
    let mut alive = true;
    while alive && !soak.flood_over() {
        match poll(&mut client) {
            Ok(Some(Message::Text(text))) if text.len() >= FLOOD_FRAME => {
                // Flood frames are counted, not parsed: only presence matters here.
                soak.flood_read_one(FLOODERS);
            }
            Ok(Some(Message::Text(text))) => {
                if text.len() < 2000
                    && let Ok(frame) = serde_json::from_str::<Value>(&text)
                    && frame["type"] == "left"
                    && let Some(n) = frame["user"]["username"]
                        .as_str()
                        .and_then(|u| u.strip_prefix("sleeper-"))
                        .and_then(|n| n.parse::<usize>().ok())
                    && n < SLEEPERS
                    && !soak.sleeper_dropped[n].swap(true, Ordering::SeqCst)
                    && soak.sleepers_left.fetch_add(1, Ordering::SeqCst) + 1 == SLEEPERS
                {
                    let at = soak.started.elapsed().as_millis() as u64;
                    soak.tally.add("ms until every sleeper was cut off", at);
                }
            }
            Ok(_) => {}
            Err(e) => {
                soak.violation(format!("the observer was disconnected: {e}"));
                alive = false;
            }
        }
    }
    soak.flood_reader_gone(FLOODERS);
    arrival.finish(client, alive);
}

fn garbage(soak: &Soak, me: usize) {
    let arrival = soak.arrival();
    let name = format!("garbage-{me}");
    let Some((mut client, _)) = soak.connect(&name, "junk") else {
        return;
    };
    let mut alive = true;
    let mut round = me;
    let mut reconnects = 0;
    while alive && !soak.over() {
        round += 1;
        let expect_error = |client: &mut Client, code: &str, kind: &str| -> bool {
            match wait_for(client, |f| f["type"] == "error") {
                Ok(f) if f["code"] == code => {
                    soak.tally.add(&format!("fault: {kind}"), 1);
                    true
                }
                Ok(f) => {
                    soak.violation(format!("{name}: {kind} answered with {f}"));
                    true
                }
                Err(e) => {
                    soak.violation(format!("{name}: {kind} unanswered: {e}"));
                    false
                }
            }
        };
        alive = match round % 8 {
            0 => {
                client.ws.send(Message::text("{not json")).is_ok()
                    && expect_error(&mut client, "bad_json", "bad JSON")
            }
            1 => {
                client
                    .ws
                    .send(Message::binary(vec![0u8, 159, 146, 150]))
                    .is_ok()
                    && expect_error(&mut client, "bad_json", "binary frame")
            }
            2 => {
                send(&mut client, json!({"type": "dance"}))
                    && expect_error(&mut client, "unknown_type", "unknown type")
            }
            3 => {
                send(&mut client, json!({"type": "message"}))
                    && expect_error(&mut client, "bad_request", "missing field")
            }
            4 => {
                send(
                    &mut client,
                    json!({"type": "state", "state": {"x": "y".repeat(2000)}}),
                ) && expect_error(&mut client, "invalid_state", "state over 1 KiB")
            }
            5 if me.is_multiple_of(2) => {
                // Over 16 KiB: the server closes with 1009; come back.
                let _ = client.ws.send(Message::text("z".repeat(17 * 1024)));
                let _ = client.ws.get_ref().set_read_timeout(Some(DEADLINE));
                match client.close_code() {
                    Some(1009) => soak.tally.add("drop: 1009 message too big", 1),
                    other => soak.violation(format!("{name}: oversize closed with {other:?}")),
                }
                soak.tally.add("fault: oversize message (17 KiB)", 1);
                reconnects += 1;
                match soak.connect(&format!("{name}-{reconnects}"), "junk") {
                    Some((again, _)) => {
                        client = again;
                        soak.tally.add("reconnects", 1);
                        true
                    }
                    None => false,
                }
            }
            6 => {
                // A burst far over the rate: each frame is answered exactly once, by the
                // invalid_text a blank message earns or by rate_limited.
                const BURST: usize = 60;
                let mut ok = true;
                for _ in 0..BURST {
                    ok &= send(&mut client, json!({"type": "message", "text": " "}));
                }
                let (mut refused, mut limited) = (0, 0);
                while ok && refused + limited < BURST {
                    match wait_for(&mut client, |f| f["type"] == "error") {
                        Ok(f) if f["code"] == "invalid_text" => refused += 1,
                        Ok(f) if f["code"] == "rate_limited" => limited += 1,
                        Ok(f) => {
                            soak.violation(format!("{name}: burst answered with {f}"));
                            ok = false;
                        }
                        Err(e) => {
                            soak.violation(format!(
                                "{name}: burst of {BURST}: {refused} invalid_text and {limited} \
                                 rate_limited, then {e}"
                            ));
                            ok = false;
                        }
                    }
                }
                if ok && limited == 0 {
                    soak.violation(format!("{name}: a burst of {BURST} was never rate limited"));
                }
                soak.tally
                    .add("fault: rate-limited frames (bursts)", limited as u64);
                ok
            }
            _ => {
                send(&mut client, json!({"type": "message", "text": "   "}))
                    && expect_error(&mut client, "invalid_text", "blank message")
            }
        };
        // A burst empties the bucket; let it refill (20 a second) before the next round.
        let pause = Instant::now() + Duration::from_millis(if round % 8 == 6 { 2500 } else { 300 });
        while alive && Instant::now() < pause {
            if let Err(e) = poll(&mut client) {
                soak.violation(format!("{name} was disconnected: {e}"));
                alive = false;
            }
        }
    }
    arrival.finish(client, alive);
}

fn abrupt(soak: &Soak, me: usize) {
    let arrival = soak.arrival();
    let mut rng = Rng::new(1000 + me as u64);
    let channels = ["soak-0", "soak-1", "soak-2", "soak-3", "general"];
    let mut k = 0;
    while !soak.over() {
        k += 1;
        let channel = channels[rng.below(channels.len())];
        let Some((mut client, _)) = soak.connect(&format!("abrupt-{me}-{k}"), channel) else {
            break;
        };
        if rng.below(2) == 0 {
            let text = format!("abrupt-{me}-{k} was here");
            if !send(&mut client, json!({"type": "message", "text": text}))
                || wait_for(&mut client, |f| f["text"] == text.as_str()).is_err()
            {
                soak.violation(format!("abrupt-{me}-{k}: own message lost"));
            }
        }
        match rng.below(4) {
            0 => {
                // Gone without a word (an RST if anything is unread).
                soak.tally.add("fault: abrupt drop (reset)", 1);
                drop(client);
            }
            1 => {
                // Half a frame: the header promises 200 bytes, 3 come.
                soak.tally.add("fault: half a frame, then gone", 1);
                let stream = client.ws.get_mut();
                let _ = stream.write_all(&[0x81, 0x80 | 126, 0, 200, 1, 2, 3, 4, b'{', b'"', b't']);
                drop(client);
            }
            2 => {
                // Half-close without a close frame: the server must hang up by itself.
                soak.tally.add("fault: half-close without a close frame", 1);
                let _ = client.ws.get_ref().shutdown(Shutdown::Write);
                let deadline = Instant::now() + DEADLINE;
                let ended = loop {
                    match poll(&mut client) {
                        Err(_) => break true,
                        Ok(_) if Instant::now() > deadline => break false,
                        Ok(_) => {}
                    }
                };
                if !ended {
                    soak.violation(format!("abrupt-{me}-{k}: half-closed, never hung up on"));
                }
            }
            _ => {
                soak.tally.add("polite leaves", 1);
                leave(client);
            }
        }
        thread::sleep(rng.millis(100, 400));
    }
    // Be there at the end.
    let last = soak.connect(&format!("abrupt-{me}-last"), "general");
    arrival.park(last.is_some());
    if let Some((client, _)) = last {
        leave(client);
    }
}

/// Comes back at the end as an ordinary client, parks, and leaves.
fn park_fresh(soak: &Soak, arrival: Arrival<'_>, name: &str) {
    let last = soak.connect(name, "general");
    arrival.park(last.is_some());
    if let Some((client, _)) = last {
        leave(client);
    }
}

fn spammer(soak: &Soak, me: usize) {
    let arrival = soak.arrival();
    let mut k = 0;
    while !soak.over() {
        k += 1;
        let until = soak.end.min(Instant::now() + Duration::from_secs(3));
        match flood_once(soak.addr, &format!("spam-{me}-{k}"), until) {
            Flood::Closed(1008) => soak.tally.add("drop: 1008 flooding", 1),
            Flood::Closed(other) => {
                soak.violation(format!("spam-{me}-{k} was closed with {other}"))
            }
            Flood::Refused(503) => soak.tally.add("spam: refused 503 (arriving too fast)", 1),
            Flood::Refused(other) => {
                soak.violation(format!("spam-{me}-{k} was refused with {other}"))
            }
            Flood::Ended => soak.tally.add("spam: ended without a close frame", 1),
        }
    }
    park_fresh(soak, arrival, &format!("spam-{me}-last"));
}

fn greedy(soak: &Soak, me: usize) {
    let arrival = soak.arrival();
    let mut k = 0;
    while !soak.over() {
        k += 1;
        let Ok(stream) = common::tcp_with(std::net::Ipv4Addr::LOCALHOST, soak.addr, Some(1)) else {
            continue;
        };
        let path = format!("/?username=greedy-{me}-{k}&channel=greedy-{me}");
        let Ok(mut client) = common::handshake(stream, soak.addr, &path, &[]) else {
            continue;
        };
        // Never reads: each join into the flood channel asks for its whole history.
        let mut n = 0;
        loop {
            n += 1;
            let channel = if n % 2 == 0 {
                "flood".to_owned()
            } else {
                format!("greedy-{me}")
            };
            if !send(&mut client, json!({"type": "join", "channel": channel})) {
                soak.tally.add("drop: greedy reader", 1);
                break;
            }
            if soak.over() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    park_fresh(soak, arrival, &format!("greedy-{me}-last"));
}

fn churner(soak: &Soak, me: usize) {
    let arrival = soak.arrival();
    let mut k = 0;
    while !soak.over() {
        k += 1;
        let path = format!("/?username=churn-{me}-{k}&channel=churn-{me}-{k}");
        if let Ok(mut client) = common::try_connect(soak.addr, &path, &[]) {
            client.recv_type("welcome");
            let _ = client.ws.close(None);
            soak.tally.add("fault: channels made and removed", 1);
        }
    }
    park_fresh(soak, arrival, &format!("churn-{me}-last"));
}

fn lurker(soak: &Soak) {
    let arrival = soak.arrival();
    let elsewhere = std::net::Ipv4Addr::new(127, 0, 0, 3);
    while !soak.over() {
        // Silent sockets, more than one address may hold; each is let go after its 10 s.
        let silent: Vec<_> = (0..300)
            .filter_map(|_| common::tcp_from(elsewhere, soak.addr).ok())
            .collect();
        soak.tally.add("fault: silent sockets", silent.len() as u64);
        let until = soak.end.min(Instant::now() + Duration::from_secs(11));
        while Instant::now() < until {
            thread::sleep(Duration::from_millis(100));
        }
    }
    park_fresh(soak, arrival, "lurker-last");
}

fn holder(soak: &Soak) {
    let arrival = soak.arrival();
    let Some((mut client, _)) = soak.connect("Taken-Name", "general") else {
        return;
    };
    let mut alive = true;
    while alive && !soak.over() {
        if let Err(e) = poll(&mut client) {
            soak.violation(format!("the name holder was disconnected: {e}"));
            alive = false;
        }
    }
    arrival.finish(client, alive);
}

// ---------------------------------------------------------------------------------------------

#[test]
fn soak_mixed_clients_deliver_in_order_and_leak_nothing() {
    let duration = soak_duration();
    let server = start(|_| {});
    let addr = server.local_addr();
    // Baseline: the server is up, no client yet.
    let (threads_before, fds_before, rss_before) = (threads_now(), fds_now(), rss_kib());

    let hostile = SPAMMERS + GREEDY + CHURNERS + LURKERS;
    let total = HEALTHY
        + SWITCHERS
        + RENAMERS
        + DOZERS
        + SLEEPERS
        + FLOODERS
        + GARBAGE
        + ABRUPT
        + hostile
        + 2;
    // The healthy connect first and all of them are in before anyone speaks, so each can
    // expect every peer's messages from number 0.
    let mut soak = Soak {
        addr,
        end: Instant::now() + Duration::from_secs(3600),
        tally: Tally::default(),
        gate: Gate::default(),
        violations: Mutex::new(Vec::new()),
        healthy_sent: (0..HEALTHY).map(|_| AtomicU64::new(u64::MAX)).collect(),
        sleeper_dropped: (0..SLEEPERS).map(|_| AtomicBool::new(false)).collect(),
        sleepers_left: AtomicUsize::new(0),
        flood_sent: AtomicU64::new(0),
        flood_read: (0..=FLOODERS).map(|_| AtomicU64::new(u64::MAX)).collect(),
        started: Instant::now(),
        deliveries: AtomicU64::new(0),
        connections: AtomicU64::new(0),
    };
    let healthy_clients: Vec<Client> = (0..HEALTHY)
        .map(|i| {
            let channel = format!("soak-{}", i % HEALTHY_CHANNELS);
            soak.connect(&format!("healthy-{i}"), &channel)
                .expect("a healthy client connects")
                .0
        })
        .collect();
    eventually("all healthy chatters are in", || {
        stats(addr)["online"] == HEALTHY
    });
    soak.started = Instant::now();
    soak.end = soak.started + duration;
    let soak = Arc::new(soak);

    let spawn = |name: String, body: Box<dyn FnOnce(&Soak) + Send>| {
        let soak = Arc::clone(&soak);
        thread::Builder::new()
            .name(name)
            .stack_size(256 * 1024)
            .spawn(move || body(&soak))
            .expect("spawn a client thread")
    };
    let mut handles = Vec::new();
    for (i, client) in healthy_clients.into_iter().enumerate() {
        handles.push(spawn(
            format!("healthy-{i}"),
            Box::new(move |s| healthy(s, i, client)),
        ));
    }
    handles.push(spawn("holder".into(), Box::new(holder)));
    handles.push(spawn("observer".into(), Box::new(observer)));
    for i in 0..SLEEPERS {
        handles.push(spawn(
            format!("sleeper-{i}"),
            Box::new(move |s| sleeper(s, i)),
        ));
    }
    for i in 0..FLOODERS {
        handles.push(spawn(
            format!("flooder-{i}"),
            Box::new(move |s| flooder(s, i)),
        ));
    }
    for i in 0..SWITCHERS {
        handles.push(spawn(
            format!("switcher-{i}"),
            Box::new(move |s| switcher(s, i)),
        ));
    }
    for i in 0..RENAMERS {
        handles.push(spawn(
            format!("renamer-{i}"),
            Box::new(move |s| renamer(s, i)),
        ));
    }
    for i in 0..DOZERS {
        handles.push(spawn(format!("dozer-{i}"), Box::new(move |s| dozer(s, i))));
    }
    for i in 0..GARBAGE {
        handles.push(spawn(
            format!("garbage-{i}"),
            Box::new(move |s| garbage(s, i)),
        ));
    }
    for i in 0..ABRUPT {
        handles.push(spawn(
            format!("abrupt-{i}"),
            Box::new(move |s| abrupt(s, i)),
        ));
    }
    for i in 0..SPAMMERS {
        handles.push(spawn(
            format!("spammer-{i}"),
            Box::new(move |s| spammer(s, i)),
        ));
    }
    for i in 0..GREEDY {
        handles.push(spawn(
            format!("greedy-{i}"),
            Box::new(move |s| greedy(s, i)),
        ));
    }
    for i in 0..CHURNERS {
        handles.push(spawn(
            format!("churner-{i}"),
            Box::new(move |s| churner(s, i)),
        ));
    }
    handles.push(spawn("lurker".into(), Box::new(lurker)));
    assert_eq!(handles.len(), total);

    // Sample the process while the soak runs (pacing the samples, not waiting on anything).
    let started = Instant::now();
    let mut rss_samples: Vec<(Duration, u64)> = Vec::new();
    let (mut threads_peak, mut fds_peak) = (0, 0);
    while !soak.over() {
        rss_samples.push((started.elapsed(), rss_kib()));
        threads_peak = threads_peak.max(threads_now());
        fds_peak = fds_peak.max(fds_now());
        thread::sleep(Duration::from_millis(500));
    }

    // Everyone parks; then /stats must count exactly the connected ones.
    let (arrived, connected) = soak.gate.wait_all(total, DRAIN + DEADLINE * 3);
    let parked_stats = {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let now = stats(addr);
            if now["online"] == connected || Instant::now() > deadline {
                break now;
            }
            thread::sleep(Duration::from_millis(50));
        }
    };
    let rss_parked = rss_kib();
    soak.gate.release();
    let mut panicked = Vec::new();
    for handle in handles {
        let name = handle.thread().name().unwrap_or("?").to_owned();
        if handle.join().is_err() {
            panicked.push(name);
        }
    }
    eventually("everyone has left", || stats(addr)["online"] == 0);
    let final_stats = stats(addr);

    // Threads and descriptors come back to the baseline: nothing leaked.
    let settle_deadline = Instant::now() + DEADLINE * 3;
    let (mut threads_after, mut fds_after);
    loop {
        threads_after = threads_now();
        fds_after = fds_now();
        if (threads_after <= threads_before + 2 && fds_after <= fds_before + 4)
            || Instant::now() > settle_deadline
        {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let rss_after = rss_kib();

    // The figures, for the README.
    let half = duration / 2;
    let first_half_max = rss_samples
        .iter()
        .filter(|(t, _)| *t <= half)
        .map(|(_, r)| *r)
        .max()
        .unwrap_or(0);
    let second_half_max = rss_samples
        .iter()
        .filter(|(t, _)| *t > half)
        .map(|(_, r)| *r)
        .max()
        .unwrap_or(0);
    let healthy_sent: u64 = soak
        .healthy_sent
        .iter()
        .map(|s| s.load(Ordering::SeqCst))
        .filter(|s| *s != u64::MAX)
        .sum();
    eprintln!("== soak: {:.0} s", duration.as_secs_f64());
    eprintln!(
        "clients: {total} threads, {} connections made (with reconnects)",
        soak.connections.load(Ordering::SeqCst)
    );
    eprintln!(
        "messages: {} accepted by the server; healthy sent {healthy_sent}; deliveries counted by clients: {}",
        final_stats["messages"],
        soak.deliveries.load(Ordering::SeqCst)
    );
    eprintln!("faults injected: {:?}", soak.tally.with_prefix("fault: "));
    eprintln!(
        "drops by cause: {:?} (every sleeper cut off {:.1} s into the soak)",
        soak.tally.with_prefix("drop: "),
        soak.tally.get("ms until every sleeper was cut off") as f64 / 1000.0
    );
    eprintln!(
        "other: switches {}, renames {} (+{} refused as taken), reconnects {}, polite leaves {}, connect retries {}",
        soak.tally.get("switches"),
        soak.tally.get("renames"),
        soak.tally.get("renames refused (taken)"),
        soak.tally.get("reconnects"),
        soak.tally.get("polite leaves"),
        soak.tally.get("connect retries"),
    );
    eprintln!(
        "RSS: {} MiB before, {} MiB max in the first half, {} MiB max in the second, {} MiB parked, {} MiB after",
        rss_before / 1024,
        first_half_max / 1024,
        second_half_max / 1024,
        rss_parked / 1024,
        rss_after / 1024
    );
    let timeline: Vec<String> = rss_samples
        .iter()
        .step_by(10)
        .map(|(t, r)| format!("{:.0}s:{}", t.as_secs_f64(), r / 1024))
        .collect();
    eprintln!("RSS timeline (MiB): {}", timeline.join(" "));
    eprintln!(
        "threads: {threads_before} before, {threads_peak} peak, {threads_after} after; \
         fds: {fds_before} before, {fds_peak} peak, {fds_after} after"
    );
    eprintln!(
        "online when parked: {} of {connected} connected",
        parked_stats["online"]
    );

    // The verdicts.
    let violations = soak.violations.lock().unwrap().clone();
    assert!(panicked.is_empty(), "client threads panicked: {panicked:?}");
    assert!(
        violations.is_empty(),
        "{} protocol violations seen by clients:\n{}",
        violations.len(),
        violations.join("\n")
    );
    assert_eq!(arrived, total, "every client reached the end");
    assert_eq!(connected, total, "every client was connected at the end");
    assert_eq!(
        parked_stats["online"], connected,
        "/stats online while parked: {parked_stats}"
    );
    let counted: u64 = parked_stats["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, connected as u64, "channel counts add up to online");
    assert!(
        final_stats["messages"].as_u64().unwrap() >= healthy_sent,
        "fewer messages accepted than the healthy alone sent"
    );
    assert_eq!(
        soak.tally.get("drop: slow reader cut off"),
        SLEEPERS as u64,
        "every sleeper was cut off as a slow reader"
    );
    assert!(soak.tally.get("drop: 1009 message too big") > 0);
    assert!(
        soak.tally.get("drop: 1008 flooding") > 0,
        "spammers were closed with 1008"
    );
    assert!(
        soak.tally.get("drop: greedy reader") > 0,
        "greedy readers were dropped"
    );
    assert!(
        threads_after <= threads_before + 2,
        "threads leaked: {threads_before} before, {threads_after} after"
    );
    assert!(
        fds_after <= fds_before + 4,
        "file descriptors leaked: {fds_before} before, {fds_after} after"
    );
    assert!(
        second_half_max <= first_half_max + first_half_max / 2 + 64 * 1024,
        "memory kept growing: {first_half_max} KiB max in the first half, {second_half_max} KiB in the second"
    );
    server.shutdown();
}
