//! The several-servers side of the hub (`--redis`): the channels' histories. A channel's
//! history is read from Redis once, when someone here first needs it (a `welcome`), and then
//! kept current from the stream, message by message, so that a crowd joining and leaving costs
//! Redis nothing more. Messages, every server's this one's included, are delivered here once
//! Redis has ordered them. When the reader finds that the stream lost messages before this
//! server read them, the histories of the channels with members here are read again, and
//! those members shown what they missed: a `welcome` again, with `"resync": true`.

use log::{info, warn};
use serde_json::value::RawValue;

use crate::connection::ConnId;
use crate::connection::frame::text_frame;
use crate::history::HISTORY_LEN;
use crate::hub::Hub;

use super::port::Kept;

impl Hub {
    /// A chat message as Redis ordered it, read back from the stream (this server's own
    /// senders' too): kept, counted and delivered to this server's members of its channel. One
    /// whose id is not above the last delivered is dropped: ids must strictly increase for
    /// every client.
    pub(super) fn ordered_message(&mut self, id: u64, channel: &str, json: Box<RawValue>) {
        let Some(cluster) = self.peers.cluster_mut() else {
            return;
        };
        if id <= cluster.last_id {
            warn!(
                "message {id} in #{channel} from Redis is not above the last delivered ({}): \
                 Redis lost data; not delivered",
                cluster.last_id
            );
            return;
        }
        cluster.last_id = id;
        let frame = text_frame(json.get().as_bytes());
        // Kept where the history is whole (read, then kept current) or being read; any other
        // channel's history is read from Redis when someone here needs it.
        if cluster.read.contains(channel) && !self.histories.holds(channel) {
            cluster.read.remove(channel); // forgotten from memory meanwhile
        }
        if cluster.read.contains(channel) || cluster.recalling.contains_key(channel) {
            // No store with --redis: keeping cannot fail.
            let _ = self.histories.record(channel, id, json);
        }
        self.messages += 1;
        self.broadcast(channel, &frame, None);
    }

    /// `channel`'s history as Redis has it (or `None`: it could not be read): merged with
    /// what was kept meanwhile; then whoever waited for it enters, and, after a loss, its
    /// members are shown what they missed.
    pub(super) fn recalled(&mut self, channel: &str, history: Option<Vec<Kept>>) {
        let Some(cluster) = self.peers.cluster_mut() else {
            return;
        };
        let lost = cluster.recalling.remove(channel).flatten();
        let resync = match (&history, lost) {
            (Some(history), Some((after, before))) => missed(history, after, before),
            _ => false,
        };
        if let Some(history) = history {
            self.histories.merge(channel, history, cluster.last_id);
            cluster.read.insert(channel.to_owned());
            if cluster.read.len() > 2 * self.histories.len() + HISTORY_LEN {
                let histories = &self.histories;
                cluster.read.retain(|ch| histories.holds(ch));
            }
        }
        let arrivals: Vec<ConnId> = cluster
            .waiting
            .iter()
            .filter(|(_, w)| w.arrival.channel == channel && w.claimed.is_some())
            .map(|(conn, _)| *conn)
            .collect();
        let movers: Vec<ConnId> = cluster
            .moving
            .iter()
            .filter(|(_, ch)| *ch == channel)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in movers {
            if let Some(cluster) = self.peers.cluster_mut() {
                cluster.moving.remove(&conn);
            }
            self.move_to(conn, channel.to_owned());
            self.announce(conn);
        }
        for conn in arrivals {
            self.admit_claimed(conn);
        }
        if resync {
            self.resync(channel);
        }
    }

    /// Messages after id `after` and before `before` were lost from the stream before this
    /// server read them: the history of every channel with members here is read again (and
    /// its members shown it if they missed any of those); histories kept of other channels
    /// are read again when next needed.
    pub(super) fn lost(&mut self, after: u64, before: u64) {
        warn!(
            "messages {}..{} were trimmed from the stream before this server read them: \
             reading the histories of its channels again",
            after + 1,
            before.saturating_sub(1)
        );
        let Some(cluster) = self.peers.cluster_mut() else {
            return;
        };
        // They will never come live: the histories read now show them.
        cluster.last_id = cluster.last_id.max(before.saturating_sub(1));
        let live: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, ch)| !ch.members.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        cluster.read.retain(|ch| live.contains(ch));
        for channel in live {
            cluster.ask_history(&channel);
            cluster.recalling.insert(channel, Some((after, before)));
        }
    }

    /// Sends each member here of `channel` a `welcome` again, marked `resync`: their view of
    /// the channel is replaced by its history, which holds what they missed.
    fn resync(&mut self, channel: &str) {
        let members: Vec<ConnId> = match self.channels.get(channel) {
            Some(ch) => ch.members.iter().map(|(conn, _)| *conn).collect(),
            None => return,
        };
        info!(
            "#{channel}: {} members here are shown the messages they missed",
            members.len()
        );
        for conn in members {
            if let Some(frame) = self.welcome_frame(conn, true) {
                self.send_slices_to(conn, frame);
            }
        }
    }
}

/// Whether `history` (oldest first) shows a message of the lost ids (`after` < id <
/// `before`), or may have lost some of them off its front.
fn missed(history: &[Kept], after: u64, before: u64) -> bool {
    let shows = history.iter().any(|(id, _)| *id > after && *id < before);
    let full = history.len() >= HISTORY_LEN;
    let oldest = history.first().map_or(u64::MAX, |(id, _)| *id);
    shows || (full && oldest > after + 1)
}
