//! Several servers, one chat (`--redis URL`): what the servers share through Redis, and how.
//!
//! This is the one place the design is explained; the files below each do one part of it.
//!
//! **Streams, not Pub/Sub.** Everything that must reach the other servers is an entry of a
//! Redis stream: chat messages in `<p>:msgs`, everything else (presence, typing) in
//! `<p>:events` (`<p>` is `--redis-prefix`, `cyberchat` by default). A stream has ordered ids
//! and can be read again from any of them, so a server that lost its connection, or fell
//! behind, reads on from the last entry it saw and misses nothing; Pub/Sub drops what is
//! published while a subscriber reconnects. Messages have a stream of their own so that a
//! crowd's cursors cannot push them out: `<p>:msgs` keeps about [`MESSAGES_KEPT`] of them, and
//! that is how far behind a server may fall and still deliver every one.
//!
//! **A message is numbered by Redis, and delivered only once it comes back.** The hub hands a
//! chat message to the *publisher* thread, which runs one Lua script, atomically: check the
//! epoch and the fence (below), `INCR <p>:id` (but never to or below the highest id this
//! server has seen: the floor it passes), `XADD <p>:history:<channel> MAXLEN 100` and
//! `XADD <p>:msgs`. Every server's *reader* thread reads both streams with `XREAD BLOCK` on a
//! connection of its own and hands each entry to its hub as an event; the hub delivers a
//! message to its local members then, and never at send time. So every server delivers one
//! channel's messages in the stream's order, which is the id order, and the ids strictly
//! increase across the cluster.
//!
//! **Nothing accepted is lost.** Each message entry names the id of the message before it, and
//! each presence entry is numbered (`<p>:evn`), so the reader sees a gap at the first entry
//! after one. Presence says what is, so a gap in it costs only a new view of every server's
//! users. A gap in messages means the server fell more than [`MESSAGES_KEPT`] messages behind:
//! it tells the hub ([`ClusterEvent::Lost`](crate::hub::port::ClusterEvent::Lost)), which reads
//! again the history of each channel it has members in and sends those members a `welcome`
//! marked `"resync": true` when they missed any of the lost messages: what they were shown is
//! replaced by the channel's last 100 messages. A server never goes silent about a loss.
//!
//! **Refused means refused.** A message is answered `unavailable` only when it never ran and
//! never will: refused by the hub before it was sent (Redis away, or the messages waiting for
//! it over their budget), or refused by its script. When Redis does not answer in time, what
//! it holds of the pipeline may still run later (a hung Redis runs what waited in its sockets
//! when it wakes; a stalled link delivers it late), so those messages get no answer yet. Each
//! connection of the publisher has a *fence* (`<p>:fence:<server>`, a number greater than the
//! one before), every message carries it and a number of its own, and the script runs a
//! message only under the current fence, noting its number. The next connection's first
//! script sets a new fence, after which none of the old messages can run any more, and says
//! which of them ran: those come back through the stream like any other, and the others are
//! refused then. So a client can trust each answer: its own `message` back means delivered
//! everywhere, `unavailable` means delivered nowhere, ever; and no answer yet means Redis has
//! not said (it comes when Redis is back).
//!
//! **Nothing waits without bound.** The hub never waits on Redis, and what it hands the
//! cluster threads is kept small (`hub/peers/link.rs`): messages within a byte budget (past it
//! they are refused), and of each user only what still matters (the newest record, rename and
//! typing), so a crowd's cursors cost a record per user however fast they move, and a Redis
//! that hangs costs bounded memory. Each round trip carries every message waiting first, so
//! presence never stands in front of a message, and nothing queued while Redis hung delays
//! the first message after it. A channel's history is read by a thread of its own (once per
//! channel, however many wait for it), and once read it is kept current from the stream, so
//! a crowd hopping between channels does not read it again.
//!
//! **Presence is a hash per server plus deltas in the stream.** Each server keeps its users in
//! `<p>:users:<server>` (user id → `{id, username, key, channel, state}`), changed by the same
//! scripts that append the change to `<p>:events`: `up` (a user connected, moved, renamed or
//! set a state), `rm` (left), `sync` (all of a server's users, after it (re)joined) and `gone`
//! (a server's users are all gone). Each hub keeps a view of the other servers' users, built
//! from the hashes when its reader starts (one atomic script returns them with the streams'
//! positions) and kept current by the entries, and answers `users`, `count`, `online` and
//! `/stats` from its own users plus that view. A change is told to each server's *own*
//! members by that server, so a client hears each `joined`/`left` once; replaying an entry
//! changes nothing, as each entry says what is, not what to add.
//!
//! **Dead servers.** Each server's *heartbeat* thread, on a connection of its own and waiting
//! on nothing else, refreshes `<p>:alive:<server>` (TTL [`ALIVE_TTL`]) every
//! [`HEARTBEAT_EVERY`]; the same script removes, for every server in `<p>:servers` whose key
//! has expired, its users and names, and appends `gone`. So a server killed with `kill -9` is
//! out of everyone's presence within [`PRESENCE_BOUND`], and a server busy with legal load is
//! never taken for dead. When no server at all could beat for half the TTL (Redis itself hung,
//! or was cut off from everyone), nobody is removed for one TTL after it is back: each server
//! gets the time to beat again. A server that finds itself removed (it was cut off from Redis
//! longer than the TTL) registers its users again: nothing stale comes back, only users who are
//! really connected.
//!
//! **Names** are claimed in `<p>:names` (folded name → `<server> <user id>`, `HSETNX`), by the
//! script that also registers the user, and released by the one that removes them (or by the
//! dead server's clean-up). The hub never waits for Redis, so connecting and renaming have two
//! phases: the hub asks, the answer comes back as an event, and only then is the `welcome` (or
//! the `renamed`) sent. A connect offers the script its candidates in order (the query's name,
//! then guest names), and the first free one wins. A rename Redis fails to check is refused.
//!
//! **Redis going away.** The publisher's failures reach the hub as [`ClusterEvent::Down`](crate::hub::port::ClusterEvent::Down): then
//! messages are refused with `unavailable`, and the rest is served locally (connect, join,
//! rename, typing and state among this server's own users, names unique among the names this
//! server knows). When Redis is back ([`ClusterEvent::Up`](crate::hub::port::ClusterEvent::Up)) the hub registers every user again
//! (a name taken meanwhile on another server is lost to a guest name, with `username_taken`),
//! and messages are accepted again at once; the reader reads on from where it was.
//!
//! **Redis losing its data.** `<p>:epoch` holds a random value set by the first server to
//! connect. Every script checks it, and the heartbeat too; a missing or changed epoch means
//! Redis restarted empty (or was flushed). The publisher then sets the id counter to at least
//! the highest id this server has seen (so ids go on increasing), registers the server and its
//! users again, and the reader takes a new view and reads the new streams from their start.
//! Each hub also drops any message whose id is not above the last it delivered, so its clients
//! see ids strictly increase whatever Redis does. A message whose answer was lost in the same
//! moment cannot be settled (its fence went with the data) and is refused.
//!
//! | file | what |
//! |---|---|
//! | this file | the design |
//! | `src/hub/peers/port.rs` | the requests the hub makes and the events it gets back |
//! | `src/hub/peers/link.rs` | what waits for the publisher: coalesced, within a budget |
//! | `redis/mod.rs` | starting the threads; keys; connections |
//! | `redis/scripts.rs` | the Lua scripts, each atomic |
//! | `redis/commands.rs` | which script each request runs, with which arguments |
//! | `redis/publisher.rs` | the publisher thread: requests, fences, reconnecting |
//! | `redis/heartbeat.rs` | the heartbeat thread |
//! | `redis/history.rs` | the history thread: a channel's last messages, on request |
//! | `redis/reader.rs` | the reader thread: `XREAD BLOCK`, gaps, snapshots, epoch changes |
//! | `src/hub/peers.rs` | the questions the hub's steps ask of the other servers |
//! | `src/hub/peers/clustered.rs` | what the hub asks Redis, never waiting |
//! | `src/hub/peers/answers.rs` | what the hub does with each answer and stream entry |
//! | `src/hub/peers/recall.rs` | the channels' histories: read once, kept current, set right |
//! | `src/hub/peers/remote.rs` | the hub's view of the other servers' users |

#[cfg(feature = "redis")]
pub mod redis;

use std::time::Duration;

/// Messages `<p>:msgs` keeps, about (`MAXLEN ~`): how far behind a server may fall and still
/// deliver every message. Beyond it, it shows its clients the channels' histories again. At
/// 100 messages a second across the cluster, over a quarter of an hour.
pub const MESSAGES_KEPT: usize = 100_000;
/// Presence and typing entries `<p>:events` keeps, about: a server further behind takes a
/// new view of every server's users instead (presence says what is, so nothing is lost).
pub const EVENTS_KEPT: usize = 10_000;

/// How long a server's heartbeat key lives: a server silent this long is taken for dead.
pub const ALIVE_TTL: Duration = Duration::from_secs(10);
/// How often each server refreshes its heartbeat and looks for dead servers.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Within this, a dead server's users are out of every other server's presence: its key
/// expires at most [`ALIVE_TTL`] after its last refresh, and the next heartbeat of any live
/// server (at most [`HEARTBEAT_EVERY`] later) removes them; the rest is delivery. (Counted
/// from Redis being back, when Redis itself hung: see the module docs.)
pub const PRESENCE_BOUND: Duration = Duration::from_secs(12);
