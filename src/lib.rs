//! # Cyber Chat
//!
//! A WebSocket chat server with one thread per connection, built to be read. Each module is
//! one idea of the tutorial (see the README):
//!
//! | step | idea | where |
//! |---|---|---|
//! | 0 | the handshake: HTTP, `Sec-WebSocket-Key`, `101` | [`http`], [`doors`] |
//! | 1 | an echo server; frames as bytes | [`doors::echo`], [`connection::frame`] |
//! | 2 | broadcast: a hub, per-client queues, a reader and a writer | [`hub`], [`connection`] |
//! | 3 | identity: ids, names, renames | [`protocol::names`], `hub/users.rs` |
//! | 4 | presence: joined, left, typing | `hub/presence.rs` |
//! | 5 | history and channels | [`history`], `hub/channels.rs`, `hub/messages.rs` |
//! | 6 | live state | `hub/messages.rs`, [`protocol::requests`] |
//! | 7 | hardening: origins, limits, keepalive, budgets, shutdown | [`capacity`], [`doors::rate`], [`accept`], [`server`] |
//! | — | who may enter: the room code, operators, the client address behind a proxy | [`secret`], `doors/locked.rs`, `hub/moderation.rs`, [`http::forwarded`] |
//! | — | operating it: `GET /metrics` | [`metrics`] |
//! | — | the command line | [`config`] |
//!
//! ```no_run
//! use cyberchat::{Config, Server};
//!
//! let server = Server::bind(Config { port: 0, ..Config::default() })?;
//! println!("chat at ws://{}/", server.local_addr());
//! server.shutdown(); // every client gets a close frame with 1001
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod accept;
pub mod capacity;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod doors;
pub mod history;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod protocol;
pub mod secret;
pub mod server;
pub mod throttle;

pub use config::{Command, Config};
pub use server::Server;
