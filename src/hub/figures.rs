//! What the hub counts for `GET /metrics` (operating it): published into the shared
//! [`Metrics`](crate::metrics::Metrics) as atomics after every round of writes, so that a
//! scrape reads them without asking the hub, and the hub never waits for a scrape.

use std::time::Instant;

use super::Hub;

impl Hub {
    /// A message that arrived at `received` is being fanned out.
    pub(super) fn fanning_out(&mut self, received: Instant) {
        self.arrivals.push(received);
    }

    /// The hub has played its rounds and publishes its figures. With `written` (no channel
    /// has a member left to serve), every message fanned out so far has reached each
    /// recipient that keeps up (written to its socket, or queued behind a frame it is
    /// taking), which ends its `cyberchat_delivery_seconds`. A member parked at its cursor
    /// does not hold the figure back: it is not keeping up. Called where the rounds end: if
    /// delivery changes, this call moves with it.
    pub(super) fn fanned_out(&mut self, written: bool) {
        if written && !self.arrivals.is_empty() {
            let done = Instant::now();
            for received in self.arrivals.drain(..) {
                let took = done.saturating_duration_since(received);
                self.metrics.observe_delivery(took);
            }
        }
        self.metrics
            .set_table(self.users.len(), self.channels.len(), self.messages);
        self.metrics.set_redis_up(self.peers.reached());
    }
}
