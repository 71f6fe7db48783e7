//! The side door for `state` and `typing`: each sender's newest waits here, one of each per
//! sender, until the hub takes them all at once.
//!
//! They say how someone is *now*, and a channel publishes only the newest of each sender
//! anyway (see `newest.rs`). Sent through the hub's mpsc queue like everything else, a crowd
//! moving its cursors at the rate limit would fill that queue with frames already out of date,
//! and a quiet channel's `message` would wait behind thousands of them, its sender's thread
//! blocked handing it over. Here a sender's new `state` replaces the one still waiting, so the
//! hub's queue holds at most one [`Event::NewestWaiting`](super::Event::NewestWaiting) for all
//! of them, and the crowd's cursors cost the hub one apply per sender per turn, whatever
//! their rate.

use std::collections::HashMap;
use std::mem;
use std::sync::{Mutex, TryLockError};
use std::time::{Duration, Instant};

use crate::connection::ConnId;
use crate::protocol::ChatRequest;

/// A channel is *crowded* once it publishes its cursors this seldom or less (`newest::every`:
/// with cursors of 150 bytes, from about 700 members on; with states of a kilobyte, from
/// about 250). Only a crowded channel's members may have their threads read their cursors
/// in batches, a pause of about this long apart, while the hub is behind with them (`Cursors`
/// in `doors/chat.rs`): their channel would not have published more of them, and nothing
/// their members see is lost. A smaller channel's members never are, however far behind a
/// crowd elsewhere puts the hub: the pauses would delay what they send.
pub const CROWDED_PACE: Duration = Duration::from_millis(250);

/// What one sender has waiting: its newest `state` and its newest `typing`.
#[derive(Debug, Default)]
pub struct Held {
    state: Option<Folded>,
    typing: Option<Folded>,
}

/// The newest of a sender's frames of one kind, when it was read, and how many frames it
/// stands for (itself and those it replaced): a muted sender is refused once for each.
#[derive(Debug)]
pub struct Folded {
    pub request: ChatRequest,
    pub received: Instant,
    pub frames: u32,
}

impl Held {
    /// The requests, in the order the hub applies them.
    pub fn into_requests(self) -> impl Iterator<Item = Folded> {
        self.state.into_iter().chain(self.typing)
    }
}

/// The newest `state` and `typing` of every sender, waiting for the hub. Shared by the chat
/// door's threads (which put) and the hub (which takes).
#[derive(Debug, Default)]
pub struct NewestInbox {
    waiting: Mutex<Inbox>,
}

#[derive(Debug, Default)]
pub(super) struct Inbox {
    by_sender: HashMap<ConnId, Held>,
    /// Since when something has waited (since the hub last took everything).
    since: Option<Instant>,
}

impl NewestInbox {
    /// Puts `request` as `conn`'s newest of its kind, replacing the one waiting, if any.
    /// Returns whether the inbox was empty — the caller must then tell the hub
    /// ([`Event::NewestWaiting`](super::Event::NewestWaiting)), and nobody else will — and
    /// how long the hub has left it untaken: how far behind with cursors the hub is.
    ///
    /// # Panics
    /// If `request` is neither a `state` nor a `typing`.
    pub fn put(&self, conn: ConnId, request: ChatRequest, received: Instant) -> (bool, Duration) {
        let mut inbox = self.lock();
        let was_empty = inbox.by_sender.is_empty();
        if was_empty {
            inbox.since = Some(received);
        }
        let behind = received.saturating_duration_since(inbox.since.unwrap_or(received));
        let of_conn = inbox.by_sender.entry(conn).or_default();
        let slot = match request {
            ChatRequest::State { .. } => &mut of_conn.state,
            ChatRequest::Typing { .. } => &mut of_conn.typing,
            other => panic!(
                "only state and typing wait in the inbox, not {}",
                other.kind()
            ),
        };
        let frames = slot.as_ref().map_or(0, |folded| folded.frames) + 1;
        let replaced = slot.replace(Folded {
            request,
            received,
            frames,
        });
        // Freed after the lock is let go: thousands of threads put here.
        drop(inbox);
        drop(replaced);
        (was_empty, behind)
    }

