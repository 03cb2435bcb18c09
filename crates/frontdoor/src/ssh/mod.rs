//! The SSH front door: host keys, public-key auth through the controller, exec parsing,
//! and plumbing between an SSH channel and a git process. Knows nothing of builds.

pub mod keys;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::keys::ssh_key::PublicKey;
use russh::keys::PrivateKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::git::{ClientSink, GitServer};
use deis_controller::{md5_fingerprint, Controller, User};

/// Client bytes buffered per channel before the session waits for git to read them.
const STDIN_CHUNKS: usize = 64;

pub struct SshServer {
    pub config: Arc<russh::server::Config>,
    pub controller: Arc<dyn Controller>,
    pub git: GitServer,
    /// Connections served at once; more are refused until one ends.
    pub max_connections: usize,
    /// Connections that have not authenticated by then are dropped.
    pub login_timeout: Duration,
}

pub fn server_config(
    keys: Vec<PrivateKey>,
    limits: &crate::LimitSettings,
) -> russh::server::Config {
    russh::server::Config {
        keys,
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        // OpenSSH tries `none` first; without this every push pays a rejection delay.
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: limits.max_auth_attempts,
        // russh restarts its inactivity timer on any traffic but its own keepalives; the
        // client's answers to them count, so a build that prints nothing for longer than
        // the idle timeout survives as long as the client is there. A client that stops
        // answering is dropped after `keepalive_max` (3) unanswered ones.
        keepalive_interval: Some(keepalive_interval(limits.idle_timeout)),
        inactivity_timeout: Some(limits.idle_timeout),
        nodelay: true,
        ..Default::default()
    }
}

/// Often enough that several keepalives fit in one idle timeout, at most every 30 s.
fn keepalive_interval(idle_timeout: Duration) -> Duration {
    (idle_timeout / 3).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

impl SshServer {
    /// The accept loop. Returns when `stop_accepting` fires; live connections, tracked by
    /// `tracker`, run on until they end (the git server stops their work on shutdown).
    pub async fn run(
        self,
        listener: TcpListener,
        stop_accepting: CancellationToken,
        tracker: TaskTracker,
    ) {
        let limit = Arc::new(Semaphore::new(self.max_connections));
        let this = Arc::new(self);
        loop {
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
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                // Refused rather than left in the accept queue, where the client would hang.
                tracing::warn!(%peer, limit = this.max_connections, "connection refused: too many connections");
                tokio::spawn(refuse_connection(stream));
                continue;
            };
            // Lets the login timer close the socket under the session, whatever state the
            // handshake is in (a duplicate descriptor of the same socket).
            let socket = stream
                .as_fd()
                .try_clone_to_owned()
                .map(std::net::TcpStream::from);
            let authenticated = CancellationToken::new();
            // One span per connection; `user` is filled in once a key is accepted.
            let span = tracing::info_span!("ssh", %peer, user = tracing::field::Empty);
            let handler = Connection {
                span: span.clone(),
                peer,
                known_key: None,
                controller: this.controller.clone(),
                git: this.git.clone(),
                user: None,
                channels: HashMap::new(),
                git_protocol: None,
                cancel: CancellationToken::new(),
                authenticated: authenticated.clone(),
                tracker: tracker.clone(),
            };
            let config = this.config.clone();
            let login_timeout = this.login_timeout;
            tracker.spawn(
                async move {
                    let _permit = permit;
                    let session = async {
                        match russh::server::run_stream(config, stream, handler).await {
                            Ok(session) => {
                                if let Err(error) = session.await {
                                    tracing::debug!(%error, "session ended with an error");
                                }
                            }
                            Err(error) => tracing::debug!(%error, "handshake failed"),
                        }
                    };
                    let login_timer = async {
                        tokio::select! {
                            () = authenticated.cancelled() => {}
                            () = tokio::time::sleep(login_timeout) => {
                                tracing::info!(?login_timeout, "dropped: not authenticated in time");
                                match &socket {
                                    Ok(socket) => {
                                        let _ = socket.shutdown(std::net::Shutdown::Both);
                                    }
                                    Err(error) => tracing::warn!(%error, "cannot close the connection"),
                                }
                            }
                        }
                        // The session ends on its own from here.
                        std::future::pending::<()>().await;
                    };
                    tokio::select! {
                        () = session => {}
                        () = login_timer => {}
                    }
                }
                .instrument(span),
            );
        }
    }
}

