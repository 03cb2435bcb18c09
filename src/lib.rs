//! deis-builder: a git-push builder and slug pipeline. See ARCHITECTURE.md for the map.

pub mod build;
pub mod cli;
pub mod config;
pub mod controller;
pub mod engine;
pub mod git;
pub mod http;
pub mod metrics;
pub mod names;
pub mod pipe;
pub mod push;
pub mod server;
pub mod slug;
pub mod ssh;
pub mod storage;
pub mod sweep;
