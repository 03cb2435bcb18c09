//! The SSH front door: host keys, public-key auth through the controller, exec parsing,
//! and plumbing between an SSH channel and a git process. Knows nothing of builds.

pub mod command;
pub mod keys;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::keys::PrivateKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::controller::{md5_fingerprint, Controller, User};
use crate::git::{ClientSink, GitServer};

/// Connections served at once; the rest wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 256;
/// Client bytes buffered per channel before the session waits for git to read them.
const STDIN_CHUNKS: usize = 64;

pub struct SshServer {
    pub config: Arc<russh::server::Config>,
    pub controller: Arc<dyn Controller>,
    pub git: GitServer,
}

pub fn server_config(keys: Vec<PrivateKey>) -> russh::server::Config {
    russh::server::Config {
        keys,
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        // OpenSSH tries `none` first; without this every push pays a rejection delay.
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: 10,
        // Keepalives stop idle timeouts from cutting builds that print nothing for a while.
        keepalive_interval: Some(Duration::from_secs(30)),
        inactivity_timeout: Some(Duration::from_secs(3600)),
        nodelay: true,
        ..Default::default()
    }
}

impl SshServer {
    /// The accept loop. Returns when `stop_accepting` fires; live connections, tracked by
    /// `tracker`, run on until they end or `abort` fires.
    pub async fn run(
        self,
        listener: TcpListener,
        stop_accepting: CancellationToken,
        abort: CancellationToken,
        tracker: TaskTracker,
    ) {
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let this = Arc::new(self);
        loop {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = tokio::select! {
                () = stop_accepting.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let handler = Connection {
                controller: this.controller.clone(),
                git: this.git.clone(),
                user: None,
                channels: HashMap::new(),
                git_protocol: None,
                cancel: abort.child_token(),
                tracker: tracker.clone(),
            };
            let config = this.config.clone();
            let span = tracing::info_span!("ssh", %peer);
            tracker.spawn(
                async move {
                    let _permit = permit;
                    match russh::server::run_stream(config, stream, handler).await {
                        Ok(session) => {
                            if let Err(error) = session.await {
                                tracing::debug!(%error, "session ended with an error");
                            }
                        }
                        Err(error) => tracing::debug!(%error, "handshake failed"),
                    }
                }
                .instrument(span),
            );
        }
    }
}

struct Connection {
    controller: Arc<dyn Controller>,
    git: GitServer,
    user: Option<User>,
    /// Client → git bytes for each running exec.
    channels: HashMap<ChannelId, Option<mpsc::Sender<Bytes>>>,
    git_protocol: Option<String>,
    /// Fires when the connection ends, so its git processes and builds stop.
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Writes to one SSH channel from a task, waiting for the client's window.
struct ChannelWriter {
    handle: russh::server::Handle,
    channel: ChannelId,
}

#[async_trait::async_trait]
impl ClientSink for ChannelWriter {
    async fn stdout(&self, data: Bytes) -> bool {
        self.handle.data(self.channel, data).await.is_ok()
    }

    async fn stderr(&self, data: Bytes) -> bool {
        self.handle
            .extended_data(self.channel, 1, data)
            .await
            .is_ok()
    }
}

impl ChannelWriter {
    async fn finish(&self, status: u32) {
        let _ = self.handle.exit_status_request(self.channel, status).await;
        let _ = self.handle.eof(self.channel).await;
        let _ = self.handle.close(self.channel).await;
    }

    async fn refuse(&self, message: &str) {
        self.stderr(Bytes::from(format!("{message}\n"))).await;
        self.finish(1).await;
    }
}

impl Connection {
    fn writer(&self, channel: ChannelId, session: &Session) -> ChannelWriter {
        ChannelWriter {
            handle: session.handle(),
            channel,
        }
    }

    fn username(&self) -> &str {
        self.user
            .as_ref()
            .map_or("unknown", |u| u.username.as_str())
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let Ok(blob) = key.public_key.to_bytes() else {
            return Ok(Auth::reject());
        };
        let fingerprint = md5_fingerprint(&blob);
        match self.controller.user_for_key(&fingerprint).await {
            Ok(found) => {
                tracing::info!(user = %found.username, %fingerprint, "authenticated");
                self.user = Some(found);
                Ok(Auth::Accept)
            }
            Err(error) => {
                tracing::info!(ssh_user = %crate::names::printable(user), %fingerprint, %error, "public key refused");
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // We use the data/eof callbacks, not the channel object; dropping it keeps its
        // queue from filling up and stalling the session.
        self.channels.insert(channel.id(), None);
        drop(channel);
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let writer = self.writer(channel, session);
        let parsed = command::parse(data);
        let Some(user) = self.user.clone() else {
            return Ok(());
        };
        let command = match parsed {
            Ok(command) => command,
            Err(error) => {
                tracing::info!(user = %user.username, %error, "exec refused");
                tokio::spawn(async move { writer.refuse(&format!("deis-builder: {error}")).await });
                return Ok(());
            }
        };
        if !user.may_push(command.app.as_str()) {
            tracing::info!(user = %user.username, app = %command.app, "app access refused");
            let msg = format!(
                "deis-builder: user {} has no access to app {}",
                user.username, command.app
            );
            tokio::spawn(async move { writer.refuse(&msg).await });
            return Ok(());
        }
        if self.channels.get(&channel).is_some_and(Option::is_some) {
            return Ok(());
        }
        let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_CHUNKS);
        self.channels.insert(channel, Some(stdin_tx));
        let git = self.git.clone();
        let cancel = self.cancel.child_token();
        let protocol = self.git_protocol.clone();
        let span = tracing::info_span!("git", app = %command.app, user = %user.username, service = command.service.subcommand());
        self.tracker.spawn(
            async move {
                tracing::info!("started");
                let status = git
                    .serve(
                        &command,
                        &user.username,
                        protocol.as_deref(),
                        stdin_rx,
                        &writer,
                        cancel,
                    )
                    .await;
                tracing::info!(status, "finished");
                writer.finish(status).await;
            }
            .instrument(span),
        );
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(Some(stdin)) = self.channels.get(&channel) {
            // Waiting here is our backpressure: git reads slower than the client sends.
            if stdin.send(Bytes::copy_from_slice(data)).await.is_err() {
                self.channels.insert(channel, None);
            }
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Dropping the sender closes git's stdin.
        self.channels.insert(channel, None);
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }

    async fn env_request(
        &mut self,
        _channel: ChannelId,
        name: &str,
        value: &str,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Git asks for protocol v2 this way; every other variable is ignored.
        let plausible = value.len() <= 64
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"=:.-_".contains(&b));
        if name == "GIT_PROTOCOL" && plausible {
            self.git_protocol = Some(value.to_owned());
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let writer = self.writer(channel, session);
        let msg = format!(
            "Hi {}! You are authenticated, but deis-builder provides no shell access.\nDeploy with: git push deis master",
            self.username()
        );
        tokio::spawn(async move { writer.refuse(&msg).await });
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let writer = self.writer(channel, session);
        let msg = format!(
            "deis-builder: subsystem {:?} is not available",
            crate::names::printable(name)
        );
        tokio::spawn(async move { writer.refuse(&msg).await });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }
}

/// Used in start-up logs.
pub fn describe_listener(addr: SocketAddr) -> String {
    format!("ssh://git@{addr}/<app>.git")
}
