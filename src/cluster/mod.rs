//! Several servers, one chat (`--redis URL`): what the servers share through Redis, and how.
//!
//! This is the one place the design is explained; the files below each do one part of it.
//!
//! **Streams, not Pub/Sub.** Everything that must reach the other servers is an entry of one
//! Redis stream, `<p>:events` (`<p>` is `--redis-prefix`, `cyberchat` by default). A stream has
//! ordered ids and can be read again from any of them, so a server that lost its connection
//! reads on from the last entry it saw and misses nothing; Pub/Sub drops what is published
//! while a subscriber reconnects.
//!
//! **A message is numbered by Redis, and delivered only once it comes back.** The hub hands a
//! chat message to the *publisher* thread, which runs one Lua script, atomically: check the
//! epoch (below), `INCR <p>:id` (but never to or below the highest id this server has seen:
//! the floor it passes), `XADD <p>:history:<channel> MAXLEN 100` and `XADD <p>:events`. Every
//! server's *reader* thread reads `<p>:events` with `XREAD BLOCK` on a connection of its own
//! and hands each entry to its hub as an event; the hub delivers a message to its local
//! members then, and never at send time. So every server delivers one channel's messages in
//! the stream's order, which is the id order, and the ids strictly increase across the cluster.
//! A message that cannot be run through the script is refused with `unavailable`: a server
//! never shows a message it could not order.
//!
//! **Presence is a hash per server plus deltas in the stream.** Each server keeps its users in
//! `<p>:users:<server>` (user id → `{id, username, key, channel, state}`), changed by the same
//! scripts that append the change to the stream: `up` (a user connected, moved, renamed or set
//! a state), `rm` (left), `sync` (all of a server's users, after it (re)joined) and `gone` (a
//! server's users are all gone). Each hub keeps a view of the other servers' users, built from
//! the hashes when its reader starts (one atomic script returns them with the stream position)
//! and kept current by the entries, and answers `users`, `count`, `online` and `/stats` from
//! its own users plus that view. A change is told to each server's *own* members by that
//! server, so a client hears each `joined`/`left` once; replaying an entry changes nothing,
//! as each entry says what is, not what to add.
//!
//! **Dead servers.** Each server refreshes `<p>:alive:<server>` (TTL [`ALIVE_TTL`]) every
//! [`HEARTBEAT_EVERY`]; the same script removes, for every server in `<p>:servers` whose key has
//! expired, its users and names, and appends `gone`. So a server killed with `kill -9` is out
//! of everyone's presence within [`PRESENCE_BOUND`]. A server that finds itself removed (it
//! was cut off from Redis longer than the TTL) registers its users again: nothing stale comes
//! back, only users who are really connected.
//!
//! **Names** are claimed in `<p>:names` (folded name → `<server> <user id>`, `HSETNX`), by the
//! script that also registers the user, and released by the one that removes them (or by the
//! dead server's clean-up). The hub never waits for Redis, so connecting and renaming have two
//! phases: the hub asks, the answer comes back as an event, and only then is the `welcome` (or
//! the `renamed`) sent. A connect offers the script its candidates in order (the query's name,
//! then guest names), and the first free one wins.
//!
//! **Redis going away.** The publisher's failures reach the hub as [`ClusterEvent::Down`](crate::hub::port::ClusterEvent::Down): then
//! messages are refused with `unavailable`, and the rest is served locally (connect, join,
//! rename, typing and state among this server's own users, names unique among the names this
//! server knows). When Redis is back ([`ClusterEvent::Up`](crate::hub::port::ClusterEvent::Up)) the hub registers every user again
//! (a name taken meanwhile on another server is lost to a guest name, with `username_taken`),
//! asks again for the history of every channel it has members in, and messages are accepted
//! again; the reader resumes from the last entry it saw.
//!
//! **Redis losing its data.** `<p>:epoch` holds a random value set by the first server to
//! connect. Every script checks it, and the heartbeat too; a missing or changed epoch means
//! Redis restarted empty (or was flushed). The publisher then sets the id counter to at least
//! the highest id this server has seen (so ids go on increasing), registers the server and its
//! users again, and the reader takes a new view and reads the new stream from its start. Each
//! hub also drops any message whose id is not above the last it delivered, so its clients see
//! ids strictly increase whatever Redis does.
//!
//! | file | what |
//! |---|---|
//! | this file | the design |
//! | `src/hub/peers/port.rs` | the requests the hub makes and the events it gets back |
//! | `redis/mod.rs` | starting the threads; keys; connections |
//! | `redis/scripts.rs` | the Lua scripts, each atomic |
//! | `redis/commands.rs` | which script each request runs, with which arguments |
//! | `redis/publisher.rs` | the publisher thread: requests, heartbeats, reconnecting |
//! | `redis/reader.rs` | the reader thread: `XREAD BLOCK`, snapshots, epoch changes |
//! | `src/hub/peers.rs` | the questions the hub's steps ask of the other servers |
//! | `src/hub/peers/clustered.rs` | what the hub asks Redis, never waiting |
//! | `src/hub/peers/answers.rs` | what the hub does with each answer and stream entry |
//! | `src/hub/peers/remote.rs` | the hub's view of the other servers' users |

#[cfg(feature = "redis")]
pub mod redis;

use std::time::Duration;

/// How long a server's heartbeat key lives: a server silent this long is taken for dead.
pub const ALIVE_TTL: Duration = Duration::from_secs(10);
/// How often each server refreshes its heartbeat and looks for dead servers.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Within this, a dead server's users are out of every other server's presence: its key
/// expires at most [`ALIVE_TTL`] after its last refresh, and the next heartbeat of any live
/// server (at most [`HEARTBEAT_EVERY`] later) removes them; the rest is delivery.
pub const PRESENCE_BOUND: Duration = Duration::from_secs(12);
