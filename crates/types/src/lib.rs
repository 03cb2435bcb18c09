//! The builder's shared vocabulary: values parsed once at the edge (app names, commit ids,
//! image references, the SSH command), secrets that never reach a log, sizes and durations
//! as settings write them, and the byte pipe every stage streams through.
//!
//! Depends on no other crate of the workspace; no I/O beyond the pipe's channel.

pub mod command;
pub mod names;
pub mod pipe;
pub mod secret;
pub mod units;

pub use secret::Secret;
