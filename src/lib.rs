//! # Cyber Chat
//!
//! A WebSocket chat server with one thread per connection, built to be read. Each module is
//! one idea of the tutorial (see the README):
//!
//! | step | idea | module |
//! |---|---|---|
//! | 0 | the handshake: HTTP, `Sec-WebSocket-Key`, `101` | [`http`] |
//! | 1 | an echo server | [`echo`] |
//! | 2 | broadcast: a hub, per-client queues, a reader and a writer | [`hub`], [`outbox`], [`connection`] |
//! | 3–6 | names, presence, history and channels, live state | [`hub`], [`protocol`], [`chat`] |
//! | 7 | hardening: origins, limits, keepalive, budgets, shutdown | [`http`], [`connection`], [`limits`], [`budget`], [`server`] |
//! | — | history on disk | [`history`] |
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

pub mod budget;
pub mod chat;
pub mod config;
pub mod connection;
pub mod echo;
pub mod history;
pub mod http;
pub mod hub;
pub mod limits;
pub mod outbox;
pub mod protocol;
pub mod server;
pub mod throttle;

pub use config::{Command, Config};
pub use server::Server;
