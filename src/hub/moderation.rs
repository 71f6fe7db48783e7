//! Operators (who may enter): a user who gave the operator token is marked on their `user`
//! everywhere, and may `kick`, `mute` and `ban` anyone who is not an operator. A ban is by
//! client address, so it outlives the connection: it goes in [`Bans`], which the chat door
//! reads before it lets anyone in, without asking the hub.
//!
//! The chat door checks the token (the secret never reaches the hub) and sends
//! [`Event::Promote`](super::Event::Promote); everything after that is here.
//!
//! With several servers, an operator's request about a user on another server goes to the
//! other servers (`peers`), and the server that has the user does it, as if its own operator
//! had asked: its user's `kicked` and close, the `left` and `muted` its channel gets
//! everywhere. A ban is told to every server, each of which adds it to its own table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use log::{debug, info};
use tungstenite::protocol::CloseFrame;

use super::peers::{Change, Elsewhere};
use super::{ConnId, Hub};
use crate::capacity::source_of;
use crate::connection::frame::close_frame;
use crate::protocol::{ChatError, ChatRequest, ErrorCode, Moderation, ServerFrame, encode, now_ms};

/// The close code of a user removed by an operator (kicked or banned).
pub const REMOVED: u16 = 4001;

/// How far apart two servers' clocks may be, about: a ban made on another server removes
/// those from the address who came in since it was made, by this server's clock, give or take
/// this.
const CLOCKS_APART_MS: u64 = 2_000;

/// Client addresses banned by operators, each until a `ts` (milliseconds since the epoch).
/// Shared by the hub, which bans, and every connection thread, which checks: held for a map
/// lookup at a time, never across a socket call.
#[derive(Debug, Default)]
pub struct Bans {
    until: Mutex<HashMap<IpAddr, u64>>,
}

impl Bans {
    /// Bans `address` (counted as every per-address rule counts it: an IPv6 /64 as one)
    /// until `until`; a longer ban already there stays.
    pub fn ban(&self, address: IpAddr, until: u64) {
        let now = now_ms();
        let mut bans = self.until.lock().unwrap_or_else(|e| e.into_inner());
        // Only operators ban, so the table stays small; expired bans go as new ones come.
        bans.retain(|_, ends| *ends > now);
        let ends = bans.entry(source_of(address)).or_insert(until);
        *ends = (*ends).max(until);
    }

    /// Until when `address` is banned, if it is now.
    pub fn until(&self, address: IpAddr) -> Option<u64> {
        let bans = self.until.lock().unwrap_or_else(|e| e.into_inner());
        let ends = *bans.get(&source_of(address))?;
        (ends > now_ms()).then_some(ends)
    }

    /// Every ban in force: the address (an IPv6 /64 as its first address) and until when.
    pub fn current(&self) -> Vec<(IpAddr, u64)> {
        let now = now_ms();
        let bans = self.until.lock().unwrap_or_else(|e| e.into_inner());
        let current = bans.iter().filter(|(_, ends)| **ends > now);
        current.map(|(address, ends)| (*address, *ends)).collect()
    }
}

/// Client addresses muted by operators, each until a `ts`: a mute follows the person (as the
/// address counts them) for its length, so a new connection from there starts muted. Only
/// the hub reads it.
#[derive(Debug, Default)]
pub(super) struct Mutes {
    until: HashMap<IpAddr, u64>,
}

impl Mutes {
    /// Mutes `address` until `until`, the newest mute replacing the one before; an `until`
    /// already past (0 when lifted) lifts it.
    pub(super) fn set(&mut self, address: IpAddr, until: u64) {
        let now = now_ms();
        // Only operators mute, so the table stays small; mutes that are over go as others come.
        self.until.retain(|_, ends| *ends > now);
        if until > now {
            self.until.insert(source_of(address), until);
        } else {
            self.until.remove(&source_of(address));
        }
    }

    /// Until when `address` is muted, if it is now.
    pub(super) fn until(&self, address: IpAddr) -> Option<u64> {
        let ends = *self.until.get(&source_of(address))?;
        (ends > now_ms()).then_some(ends)
    }
}

/// The `until` of a ban or mute of `minutes` from now (0: a mute lifted).
fn ends_after(minutes: u32) -> u64 {
    match minutes {
        0 => 0,
        minutes => now_ms() + u64::from(minutes) * 60_000,
    }
}