    /// Takes back what `conn` has waiting, if the hub has not taken it yet: a request that
    /// follows a `state` must not overtake it (a `join` would carry the state to the other
    /// channel), so the door sends what it takes back through the queue first.
    pub fn take_back(&self, conn: ConnId) -> Option<Held> {
        self.lock().by_sender.remove(&conn)
    }

    /// Drops what `conn` has waiting (the hub, for someone gone), unless a connection's thread
    /// holds the inbox right now. Returns whether it could.
    pub fn forget(&self, conn: ConnId) -> bool {
        match self.waiting.try_lock() {
            Ok(mut inbox) => {
                inbox.by_sender.remove(&conn);
                true
            }
            Err(TryLockError::Poisoned(poisoned)) => {
                poisoned.into_inner().by_sender.remove(&conn);
                true
            }
            Err(TryLockError::WouldBlock) => false,
        }
    }

    /// Takes everything waiting (the hub), leaving `spare`'s room in its place; gives `spare`
    /// back if a connection's thread holds the inbox right now. The hub never waits for one:
    /// thousands of threads putting here queue up behind one that was descheduled holding
    /// it, and the hub, waiting its turn among them, slept 30-55 ms at a time.
    ///
    /// # Errors
    /// `spare`, untouched: the inbox was busy (try again on the next turn).
    pub fn take_all(
        &self,
        spare: HashMap<ConnId, Held>,
    ) -> Result<HashMap<ConnId, Held>, HashMap<ConnId, Held>> {
        match self.waiting.try_lock() {
            Ok(mut inbox) => Ok(mem::replace(&mut inbox.by_sender, spare)),
            Err(TryLockError::Poisoned(poisoned)) => {
                Ok(mem::replace(&mut poisoned.into_inner().by_sender, spare))
            }
            Err(TryLockError::WouldBlock) => Err(spare),
        }
    }

    /// Holds the inbox as a connection's thread in the middle of a put would (tests).
    #[cfg(test)]
    pub(super) fn hold(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inbox> {
        // Nothing panics while holding it but `put`'s misuse, which leaves the map whole.
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(x: i64) -> ChatRequest {
        let Some(map) = json!({ "x": x }).as_object().cloned() else {
            unreachable!()
        };
        ChatRequest::State {
            state: crate::protocol::State::of(&map),
        }
    }

    #[test]
    fn step6_a_sender_has_only_its_newest_state_and_typing_waiting() {
        let inbox = NewestInbox::default();
        let now = Instant::now();
        assert!(inbox.put(1, state(1), now).0, "the first tells the hub");
        assert!(!inbox.put(1, state(2), now).0, "the hub was told already");
        assert!(!inbox.put(1, ChatRequest::Typing { typing: true }, now).0);
        assert!(!inbox.put(2, state(3), now).0);
        let mut all = inbox.take_all(HashMap::new()).unwrap();
        assert_eq!(all.len(), 2);
        let first: Vec<(ChatRequest, u32)> = all
            .remove(&1)
            .unwrap()
            .into_requests()
            .map(|folded| (folded.request, folded.frames))
            .collect();
        let typing = ChatRequest::Typing { typing: true };
        assert_eq!(first, [(state(2), 2), (typing, 1)]);
        assert!(
            inbox.put(1, state(4), now).0,
            "empty again: the next tells the hub"
        );
        assert!(inbox.take_back(1).is_some());
        assert!(inbox.take_back(1).is_none());
    }

    #[test]
    fn step6_the_hub_never_waits_for_the_inbox() {
        let inbox = NewestInbox::default();
        inbox.put(1, state(1), Instant::now());
        // A connection's thread in the middle of a put (or descheduled there).
        let busy = inbox.hold();
        assert!(
            inbox.take_all(HashMap::new()).is_err(),
            "nothing taken, and the hub goes on"
        );
        assert!(!inbox.forget(1), "nor does it wait to forget someone");
        drop(busy);
        assert!(inbox.forget(1));
        assert!(inbox.take_all(HashMap::new()).unwrap().is_empty());
    }
}
