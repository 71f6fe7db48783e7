//! The server's budget of connections (hardening), kept by the accept thread *before* it
//! spawns anything, so that no number of clients can make the process run out of threads,
//! memory maps or file descriptors (see [`super::limits`] for where the numbers come from).
//!
//! Two counts, each a place held by a guard that gives it back when dropped:
//! - a [`Handshake`]: an accepted connection whose HTTP head is still being read or answered
//!   (handshakes in progress and plain HTTP), limited in total and per source address, so
//!   that sockets that never speak, all from one address, cannot lock anyone else out. When
//!   every place is taken, the oldest handshake that has stalled for [`STALLED`] gives its
//!   place to the newcomer: so silent sockets from many addresses cannot lock anyone out either.
//!   A connection from a trusted proxy (`--trust-proxy`) has no address of its own until its
//!   head names its client ([`Budget::attribute`]): until then it counts in the total only,
//!   so that a class behind one proxy is not held to one address's share.
//! - a [`Place`]: an open WebSocket on either door (`--max-connections`), which an address may
//!   also take only so fast ([`ARRIVALS_PER_SECOND`]): each arrival and departure is told to a
//!   whole channel, so a client connecting and leaving in a loop would flood everyone in it.
//!
//! Writer threads and queued bytes have their own budget, in [`super::outbound`].

use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::address::source_of;
use super::{Capacity, TokenBucket};

/// A handshake still unfinished after this long, when every place is taken, is given up for a
/// newcomer. A real client's head arrives in one round trip, milliseconds.
pub const STALLED: Duration = Duration::from_secs(2);
/// WebSockets one address may open a second, once its burst is used up.
pub const ARRIVALS_PER_SECOND: f64 = 20.0;
/// WebSockets one address may open at once: a whole class behind one NAT address arriving.
pub const ARRIVALS_BURST: f64 = 200.0;
/// Addresses whose arrival rate is remembered; past this, those back to a full burst are
/// forgotten, so that arrivals from many addresses cannot grow memory without bound.
const REMEMBERED_ADDRESSES: usize = 4096;

/// Why a connection was refused at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtCapacity {
    /// Every handshake place is taken, by handshakes that are not stalled.
    Handshakes,
    /// This address holds its share of handshake places.
    Address,
    /// Every WebSocket place is taken.
    Connections,
    /// This address opens WebSockets faster than [`ARRIVALS_PER_SECOND`].
    Arrivals,
}

impl AtCapacity {
    /// A sentence for the refused client and the log.
    pub fn reason(self) -> &'static str {
        match self {
            AtCapacity::Handshakes => "too many connections are starting at once; try again",
            AtCapacity::Address => "too many connections from your address are starting at once",
            AtCapacity::Connections => "too many connections",
            AtCapacity::Arrivals => "too many connections from your address in a short time",
        }
    }
}

/// A handshake in progress, so that it can be given up if it stalls.
#[derive(Debug)]
struct Starting {
    /// The client's address; `None` for a trusted proxy's connection whose head has not
    /// named its client yet.
    address: Option<IpAddr>,
    since: Instant,
    socket: Arc<TcpStream>,
}

#[derive(Debug, Default)]
struct Counts {
    starting: HashMap<u64, Starting>,
    next_starting: u64,
    by_address: HashMap<IpAddr, usize>,
    open: usize,
    /// Each address's arrivals: a token bucket, as for a connection's frames.
    arrivals: HashMap<IpAddr, TokenBucket>,
}

/// The live counts against a [`Capacity`].
#[derive(Debug)]
pub struct Budget {
    capacity: Capacity,
    counts: Mutex<Counts>,
    /// Signalled whenever a WebSocket closes, for shutdown to wait on.
    closed: Condvar,
}