impl Hub {
    /// `conn` gave the operator token: marked as an operator from now on, and its channel told.
    pub(super) fn promote(&mut self, conn: ConnId) {
        let Some(user) = self.users.get_mut(&conn) else {
            return;
        };
        if user.operator {
            return;
        }
        user.operator = true;
        user.changed();
        self.tell_operator(conn);
    }

    /// Tells `conn`'s channel (`conn` too) that it is an operator, and the other servers.
    pub(super) fn tell_operator(&mut self, conn: ConnId) {
        let Some(user) = self.users.get(&conn) else {
            return;
        };
        info!("{:?} (conn {conn}) is an operator", user.username);
        let frame = encode(&ServerFrame::Operator {
            channel: &user.channel,
            user: user.as_ref(),
        });
        let channel = user.channel.clone();
        self.broadcast(&channel, &frame, None);
        self.announce(conn);
    }

    /// An operator's `kick`, `mute` or `ban` from `conn`.
    pub(super) fn moderate(&mut self, conn: ConnId, moderation: &Moderation) {
        let Some(by) = self.users.get(&conn) else {
            return;
        };
        if !by.operator {
            let refusal = ChatError::new(ErrorCode::Forbidden, "only operators may do that");
            self.send_to(conn, refusal.to_frame());
            return;
        }
        let id = moderation.user();
        let refusal = match self.user_with_id(id) {
            Some(target) if self.users[&target].operator => ChatError::new(
                ErrorCode::Forbidden,
                "operators cannot kick, mute or ban operators",
            ),
            Some(target) => {
                let (by, whom) = (&by.username, &self.users[&target].username);
                info!("{by:?} (conn {conn}) asks to {moderation:?} {whom:?} (conn {target})");
                self.act(target, moderation, None);
                return;
            }
            None => match self.peers.elsewhere(id) {
                Elsewhere::There(address) => {
                    info!(
                        "{:?} (conn {conn}) asks another server to {moderation:?}",
                        by.username
                    );
                    let sanction = self.sanction_at_once(moderation, address);
                    let by = &self.users[&conn];
                    self.peers.tell(Change::Moderate {
                        by,
                        moderation,
                        sanction,
                    });
                    return;
                }
                Elsewhere::Operator => ChatError::new(
                    ErrorCode::Forbidden,
                    "operators cannot kick, mute or ban operators",
                ),
                Elsewhere::Unreachable => ChatError::new(
                    ErrorCode::Unavailable,
                    "that user is on another server, which cannot be reached right now (Redis \
                     is away), so nothing was done; try again in a moment",
                ),
                Elsewhere::Nowhere => {
                    ChatError::new(ErrorCode::UnknownUser, "nobody with that id is online")
                }
            },
        };
        self.send_to(conn, refusal.to_frame());
    }

    /// A ban or mute of another server's user from `address`: in force here at once (a banned
    /// user who comes straight back here is refused, and whoever is here from that address is
    /// removed), and given back to travel with the order, which every server applies alike.
    fn sanction_at_once(
        &mut self,
        moderation: &Moderation,
        address: Option<IpAddr>,
    ) -> Option<(IpAddr, u64)> {
        let address = address?;
        let until = match moderation {
            Moderation::Kick { .. } => return None,
            Moderation::Mute { minutes, .. } => ends_after(*minutes),
            Moderation::Ban { minutes, .. } => ends_after(*minutes),
        };
        self.sanctioned(moderation, address, until);
        Some((address, until))
    }

    /// Applies to everyone here from `address` the ban or mute until `until` an operator made
    /// (here or on another server), as every server does.
    fn sanctioned(&mut self, moderation: &Moderation, address: IpAddr, until: u64) {
        match moderation {
            Moderation::Kick { .. } => {}
            Moderation::Mute { .. } => self.address_muted(address, until),
            Moderation::Ban { minutes, .. } => {
                let made = until.saturating_sub(u64::from(*minutes) * 60_000);
                self.ban_here(address, until, made);
            }
        }
    }