struct Connection {
    /// russh runs the handler on a task of its own, outside the span the session future
    /// is instrumented with: events here name it as their parent explicitly.
    span: tracing::Span,
    peer: SocketAddr,
    controller: Arc<dyn Controller>,
    git: GitServer,
    /// The last offered key the controller knows (fingerprint, owner): the signed
    /// request that follows an accepted offer needs no second lookup.
    known_key: Option<(String, User)>,
    user: Option<User>,
    /// Client → git bytes for each running exec.
    channels: HashMap<ChannelId, Option<mpsc::Sender<Bytes>>>,
    git_protocol: Option<String>,
    /// Fires when the connection ends, so its git processes and builds stop.
    cancel: CancellationToken,
    /// Fires once a key is accepted: stops the login timer.
    authenticated: CancellationToken,
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

    /// The owner of `key`, if the controller knows it and allows it from this client.
    /// Refusals are counted and logged here, once per offered key.
    async fn lookup(&mut self, ssh_user: &str, key: &PublicKey) -> Option<(String, User)> {
        let blob = key.to_bytes().ok()?;
        let fingerprint = md5_fingerprint(&blob);
        if let Some((known, user)) = &self.known_key {
            if *known == fingerprint {
                return Some((fingerprint, user.clone()));
            }
        }
        let refusal = match self.controller.user_for_key(&fingerprint).await {
            Ok(found) if found.may_connect_from(self.peer.ip()) => {
                self.known_key = Some((fingerprint.clone(), found.clone()));
                return Some((fingerprint, found));
            }
            Ok(found) => format!("{} may not use this key from this address", found.username),
            Err(error) => error.to_string(),
        };
        deis_metrics::auth_failed();
        tracing::info!(parent: &self.span, ssh_user = %deis_types::names::printable(ssh_user), %fingerprint, error = %refusal, "public key refused");
        None
    }

    fn username(&self) -> &str {
        self.user
            .as_ref()
            .map_or("unknown", |u| u.username.as_str())
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    /// Keys are checked when offered, as sshd does: a key nobody authorized is refused
    /// before the client is asked to sign (or its owner for a passphrase).
    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(match self.lookup(user, offer.public_key).await {
            Some(_) => Auth::Accept,
            None => Auth::reject(),
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let Some((fingerprint, found)) = self.lookup(user, key.public_key).await else {
            return Ok(Auth::reject());
        };
        self.span.record("user", found.username.as_str());
        tracing::info!(parent: &self.span, user = %found.username, %fingerprint, "authenticated");
        self.user = Some(found);
        self.authenticated.cancel();
        Ok(Auth::Accept)
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
        let parsed = deis_types::command::parse(data);
        let Some(user) = self.user.clone() else {
            return Ok(());
        };
        let command = match parsed {
            Ok(command) => command,
            Err(error) => {
                tracing::info!(parent: &self.span, user = %user.username, %error, "exec refused");
                tokio::spawn(async move { writer.refuse(&format!("deis-builder: {error}")).await });
                return Ok(());
            }
        };
        if !user.may_push(command.app.as_str()) {
            tracing::info!(parent: &self.span, user = %user.username, app = %command.app, "app access refused");
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
        let span = tracing::info_span!(parent: &self.span, "git", app = %command.app, user = %user.username, service = command.service.subcommand(), push_id = tracing::field::Empty);
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
        deis_metrics::ssh_bytes_received(data.len());
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
            deis_types::names::printable(name)
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

/// What a client over the connection limit reads before the socket closes (OpenSSH shows
/// lines before the protocol banner with `-v`).
const TOO_MANY_CONNECTIONS: &str = "deis-builder: too many connections; try again in a moment\r\n";

/// Tells a client over the connection limit why, then closes gracefully: closing with its
/// banner unread would reset the connection and lose the line.
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let farewell = async {
        stream.write_all(TOO_MANY_CONNECTIONS.as_bytes()).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 1024];
        while stream.read(&mut buf).await? > 0 {}
        std::io::Result::Ok(())
    };
    // Bounded: a refused client gets two seconds of our time at most.
    let _ = tokio::time::timeout(Duration::from_secs(2), farewell).await;
}

/// Used in start-up logs.
pub fn describe_listener(addr: SocketAddr) -> String {
    format!("ssh://git@{addr}/<app>.git")
}
