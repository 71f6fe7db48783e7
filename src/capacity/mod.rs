//! How much the server takes on (hardening): [`limits`] reads what the operating system allows
//! and derives the budgets; [`budget`] counts against them, at the door, before any thread is
//! spawned; [`outbound`] counts writer threads and queued bytes, as frames leave; [`bucket`]
//! is how fast something may happen; [`address`] is what one address is to those rules;
//! [`tab`] is what a client's requests cost in answers; [`memory`] gives back what a burst took.

pub mod address;
pub mod bucket;
pub mod budget;
pub mod limits;
pub mod memory;
pub mod outbound;
pub mod tab;

pub use address::{AddressBlock, source_of};
pub use bucket::TokenBucket;
pub use budget::{AtCapacity, Budget, Handshake, Place};
pub use limits::{Capacity, Limits, READER_STACK, WRITER_STACK, Wanted};
pub use outbound::{OutboundBudget, WriterSlot};
pub use tab::Tab;
