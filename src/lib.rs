//! deis-builder, the binary's library half: command line, settings, wiring and the HTTP
//! endpoints. The pieces it wires live in the workspace crates under `crates/`; see
//! ARCHITECTURE.md for the map.

pub mod cli;
pub mod config;
pub mod http;
pub mod replica;
pub mod server;
