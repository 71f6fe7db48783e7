//! What people say (tutorial steps 2, 4 and 6): a chat message, numbered and kept in the
//! channel's history (on disk first, with `--data-dir`) before it is sent to everyone in the
//! channel; `typing`; and a user's live `state`.

use log::error;
use serde_json::{Map, Value};

use super::{ClusterRequest, ConnId, Hub};
use crate::connection::frame::text_frame;
use crate::protocol::{ChatError, ErrorCode, ServerFrame, UserRef, encode, now_ms};

impl Hub {
    /// A chat message from `conn`: numbered, kept, then sent to everyone in its channel, the
    /// sender included.
    pub(super) fn message(&mut self, conn: ConnId, text: &str) {
        if self.cluster.is_some() {
            self.publish(conn, text);
            return;
        }
        let user = &self.users[&conn];
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
    }

    /// With `--redis`: the message goes to Redis to be numbered, and is delivered when it
    /// comes back ([`Hub::remote_message`]); refused if Redis is away or far behind.
    fn publish(&mut self, conn: ConnId, text: &str) {
        let user = &self.users[&conn];
        let cluster = self.cluster.as_ref().expect("caller checked");
        if !cluster.up || cluster.link.congested() {
            let refusal = ChatError::new(
                ErrorCode::Unavailable,
                "the chat cannot order messages right now (Redis is away or slow), so yours \
                 was not sent; try again in a moment",
            );
            self.send_to(conn, refusal.to_frame());
            return;
        }
        // The frame after its id, in the order `ServerFrame::Message` has: the script puts
        // `{"type":"message","id":N,` in front.
        let tail = serde_json::to_string(&Tail {
            channel: &user.channel,
            user: user.as_ref(),
            text,
            ts: now_ms(),
        })
        .expect("frames always serialize");
        cluster.link.send(ClusterRequest::Publish {
            conn,
            channel: user.channel.clone(),
            tail: tail[1..].to_owned(),
            floor: cluster.last_id,
        });
    }

    /// `conn` started or stopped typing: the others in its channel are told.
    pub(super) fn typing(&mut self, conn: ConnId, typing: bool) {
        let user = &self.users[&conn];
        let frame = encode(&ServerFrame::Typing {
            channel: &user.channel,
            user: user.as_ref(),
            typing,
        });
        let channel = user.channel.clone();
        if let Some(link) = self.up_link().filter(|link| !link.congested()) {
            let who = serde_json::to_string(&user.as_ref()).expect("users serialize");
            link.send(ClusterRequest::Typing {
                channel: channel.clone(),
                user: who,
                typing,
            });
        }
        self.broadcast(&channel, &frame, Some(conn));
    }

    /// `conn` set its live state (step 6): kept on the user, listed in every `welcome`, and
    /// sent to the others in its channel.
    pub(super) fn state(&mut self, conn: ConnId, state: Map<String, Value>) {
        let user = self.users.get_mut(&conn).expect("caller checked");
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

/// A `message` frame without its type and id.
#[derive(serde::Serialize)]
struct Tail<'a> {
    channel: &'a str,
    user: UserRef<'a>,
    text: &'a str,
    ts: u64,
}
