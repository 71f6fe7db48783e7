//! The seam between this server and the others (`--redis`).

pub mod port;