    /// `address` is muted until `until` (0: lifted), here or on another server: whoever
    /// connects from there meanwhile starts muted, and a lift frees everyone here from there.
    pub(super) fn address_muted(&mut self, address: IpAddr, until: u64) {
        self.mutes.set(address, until);
        if until > now_ms() {
            return;
        }
        let source = source_of(address);
        for user in self.users.values_mut() {
            if source_of(user.address) == source {
                user.muted_until = None;
            }
        }
    }

    /// An operator on another server (`by`: their id) asks for `moderation`: done if the user
    /// is here and no operator. (That server refused it already if it knew them to be one; a
    /// user who left or became one meanwhile is skipped, as a request that came too late.)
    /// `sanction`: the address banned or muted with the order, and until when, which holds
    /// here whether or not the user is.
    pub(super) fn moderated_elsewhere(
        &mut self,
        by: &str,
        moderation: &Moderation,
        sanction: Option<(IpAddr, u64)>,
    ) {
        if let Some(target) = self.user_with_id(moderation.user()) {
            let whom = &self.users[&target].username;
            if self.users[&target].operator {
                debug!("{moderation:?} of operator {whom:?} from another server: not done");
            } else {
                info!(
                    "an operator on another server ({by}) asks to {moderation:?} {whom:?} \
                     (conn {target})"
                );
                self.act(target, moderation, sanction.map(|(_, until)| until));
            }
        }
        if let Some((address, until)) = sanction {
            self.sanctioned(moderation, address, until);
        }
    }

    /// The connection of this server's user with this id.
    fn user_with_id(&self, id: &str) -> Option<ConnId> {
        self.users.iter().find(|(_, u)| u.id == id).map(|(c, _)| *c)
    }

    /// Does what `moderation` asks to `target`, whom nothing protects. `agreed`: the `until`
    /// of a ban or mute the operator's server set, already in Redis (none: this server sets
    /// it and tells the others).
    fn act(&mut self, target: ConnId, moderation: &Moderation, agreed: Option<u64>) {
        match moderation {
            Moderation::Kick { reason, .. } => self.kick(target, reason.as_deref(), None),
            Moderation::Mute { minutes, .. } => {
                self.mute(target, agreed.unwrap_or_else(|| ends_after(*minutes)));
            }
            Moderation::Ban {
                minutes, reason, ..
            } => {
                let until = agreed.unwrap_or_else(|| ends_after(*minutes));
                let address = self.users[&target].address;
                self.bans.ban(address, until);
                if agreed.is_none() {
                    self.peers.tell(Change::Banned { address, until });
                }
                self.kick(target, reason.as_deref(), Some(until));
                self.ban_here(address, until, now_ms());
            }
        }
    }

    /// `address` is banned until `until` (here, or told by another server, `made` then): in
    /// the table the doors read. Those here from that address who came in since it was made
    /// (give or take the servers' clocks) are removed as the banned user was (`kicked` with
    /// the `until`, a close with 4001): the door would have refused them had it known. Those
    /// in before stay, as a ban on one server leaves them, and so do operators.
    pub(super) fn ban_here(&mut self, address: IpAddr, until: u64, made: u64) {
        self.bans.ban(address, until);
        let Some(until) = self.bans.until(address) else {
            return; // over already
        };
        let (source, since) = (source_of(address), made.saturating_sub(CLOCKS_APART_MS));
        let there: Vec<ConnId> = (self.users.iter())
            .filter(|(_, u)| !u.operator && u.arrived >= since && source_of(u.address) == source)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in there {
            self.kick(conn, None, Some(until));
        }
    }

    /// What operators did to `conn`'s address holds for it, just admitted: removed if it was
    /// banned while the connection came in (after the door's look, before the hub had it);
    /// muted if it is muted, as a mute follows the person.
    pub(super) fn sanctions_on_arrival(&mut self, conn: ConnId) {
        let Some(user) = self.users.get_mut(&conn).filter(|u| !u.operator) else {
            return;
        };
        if let Some(until) = self.bans.until(user.address) {
            self.kick(conn, None, Some(until));
        } else if let Some(until) = self.mutes.until(user.address) {
            user.muted_until = Some(until);
            // Told as any mute is, so that a page shows it before anything is refused.
            self.tell_muted(conn, until);
        }
    }

