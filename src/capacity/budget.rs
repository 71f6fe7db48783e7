//! The server's budget of connections (hardening), kept by the accept thread *before* it
//! spawns anything, so that no number of clients can make the process run out of threads,
//! memory maps or file descriptors (see [`super::limits`] for where the numbers come from).
//!
//! Two counts, each a place held by a guard that gives it back when dropped:
//! - a [`Handshake`]: an accepted connection whose HTTP head is still being read or answered
//!   (handshakes in progress and plain HTTP), limited in total and per source address, so
//!   that sockets that never speak, all from one address, cannot lock anyone else out;
//! - a [`Place`]: an open WebSocket on either door (`--max-connections`).
//!
//! Writer threads have their own budget, in [`crate::connection::Writers`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::Capacity;

/// Why a connection was refused at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtCapacity {
    /// Every handshake place is taken.
    Handshakes,
    /// This address holds its share of handshake places.
    Address,
    /// Every WebSocket place is taken.
    Connections,
}

impl AtCapacity {
    /// A sentence for the refused client and the log.
    pub fn reason(self) -> &'static str {
        match self {
            AtCapacity::Handshakes => "too many connections are starting at once; try again",
            AtCapacity::Address => "too many connections from your address are starting at once",
            AtCapacity::Connections => "too many connections",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    handshakes: usize,
    by_address: HashMap<IpAddr, usize>,
    open: usize,
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

    /// Takes a handshake place for a connection from `peer`.
    ///
    /// # Errors
    /// Which limit is reached.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Handshake, AtCapacity> {
        let address = source_of(peer);
        let mut counts = self.counts();
        if counts.handshakes >= self.capacity.handshakes {
            return Err(AtCapacity::Handshakes);
        }
        let from_here = counts.by_address.entry(address).or_default();
        if *from_here >= self.capacity.handshakes_per_address {
            return Err(AtCapacity::Address);
        }
        *from_here += 1;
        counts.handshakes += 1;
        Ok(Handshake {
            budget: Arc::clone(self),
            address,
        })
    }

    /// Takes a WebSocket place, if one is free.
    pub fn place(self: &Arc<Self>) -> Option<Place> {
        let mut counts = self.counts();
        if counts.open >= self.capacity.connections {
            return None;
        }
        counts.open += 1;
        Some(Place {
            budget: Arc::clone(self),
        })
    }

    /// Open WebSockets and handshakes in progress.
    pub fn in_use(&self) -> (usize, usize) {
        let counts = self.counts();
        (counts.open, counts.handshakes)
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

/// A connection's handshake place; given back when dropped.
#[derive(Debug)]
pub struct Handshake {
    budget: Arc<Budget>,
    address: IpAddr,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut counts = self.budget.counts();
        counts.handshakes -= 1;
        if let Some(n) = counts.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                counts.by_address.remove(&self.address);
            }
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

/// The address a connection counts against: IPv4 as it is, IPv6 by its /64 (one machine
/// usually has a whole /64 to pick from), and IPv4 written as IPv6 as the IPv4 it is.
fn source_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let segments = v6.segments();
                IpAddr::V6(
                    [
                        segments[0],
                        segments[1],
                        segments[2],
                        segments[3],
                        0,
                        0,
                        0,
                        0,
                    ]
                    .into(),
                )
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn budget() -> Arc<Budget> {
        Budget::new(Capacity {
            connections: 2,
            handshakes: 5,
            handshakes_per_address: 3,
            writers: 1,
        })
    }

    #[test]
    fn step7_one_address_cannot_take_every_handshake_place() {
        let budget = budget();
        let a = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let held: Vec<_> = (0..3).map(|_| budget.admit(a).unwrap()).collect();
        assert_eq!(budget.admit(a).unwrap_err(), AtCapacity::Address);
        let others: Vec<_> = (0..2).map(|_| budget.admit(b).unwrap()).collect();
        assert_eq!(
            budget.admit(b).unwrap_err(),
            AtCapacity::Handshakes,
            "the total holds too"
        );
        drop(held);
        assert!(budget.admit(a).is_ok(), "places come back");
        drop(others);
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
    fn step7_websocket_places_are_counted_and_given_back() {
        let budget = budget();
        let places: Vec<_> = (0..2).map(|_| budget.place().unwrap()).collect();
        assert!(budget.place().is_none());
        drop(places);
        assert_eq!(budget.wait_until_closed(Duration::ZERO), 0);
    }
}
