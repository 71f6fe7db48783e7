//! What people say (tutorial steps 2, 4 and 6): a chat message, numbered and kept in the
//! channel's history (on disk first, with `--data-dir`) before it is sent to everyone in the
//! channel; `typing`; and a user's live `state`.

use std::time::Instant;

use log::error;

use tungstenite::Bytes;

use super::newest::Kind;
use super::peers::{Change, Publish};
use super::user::User;
use super::{ConnId, Hub};
use crate::connection::frame::text_frame;
use crate::protocol::{ChatError, ErrorCode, ServerFrame, State, encode, now_ms};

impl Hub {
    /// A chat message from `conn`, read at `received`: numbered, kept, then sent to everyone
    /// in its channel, the sender included.
    pub(super) fn message(&mut self, conn: ConnId, text: &str, received: Instant) {
        let Some(user) = self.users.get(&conn) else {
            return;
        };
        // With several servers, they number it, and every one delivers it when it comes back.
        match self.peers.publish(conn, user, text) {
            Publish::Here => {}
            Publish::Sent => return,
            Publish::Refused(refusal) => {
                self.send_to(conn, refusal.to_frame());
                return;
            }
        }
        let id = self.histories.next_id();
        let message = ServerFrame::Message {
            id,
            channel: &user.channel,
            user: user.as_ref(),
            text,
            ts: now_ms(),
        };
        // Serialized once, straight into the form history keeps; the frame and the disk line
        // are the same bytes.
        let json =
            serde_json::value::to_raw_value(&message).expect("server frames always serialize");
        let frame = text_frame(json.get().as_bytes());
        let channel = user.channel.clone();
        // On disk before anyone can see it, so a crash never loses a message that was sent; a
        // message that cannot be saved is not sent at all, and its sender is told.
        if let Err(err) = self.histories.record(&channel, id, json) {
            error!("could not save message {id} in #{channel}: {err}; not sent");
            let refusal = ChatError::new(
                ErrorCode::Unavailable,
                "the server could not save your message, so it was not sent; try again later",
            );
            self.send_to(conn, refusal.to_frame());
            return;
        }
        self.messages += 1;
        self.broadcast(&channel, &frame, None);
        self.fanning_out(&channel, received);
    }

    /// `conn` started or stopped typing: the others in its channel are told (the newest only,
    /// see `newest.rs`).
    pub(super) fn typing(&mut self, conn: ConnId, typing: bool) {
        let Some(user) = self.users.get_mut(&conn) else {
            return;
        };
        user.typing = typing;
        let channel = user.channel.clone();
        self.peers.tell(Change::Typing(&self.users[&conn], typing));
        self.mark(&channel, conn, Kind::Typing);
    }

    /// `conn` set its live state (step 6): kept on the user, listed in every `welcome`, and
    /// sent to the others in its channel (the newest only, see `newest.rs`).
    pub(super) fn state(&mut self, conn: ConnId, state: State) {
        let Some(user) = self.users.get_mut(&conn) else {
            return;
        };
        user.state = state;
        user.changed();
        let channel = user.channel.clone();
        self.mark(&channel, conn, Kind::State);
        self.announce(conn);
    }

    /// Marks `sender`'s newest frame of `kind` to be published, when the channel's pace
    /// allows.
    fn mark(&mut self, channel: &str, sender: ConnId, kind: Kind) {
        let now = self.now;
        let Some(ch) = self.channels.get_mut(channel) else {
            return;
        };
        if ch.newest.mark(sender, kind)
            && let Some(due) = ch.newest.due(ch.members.len(), self.newest_pace, now)
        {
            self.wake_at(channel, due);
        }
    }

    /// `conn` renamed: its published newest frames are made again with its new name, for
    /// whoever has not had them yet (see `newest.rs`).
    pub(super) fn republish(&mut self, conn: ConnId) {
        let Some(user) = self.users.get(&conn) else {
            return;
        };
        let Some(ch) = self.channels.get_mut(&user.channel) else {
            return;
        };
        let [state, typing] = ch.newest.published(conn);
        if state {
            ch.newest.replace(conn, Kind::State, state_frame(user));
        }
        if typing {
            ch.newest.replace(conn, Kind::Typing, typing_frame(user));
        }
    }

    /// Publishes the newest frame of every sender marked in `channel`, if its pace allows
    /// (always, when `now_anyway`): encoded here, once each, however often they changed.
    /// Returns whether it did.
    pub(super) fn publish(&mut self, channel: &str, now_anyway: bool) -> bool {
        let now = self.now;
        let Some(ch) = self.channels.get_mut(channel) else {
            return false;
        };
        match ch.newest.due(ch.members.len(), self.newest_pace, now) {
            Some(due) if due <= now || now_anyway => {}
            Some(due) => {
                self.wake_at(channel, due);
                return false;
            }
            None => return false,
        }
        let marked = ch.newest.take_pending();
        let mut frames = Vec::with_capacity(marked.len());
        for (sender, kind) in marked {
            let Some(user) = self.users.get(&sender).filter(|u| u.channel == channel) else {
                continue;
            };
            let frame = match kind {
                Kind::State => state_frame(user),
                Kind::Typing => typing_frame(user),
            };
            frames.push(((sender, kind), frame));
        }
        ch.newest.publish(frames, now);
        ch.recount_crowd(); // (the mean size of its cursors has changed)
        true
    }
}

/// `user`'s `state` frame, as it is now.
fn state_frame(user: &User) -> Bytes {
    encode(&ServerFrame::State {
        channel: &user.channel,
        user: user.as_ref(),
        state: &user.state,
    })
}

/// `user`'s `typing` frame, as it is now.
fn typing_frame(user: &User) -> Bytes {
    encode(&ServerFrame::Typing {
        channel: &user.channel,
        user: user.as_ref(),
        typing: user.typing,
    })
}