    /// Tells `conn`'s channel, `conn` too, that it is muted until `until` (0: no longer).
    fn tell_muted(&mut self, conn: ConnId, until: u64) {
        let Some(user) = self.users.get(&conn) else {
            return;
        };
        let frame = encode(&ServerFrame::Muted {
            channel: &user.channel,
            user: user.as_ref(),
            until,
        });
        let channel = user.channel.clone();
        self.broadcast(&channel, &frame, None);
    }

    /// Removes `target`: `kicked` (with `until` for a ban), a close with 4001, and its channel
    /// gets `left` with `"kicked":true`. Its thread ends when the client answers the close, or
    /// at its next ping if it never does (see `doors/chat.rs`).
    fn kick(&mut self, target: ConnId, reason: Option<&str>, until: Option<u64>) {
        let Some(user) = self.users.get_mut(&target) else {
            return;
        };
        user.kicked = true;
        self.send_to(target, encode(&ServerFrame::Kicked { reason, until }));
        let close = close_frame(Some(CloseFrame {
            code: REMOVED.into(),
            reason: "removed by an operator".into(),
        }));
        self.close_after_owed(target, close);
        let why = match until {
            Some(_) => "banned by an operator",
            None => "kicked by an operator",
        };
        self.remove_user(target, why);
    }

    /// Mutes `target` until `until` (0 lifts it), and its address with it (a new connection
    /// from there starts muted), and tells its channel, `target` too.
    fn mute(&mut self, target: ConnId, until: u64) {
        let Some(user) = self.users.get_mut(&target) else {
            return;
        };
        user.muted_until = (until > 0).then_some(until);
        let address = user.address;
        self.address_muted(address, until);
        self.tell_muted(target, until);
        self.peers.tell(Change::Muted(&self.users[&target]));
    }

    /// Refuses a muted user's `message`, `typing` and `state` with `muted`; true if it did.
    pub(super) fn refused_for_mute(&mut self, conn: ConnId, request: &ChatRequest) -> bool {
        let speaks = matches!(
            request,
            ChatRequest::Message { .. } | ChatRequest::Typing { .. } | ChatRequest::State { .. }
        );
        let Some(user) = self.users.get_mut(&conn).filter(|_| speaks) else {
            return false;
        };
        let Some(until) = user.muted_until else {
            return false;
        };
        let now = now_ms();
        if until <= now {
            user.muted_until = None; // over: nobody is told, the `muted` frame said when
            return false;
        }
        let minutes = (until - now).div_ceil(60_000);
        let refusal = ChatError::new(
            ErrorCode::Muted,
            format!("an operator muted you: {minutes} more minute(s)"),
        );
        self.send_to(conn, refusal.to_frame());
        true
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Instant;

    use serde_json::{Value, json};

    use super::*;
    use crate::connection::frame::close_code;
    use crate::connection::{Outbound, Outbox, QueuedFrames};
    use crate::hub::Event;
    use crate::protocol::parse_request;

    /// A user as the hub's tests see one: its connection, and what the hub queued for it.
    struct Seat {
        conn: ConnId,
        inbox: QueuedFrames,
    }

    impl Seat {
        /// Every frame queued since the last look, as JSON (a close as `{"close": code}`).
        fn frames(&self) -> Vec<Value> {
            let mut frames = Vec::new();
            while let Some(item) = self.inbox.take() {
                match item {
                    Outbound::Frame(bytes) => {
                        let mut rest = &bytes[..];
                        while !rest.is_empty() {
                            let (len, start) = match rest[1] {
                                126 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
                                n => (usize::from(n), 2),
                            };
                            frames.push(serde_json::from_slice(&rest[start..start + len]).unwrap());
                            rest = &rest[start + len..];
                        }
                    }
                    Outbound::Close(close) => frames.push(json!({"close": close_code(&close)})),
                    Outbound::Finish(_) => unreachable!("no socket, no fast path"),
                }
            }
            frames
        }

        fn of_type(&self, kind: &str) -> Vec<Value> {
            self.frames()
                .into_iter()
                .filter(|f| f["type"] == kind)
                .collect()
        }
    }

    struct Room {
        hub: Hub,
        next: ConnId,
    }

    impl Room {
        fn new() -> Room {
            Room {
                hub: Hub::new(None),
                next: 1,
            }
        }

        fn enter(&mut self, name: &str, host: u8, operator: bool) -> Seat {
            let (outbox, inbox) = Outbox::detached();
            let conn = self.next;
            self.next += 1;
            self.hub.handle(Event::Connect {
                conn,
                outbox,
                username: Some(name.to_owned()),
                channel: None,
                address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, host)),
                operator,
            });
            Seat { conn, inbox }
        }

