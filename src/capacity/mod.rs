//! How much the server takes on (hardening): [`limits`] reads what the operating system allows
//! and derives the budgets; [`budget`] counts against them, at the door, before any thread is
//! spawned.

pub mod budget;
pub mod limits;

pub use budget::{AtCapacity, Budget, Handshake, Place};
pub use limits::{Capacity, Limits, READER_STACK, Wanted, use_global_futex_hash};
