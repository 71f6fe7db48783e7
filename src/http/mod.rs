//! The HTTP side of the one port (the handshake step, and hardening): reading a request head
//! ([`request`]), checking a WebSocket upgrade ([`handshake`]), plain answers ([`response`]),
//! and who the client is behind a reverse proxy ([`forwarded`]). Which answer a request gets
//! is the doors' business (`crate::doors`).

pub mod forwarded;
pub mod handshake;
pub mod request;
pub mod response;

pub use forwarded::client_address;
pub use handshake::{HandshakeRefused, accept_upgrade, is_websocket_key};
pub use request::{
    HANDSHAKE_TIMEOUT, HeadError, MAX_HEAD_BYTES, RequestHead, UNDECODABLE, parse_head,
    percent_decode, read_head,
};
pub use response::{respond, respond_error};
