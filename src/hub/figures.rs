//! What the hub counts for `GET /metrics` (operating it): published into the shared
//! [`Metrics`](crate::metrics::Metrics) as atomics after every round of writes, so that a
//! scrape reads them without asking the hub, and the hub never waits for a scrape.

use std::time::Instant;

use super::Hub;

impl Hub {
    /// A message that arrived at `received` is being fanned out in `channel`, which was just
    /// woken for it: it has reached every member that keeps up once the pass that serves it
    /// is over (the one just begun, or the one to follow the pass under way).
    pub(super) fn fanning_out(&mut self, channel: &str, received: Instant) {
        if let Some(ch) = self.channels.get_mut(channel) {
            let pass = ch.turn.passes + 1 + u64::from(ch.turn.again);
            ch.arrivals.push((pass, received));
        }
    }

    /// A pass over `channel` is over: each message it served has reached each recipient that
    /// keeps up (written to its socket, or queued behind a frame it is taking), which ends
    /// its `cyberchat_delivery_seconds`. A member parked at its cursor does not hold the
    /// figure back: it is not keeping up. Counted per channel, so that a crowded channel's
    /// endless passes do not make a quiet channel's messages look late. Called where a pass
    /// ends: if delivery changes, this call moves with it.
    pub(super) fn delivered(&mut self, channel: &str) {
        let Some(ch) = self.channels.get_mut(channel) else {
            return;
        };
        let passes = ch.turn.passes;
        if ch.arrivals.first().is_none_or(|(pass, _)| *pass > passes) {
            return;
        }
        let done = Instant::now();
        let metrics = &self.metrics;
        ch.arrivals.retain(|(pass, received)| {
            let served = *pass <= passes;
            if served {
                metrics.observe_delivery(done.saturating_duration_since(*received));
            }
            !served
        });
    }

    /// The hub has played its rounds and publishes its figures.
    pub(super) fn publish_figures(&mut self) {
        self.metrics
            .set_table(self.users.len(), self.channels.len(), self.messages);
        self.metrics.set_redis_up(self.peers.reached());
    }
}
