//! The front door: the SSH server, the git side of a push (repositories, receive-pack,
//! the pre-receive hook relay) and admission (app lock, build slot, draining). It hands an
//! admitted push to the pipeline through [`deis_pipeline::push::PushRunner`] and knows
//! nothing about how builds run.

pub mod admission;
pub mod git;
pub mod ssh;
pub mod sweep;

use std::time::Duration;

/// Limits of the SSH front door, of pushes and of shutdown.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Builds (and image imports) that run at once; the rest wait in line.
    pub max_builds: usize,
    pub max_connections: usize,
    /// Unauthenticated SSH connections are dropped after this.
    pub login_timeout: Duration,
    /// SSH connections with no traffic (keepalive answers included) are closed after this.
    pub idle_timeout: Duration,
    pub max_auth_attempts: usize,
    /// Bytes one `git push` may send.
    pub max_push_bytes: u64,
    /// How long a push waits for the app's running push; zero refuses at once.
    pub lock_wait: Duration,
    /// How long running builds get after SIGTERM.
    pub shutdown_grace: Duration,
    /// Replicas on shared storage: an app lease not renewed for this long may be taken
    /// over by another builder.
    pub lease_ttl: Duration,
    /// Replicas on shared storage: a repository restore of more bytes than this is skipped
    /// (the push sends the whole history instead).
    pub repo_restore_max_bytes: u64,
}
