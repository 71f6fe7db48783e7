//! What people say (tutorial steps 2, 4 and 6): a chat message, numbered and kept in the
//! channel's history (on disk first, with `--data-dir`) before it is sent to everyone in the
//! channel; `typing`; and a user's live `state`.

use std::time::Instant;

use log::error;
use serde_json::{Map, Value};

use super::peers::{Change, Publish};
use super::{ConnId, Hub};
use crate::connection::frame::text_frame;
use crate::protocol::{ChatError, ErrorCode, ServerFrame, encode, now_ms};

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
        self.fanning_out(received);
    }

    /// `conn` started or stopped typing: the others in its channel are told.
    pub(super) fn typing(&mut self, conn: ConnId, typing: bool) {
        let Some(user) = self.users.get(&conn) else {
            return;
        };
        let frame = encode(&ServerFrame::Typing {
            channel: &user.channel,
            user: user.as_ref(),
            typing,
        });
        let channel = user.channel.clone();
        self.peers.tell(Change::Typing(user, typing));
        self.broadcast(&channel, &frame, Some(conn));
    }

    /// `conn` set its live state (step 6): kept on the user, listed in every `welcome`, and
    /// sent to the others in its channel.
    pub(super) fn state(&mut self, conn: ConnId, state: Map<String, Value>) {
        let Some(user) = self.users.get_mut(&conn) else {
            return;
        };
        user.state = state;
        user.relist();
        let frame = encode(&ServerFrame::State {
            channel: &user.channel,
            user: user.as_ref(),
            state: &user.state,
        });
        let channel = user.channel.clone();
        self.broadcast(&channel, &frame, Some(conn));
        self.announce(conn);
    }
}