        fn send(&mut self, seat: &Seat, json: Value) {
            let request = parse_request(&json.to_string()).expect("a valid request");
            let received = Instant::now();
            let conn = seat.conn;
            self.hub.handle(Event::Request {
                conn,
                request,
                received,
            });
            self.hub.check_invariants().unwrap();
        }

        fn id(&self, seat: &Seat) -> String {
            self.hub.users[&seat.conn].id.clone()
        }
    }

    /// A room with an operator, Ada, and Bob, whose id is given; their frames so far read.
    fn ada_and_bob() -> (Room, Seat, Seat, String) {
        let mut room = Room::new();
        let ada = room.enter("Ada", 1, true);
        let bob = room.enter("Bob", 2, false);
        let bob_id = room.id(&bob);
        ada.frames();
        bob.frames();
        (room, ada, bob, bob_id)
    }

    #[test]
    fn operators_an_operator_is_marked_wherever_their_user_appears() {
        let mut room = Room::new();
        let ada = room.enter("Ada", 1, false);
        let bob = room.enter("Bob", 2, false);
        ada.frames();
        bob.frames();
        room.hub.handle(Event::Promote { conn: ada.conn });
        room.hub.check_invariants().unwrap();
        for seat in [&ada, &bob] {
            let told = seat.of_type("operator");
            assert_eq!(told.len(), 1, "the whole channel, Ada too");
            assert_eq!(told[0]["user"]["operator"], true);
            assert_eq!(told[0]["channel"], "general");
        }
        room.send(&ada, json!({"type": "message", "text": "hi"}));
        assert_eq!(bob.of_type("message")[0]["user"]["operator"], true);
        let carl = room.enter("Carl", 3, false);
        let welcome = &carl.of_type("welcome")[0];
        let listed = welcome["users"].as_array().unwrap();
        let ada_listed = listed.iter().find(|u| u["username"] == "Ada").unwrap();
        assert_eq!(ada_listed["operator"], true);
        let bob_listed = listed.iter().find(|u| u["username"] == "Bob").unwrap();
        assert!(bob_listed.get("operator").is_none(), "absent means not one");
        assert_eq!(welcome["history"][0]["user"]["operator"], true);
        // Arriving with the token already (in the locked room's hello): marked from the start.
        let dee = room.enter("Dee", 4, true);
        let frames = dee.frames();
        assert_eq!(frames[0]["user"]["operator"], true, "in the welcome");
        assert_eq!(frames[1]["type"], "operator");
        assert_eq!(bob.of_type("joined")[1]["user"]["operator"], true);
    }

    #[test]
    fn operators_only_operators_act_and_never_on_operators() {
        let mut room = Room::new();
        let ada = room.enter("Ada", 1, true);
        let bob = room.enter("Bob", 2, false);
        let dee = room.enter("Dee", 3, true);
        let (ada_id, bob_id, dee_id) = (room.id(&ada), room.id(&bob), room.id(&dee));
        ada.frames();
        bob.frames();
        room.send(&bob, json!({"type": "kick", "user": ada_id}));
        room.send(&bob, json!({"type": "mute", "user": bob_id, "minutes": 5}));
        let codes: Vec<Value> = bob
            .of_type("error")
            .iter()
            .map(|e| e["code"].clone())
            .collect();
        assert_eq!(codes, ["forbidden", "forbidden"]);
        room.send(&ada, json!({"type": "ban", "user": dee_id, "minutes": 5}));
        room.send(&ada, json!({"type": "mute", "user": ada_id, "minutes": 5}));
        let unknown = "00000000-0000-4000-8000-000000000000";
        room.send(&ada, json!({"type": "kick", "user": unknown}));
        let codes: Vec<Value> = ada
            .of_type("error")
            .iter()
            .map(|e| e["code"].clone())
            .collect();
        assert_eq!(codes, ["forbidden", "forbidden", "unknown_user"]);
        assert_eq!(room.hub.users.len(), 3, "nobody was removed");
        assert!(
            room.hub
                .bans
                .until(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3)))
                .is_none()
        );
    }

    #[test]
    fn operators_a_kick_is_kicked_then_4001_and_the_channel_hears_left_kicked() {
        let (mut room, ada, bob, bob_id) = ada_and_bob();
        room.send(
            &ada,
            json!({"type": "kick", "user": bob_id, "reason": "spam"}),
        );
        let frames = bob.frames();
        assert_eq!(frames[0], json!({"type": "kicked", "reason": "spam"}));
        assert_eq!(frames[1], json!({"close": REMOVED}));
        assert_eq!(frames.len(), 2, "nothing after the close");
        let left = &ada.of_type("left")[0];
        assert_eq!(left["kicked"], true);
        assert_eq!(left["user"]["username"], "Bob");
        assert!(!room.hub.users.contains_key(&bob.conn));
        assert!(
            room.hub.holder_of("Bob").is_none(),
            "the name is free again"
        );
        // What the kicked client still sends is moot.
        let conn = bob.conn;
        let request = parse_request(r#"{"type":"message","text":"still here"}"#).unwrap();
        let received = Instant::now();
        room.hub.handle(Event::Request {
            conn,
            request,
            received,
        });
        assert!(ada.of_type("message").is_empty());
        // Someone who leaves on their own is no `kicked`.
        let carl = room.enter("Carl", 3, false);
        room.hub.handle(Event::Disconnect {
            conn: carl.conn,
            close: None,
        });
        assert!(ada.of_type("left")[0].get("kicked").is_none());
    }

    #[test]
    fn operators_a_muted_user_may_not_speak_type_or_move_the_cursor_until_lifted() {
        let (mut room, ada, bob, bob_id) = ada_and_bob();
        let before = now_ms();
        room.send(&ada, json!({"type": "mute", "user": bob_id, "minutes": 10}));
        for seat in [&ada, &bob] {
            let muted = &seat.of_type("muted")[0];
            assert_eq!(muted["user"]["id"], bob_id);
            let until = muted["until"].as_u64().unwrap();
            assert!(
                (before + 600_000..=now_ms() + 600_000).contains(&until),
                "{muted}"
            );
        }
        room.send(&bob, json!({"type": "message", "text": "hi"}));
        room.send(&bob, json!({"type": "typing", "typing": true}));
        room.send(&bob, json!({"type": "state", "state": {"x": 1}}));
        room.send(&bob, json!({"type": "username", "username": "Robert"}));
        let frames = bob.frames();
        let errors: Vec<&Value> = frames.iter().filter(|f| f["type"] == "error").collect();
        assert_eq!(errors.len(), 3);
        assert!(errors.iter().all(|e| e["code"] == "muted"));
        assert_eq!(
            frames.last().unwrap()["type"],
            "renamed",
            "renaming is not speaking"
        );
        assert!(ada.frames().iter().all(|f| f["type"] == "renamed"));
        room.send(&ada, json!({"type": "mute", "user": bob_id, "minutes": 0}));
        assert_eq!(bob.of_type("muted")[0]["until"], 0);
        room.send(&bob, json!({"type": "message", "text": "back"}));
        assert_eq!(ada.of_type("message")[0]["text"], "back");
        // A mute that has run out lets them speak again, without a word from anyone.
        room.send(&ada, json!({"type": "mute", "user": bob_id, "minutes": 1}));
        room.hub.users.get_mut(&bob.conn).unwrap().muted_until = Some(now_ms() - 1);
        ada.frames();
        room.send(&bob, json!({"type": "message", "text": "free"}));
        assert_eq!(ada.of_type("message")[0]["text"], "free");
    }

    #[test]
    fn operators_a_ban_kicks_and_bans_the_address_for_its_minutes() {
        let (mut room, ada, bob, bob_id) = ada_and_bob();
        let before = now_ms();
        room.send(&ada, json!({"type": "ban", "user": bob_id, "minutes": 60}));
        let frames = bob.frames();
        assert_eq!(frames[0]["type"], "kicked");
        let until = frames[0]["until"].as_u64().unwrap();
        assert!(until >= before + 3_600_000 && until <= now_ms() + 3_600_000);
        assert_eq!(frames[1], json!({"close": REMOVED}));
        let bobs = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(room.hub.bans.until(bobs), Some(until));
        assert_eq!(
            room.hub.bans.until(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            None
        );
        assert_eq!(ada.of_type("left")[0]["kicked"], true);
    }

    #[test]
    fn operators_bans_end_and_count_an_ipv6_client_by_its_64() {
        let bans = Bans::default();
        let v6: IpAddr = "2001:db8:1:2::7".parse().unwrap();
        bans.ban(v6, now_ms() + 60_000);
        assert!(
            bans.until("2001:db8:1:2:ffff::1".parse().unwrap())
                .is_some()
        );
        assert!(bans.until("2001:db8:1:3::7".parse().unwrap()).is_none());
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
        bans.ban(v4, now_ms() - 1);
        assert!(bans.until(v4).is_none(), "over");
        bans.ban(v4, now_ms() + 60_000);
        bans.ban(v4, now_ms() + 1_000);
        assert!(
            bans.until(v4).unwrap() > now_ms() + 30_000,
            "a shorter ban never shortens one"
        );
    }

    #[test]
    fn operators_a_mute_follows_the_address_to_a_new_connection_until_lifted() {
        let (mut room, ada, bob, bob_id) = ada_and_bob();
        room.send(&ada, json!({"type": "mute", "user": bob_id, "minutes": 60}));
        room.hub.handle(Event::Disconnect {
            conn: bob.conn,
            close: None,
        });
        // Bob again, from the same address, and someone from another.
        let again = room.enter("Bob", 2, false);
        let carl = room.enter("Carl", 3, false);
        again.frames();
        carl.frames();
        for request in [
            json!({"type": "message", "text": "it's me again"}),
            json!({"type": "typing", "typing": true}),
            json!({"type": "state", "state": {"x": 1}}),
        ] {
            room.send(&again, request);
            assert_eq!(again.of_type("error")[0]["code"], "muted");
        }
        room.send(&carl, json!({"type": "message", "text": "not me"}));
        assert!(carl.of_type("error").is_empty());
        // Lifting the mute of the new connection lifts it for the address.
        let again_id = room.id(&again);
        room.send(
            &ada,
            json!({"type": "mute", "user": again_id, "minutes": 0}),
        );
        room.send(&again, json!({"type": "message", "text": "free"}));
        assert_eq!(ada.of_type("message").last().unwrap()["text"], "free");
    }

    #[test]
    fn operators_a_ban_removes_those_from_the_address_who_came_in_since_it_was_made() {
        let mut room = Room::new();
        let ada = room.enter("Ada", 2, true);
        let bob = room.enter("Bob", 2, false);
        let before = room.enter("Before", 2, false);
        let twin = room.enter("Twin", 2, false);
        let carl = room.enter("Carl", 3, false);
        let bob_id = room.id(&bob);
        // In long before the ban: stays (a shared address is not one person).
        room.hub.users.get_mut(&before.conn).unwrap().arrived -= 60_000;
        before.frames();
        twin.frames();
        carl.frames();
        room.send(&ada, json!({"type": "ban", "user": bob_id, "minutes": 60}));
        let frames = twin.frames();
        let kicked = frames.iter().position(|f| f["type"] == "kicked").unwrap();
        assert!(frames[kicked]["until"].as_u64().is_some());
        assert_eq!(frames[kicked + 1], json!({"close": REMOVED}));
        assert!(!room.hub.users.contains_key(&bob.conn));
        assert!(!room.hub.users.contains_key(&twin.conn));
        assert!(room.hub.users.contains_key(&ada.conn), "an operator stays");
        assert!(
            room.hub.users.contains_key(&before.conn),
            "in before the ban"
        );
        assert!(before.of_type("kicked").is_empty());
        assert!(room.hub.users.contains_key(&carl.conn));
        assert!(carl.of_type("kicked").is_empty());
        // One who got past the door before the ban, and reaches the hub after it: out too.
        let late = room.enter("Late", 2, false);
        let frames = late.frames();
        assert!(frames.iter().any(|f| f["type"] == "kicked"), "{frames:?}");
        assert!(!room.hub.users.contains_key(&late.conn));
    }
}