impl Budget {
    pub fn new(capacity: Capacity) -> Arc<Budget> {
        Arc::new(Budget {
            capacity,
            counts: Mutex::default(),
            closed: Condvar::new(),
        })
    }

    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a handshake place for a connection from `peer` on `socket`. When every place is
    /// taken, the oldest handshake stalled for [`STALLED`] is cut off to make room (its
    /// thread gives the place back a moment later).
    ///
    /// # Errors
    /// Which limit is reached.
    pub fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
        socket: &Arc<TcpStream>,
    ) -> Result<Handshake, AtCapacity> {
        self.admit_at(peer, socket, Instant::now())
    }

    fn admit_at(
        self: &Arc<Self>,
        peer: IpAddr,
        socket: &Arc<TcpStream>,
        now: Instant,
    ) -> Result<Handshake, AtCapacity> {
        self.admit_as(Some(source_of(peer)), socket, now)
    }

    /// Takes a handshake place for a connection from a trusted proxy, counted in the total
    /// only: its client is known once its head is read, and [`Budget::attribute`] counts it
    /// against that client's share then. (Counted against the proxy's own share, a class
    /// arriving through one proxy would be refused past one address's share.)
    ///
    /// # Errors
    /// When every handshake place is taken by handshakes that are not stalled.
    pub fn admit_from_proxy(
        self: &Arc<Self>,
        socket: &Arc<TcpStream>,
    ) -> Result<Handshake, AtCapacity> {
        self.admit_as(None, socket, Instant::now())
    }

    fn admit_as(
        self: &Arc<Self>,
        address: Option<IpAddr>,
        socket: &Arc<TcpStream>,
        now: Instant,
    ) -> Result<Handshake, AtCapacity> {
        let mut counts = self.counts();
        if let Some(address) = address
            && counts.by_address.get(&address).copied().unwrap_or(0)
                >= self.capacity.handshakes_per_address
        {
            return Err(AtCapacity::Address);
        }
        if counts.starting.len() >= self.capacity.handshakes {
            let oldest = counts
                .starting
                .iter()
                .filter(|(_, p)| now.duration_since(p.since) >= STALLED)
                .min_by_key(|(_, p)| p.since)
                .map(|(id, _)| *id);
            let Some(oldest) = oldest else {
                return Err(AtCapacity::Handshakes);
            };
            let stalled = counts.starting.remove(&oldest).expect("just found");
            forget_one(&mut counts.by_address, stalled.address);
            let _ = stalled.socket.shutdown(Shutdown::Both);
        }
        if let Some(address) = address {
            *counts.by_address.entry(address).or_default() += 1;
        }
        let id = counts.next_starting;
        counts.next_starting += 1;
        let starting = Starting {
            address,
            since: now,
            socket: Arc::clone(socket),
        };
        counts.starting.insert(id, starting);
        Ok(Handshake {
            budget: Arc::clone(self),
            id,
        })
    }

    /// Counts a trusted proxy's handshake against its client's share, now that its head has
    /// named the client. (A handshake counted already keeps its address.)
    ///
    /// # Errors
    /// [`AtCapacity::Address`] when that client holds its share of handshake places.
    pub fn attribute(&self, handshake: &Handshake, client: IpAddr) -> Result<(), AtCapacity> {
        let address = source_of(client);
        let mut counts = self.counts();
        let held = counts.by_address.get(&address).copied().unwrap_or(0);
        let Some(starting) = counts.starting.get_mut(&handshake.id) else {
            return Ok(()); // given up for a newcomer: its socket is shut already
        };
        if starting.address.is_some() {
            return Ok(());
        }
        if held >= self.capacity.handshakes_per_address {
            return Err(AtCapacity::Address);
        }
        starting.address = Some(address);
        *counts.by_address.entry(address).or_default() += 1;
        Ok(())
    }

    /// Takes a WebSocket place for the connection whose handshake this is.
    ///
    /// # Errors
    /// When every place is taken, or its address arrives too fast.
    pub fn place(self: &Arc<Self>, handshake: &Handshake) -> Result<Place, AtCapacity> {
        self.place_at(handshake, Instant::now())
    }

    fn place_at(
        self: &Arc<Self>,
        handshake: &Handshake,
        now: Instant,
    ) -> Result<Place, AtCapacity> {
        let mut counts = self.counts();
        if counts.open >= self.capacity.connections {
            return Err(AtCapacity::Connections);
        }
        let address = counts.starting.get(&handshake.id).and_then(|p| p.address);
        if let Some(address) = address
            && !counts.arrive(address, now)
        {
            return Err(AtCapacity::Arrivals);
        }
        counts.open += 1;
        Ok(Place {
            budget: Arc::clone(self),
        })
    }

    /// Open WebSockets and handshakes in progress.
    pub fn in_use(&self) -> (usize, usize) {
        let counts = self.counts();
        (counts.open, counts.starting.len())
    }

    /// Waits up to `timeout` for every WebSocket to close; returns how many are still open.
    pub fn wait_until_closed(&self, timeout: Duration) -> usize {
        let counts = self.counts();
        let (counts, _) = self
            .closed
            .wait_timeout_while(counts, timeout, |counts| counts.open > 0)
            .unwrap_or_else(|e| e.into_inner());
        counts.open
    }
}

