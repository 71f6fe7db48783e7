//! What the hub counts for `GET /metrics` (operating it): published into the shared
//! [`Metrics`](crate::metrics::Metrics) as atomics after every batch, so that a scrape reads
//! them without asking the hub, and the hub never waits for a scrape.

use std::time::Instant;

use super::Hub;

impl Hub {
    /// A message that arrived at `received` is being fanned out in this batch.
    pub(super) fn fanning_out(&mut self, received: Instant) {
        self.arrivals.push(received);
    }

    /// The batch is written out: every message fanned out in it has reached its last
    /// recipient's outbox (written to its socket, or queued for its writer), which ends its
    /// `cyberchat_delivery_seconds`; and the table's figures are published. Called once a
    /// batch, where delivery completes: if delivery changes, this call moves with it.
    pub(super) fn fanned_out(&mut self) {
        if !self.arrivals.is_empty() {
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