impl Counts {
    /// Takes one arrival token of `address`, if it has one.
    fn arrive(&mut self, address: IpAddr, now: Instant) -> bool {
        if self.arrivals.len() >= REMEMBERED_ADDRESSES {
            self.arrivals.retain(|_, bucket| !bucket.full_at(now));
        }
        self.arrivals
            .entry(address)
            .or_insert_with(|| TokenBucket::new(ARRIVALS_PER_SECOND, ARRIVALS_BURST, now))
            .take_at(now)
    }
}

fn forget_one(by_address: &mut HashMap<IpAddr, usize>, address: Option<IpAddr>) {
    let Some(address) = address else {
        return; // a proxy's connection not yet attributed: counted in the total only
    };
    if let Some(n) = by_address.get_mut(&address) {
        *n -= 1;
        if *n == 0 {
            by_address.remove(&address);
        }
    }
}

/// A connection's handshake place; given back when dropped.
#[derive(Debug)]
pub struct Handshake {
    budget: Arc<Budget>,
    id: u64,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut counts = self.budget.counts();
        // Not there if it stalled and was given up for a newcomer: counted out already.
        if let Some(starting) = counts.starting.remove(&self.id) {
            forget_one(&mut counts.by_address, starting.address);
        }
    }
}

/// One of the `--max-connections` places; given back when dropped.
#[derive(Debug)]
pub struct Place {
    budget: Arc<Budget>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.budget.counts().open -= 1;
        self.budget.closed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};

    fn budget() -> Arc<Budget> {
        Budget::new(Capacity {
            connections: 300,
            handshakes: 5,
            handshakes_per_address: 3,
            writers: 1,
        })
    }

    /// A connected pair: the server's end (for the budget) and the client's.
    fn socket_pair(listener: &TcpListener) -> (Arc<TcpStream>, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (Arc::new(server), client)
    }

    #[test]
    fn step7_one_address_cannot_take_every_handshake_place() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (socket, _client) = socket_pair(&listener);
        let budget = budget();
        let a = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let held: Vec<_> = (0..3).map(|_| budget.admit(a, &socket).unwrap()).collect();
        assert_eq!(budget.admit(a, &socket).unwrap_err(), AtCapacity::Address);
        let others: Vec<_> = (0..2).map(|_| budget.admit(b, &socket).unwrap()).collect();
        let c = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(
            budget.admit(c, &socket).unwrap_err(),
            AtCapacity::Handshakes,
            "the total holds too, while nobody has stalled"
        );
        drop(held);
        assert!(budget.admit(a, &socket).is_ok(), "places come back");
        drop(others);
        assert_eq!(budget.in_use(), (0, 0));
    }

    #[test]
    fn step7_a_stalled_handshake_gives_its_place_to_a_newcomer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let budget = budget();
        let start = Instant::now();
        let mut silent = Vec::new();
        for (n, host) in [1, 1, 1, 2, 2].into_iter().enumerate() {
            let (socket, client) = socket_pair(&listener);
            let at = start + Duration::from_millis(n as u64);
            let peer = IpAddr::V4(Ipv4Addr::new(127, 0, 0, host));
            silent.push((budget.admit_at(peer, &socket, at).unwrap(), client));
        }
        let newcomer = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
        let (socket, _client) = socket_pair(&listener);
        let soon = start + Duration::from_secs(1);
        assert_eq!(
            budget.admit_at(newcomer, &socket, soon).unwrap_err(),
            AtCapacity::Handshakes,
            "nobody has stalled for long yet"
        );
        let later = start + STALLED + Duration::from_millis(10);
        let admitted = budget.admit_at(newcomer, &socket, later);
        assert!(admitted.is_ok(), "the oldest stalled handshake made room");
        // The oldest was cut off: its client sees the end of the stream.
        let mut byte = [0u8];
        assert_eq!(silent[0].1.read(&mut byte).unwrap(), 0);
        assert_eq!(budget.in_use().1, 5);
        drop(silent);
        drop(admitted);
        assert_eq!(budget.in_use(), (0, 0));
    }

    #[test]
    fn step7_ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        let one: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(source_of(one.into()), source_of(same_64.into()));
        let other_64: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_ne!(source_of(one.into()), source_of(other_64.into()));
        let mapped: Ipv6Addr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(
            source_of(mapped.into()),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))
        );
    }

    #[test]
    fn step7_websocket_places_are_counted_and_an_address_may_arrive_only_so_fast() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (socket, _client) = socket_pair(&listener);
        let budget = budget();
        let a = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
        let start = Instant::now();
        let mut places = Vec::new();
        let mut refused = None;
        for _ in 0..ARRIVALS_BURST as usize + 1 {
            let handshake = budget.admit(a, &socket).unwrap();
            match budget.place_at(&handshake, start) {
                Ok(place) => places.push(place),
                Err(why) => refused = Some(why),
            }
        }
        assert_eq!(
            places.len(),
            ARRIVALS_BURST as usize,
            "a whole class at once"
        );
        assert_eq!(refused, Some(AtCapacity::Arrivals));
        // A second later, another second's worth.
        let later = start + Duration::from_secs(1);
        let handshake = budget.admit(a, &socket).unwrap();
        let more: Vec<_> = (0..ARRIVALS_PER_SECOND as usize)
            .map(|_| budget.place_at(&handshake, later).unwrap())
            .collect();
        assert_eq!(
            budget.place_at(&handshake, later).unwrap_err(),
            AtCapacity::Arrivals
        );
        drop((places, more));
        assert_eq!(budget.wait_until_closed(Duration::ZERO), 0);
    }

    #[test]
    fn operators_proxy_a_class_behind_a_trusted_proxy_is_counted_by_its_clients() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (socket, _client) = socket_pair(&listener);
        let budget = budget();
        // Five handshakes through the proxy at once: more than one address's share (3), and
        // none is refused, because none is counted against the proxy's own address.
        let held: Vec<_> = (0..5)
            .map(|_| budget.admit_from_proxy(&socket).unwrap())
            .collect();
        assert_eq!(
            budget.admit_from_proxy(&socket).unwrap_err(),
            AtCapacity::Handshakes,
            "the total still holds"
        );
        // Once each head names its client, each client has its own share...
        let client = |n| IpAddr::V4(Ipv4Addr::new(192, 0, 2, n));
        for (n, handshake) in held.iter().enumerate() {
            budget.attribute(handshake, client(n as u8)).unwrap();
        }
        // ...and one client behind the proxy is held to it like anyone.
        drop(held);
        let same: Vec<_> = (0..4)
            .map(|_| budget.admit_from_proxy(&socket).unwrap())
            .collect();
        for handshake in &same[..3] {
            budget.attribute(handshake, client(7)).unwrap();
        }
        assert_eq!(
            budget.attribute(&same[3], client(7)).unwrap_err(),
            AtCapacity::Address
        );
        assert!(budget.attribute(&same[3], client(8)).is_ok());
        // Its arrivals are the client's too: the proxy's address has spent nothing.
        let place = budget.place(&same[0]).unwrap();
        let direct = budget.admit(IpAddr::V4(Ipv4Addr::LOCALHOST), &socket);
        drop((same, place, direct));
        assert_eq!(budget.in_use(), (0, 0));
        assert!(budget.counts().by_address.is_empty());
    }
}
