//! One build, from a received push to a released slug. Knows nothing of SSH: it gets a
//! [`Push`], writes progress to an [`Output`] and returns a [`Verdict`].

mod archive;
pub mod buildpack;
pub mod cache;
mod cnb;
mod dockerfile;
mod fetch;
mod import;
mod input;
pub mod push;
mod redact;
pub mod settings;
pub mod source;
mod submodule;
mod timing;

#[cfg(test)]
mod tests;

pub use archive::SourceArchives;
pub use import::{ImportRequest, Imported};
pub use input::BUILD_UID;

use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::push::{Output, Push, PushRunner, Verdict};
use crate::settings::BuildSettings;
use crate::source::SourceError;
use deis_controller::{Artifact, Controller, ControllerError, ReleaseRequest};
use deis_executor::{Engine, EngineError, Executor, Images, RegistryTag, TagRemoval};
use deis_metrics::{self as metrics, BuildKind, PushResult};
use deis_slug::{self as slug, ProcessTypes};
use deis_storage::{ObjectStore, StorageError};
use deis_types::names::AppName;
use deis_types::pipe::ByteStream;
use timing::{Stage, StageTimes};

/// `$STACK` when neither `--stack-name` nor a label of the stack image names the stack:
/// the name this builder's own stack had before it carried a label.
pub const DEFAULT_STACK: &str = "deis-bookworm";

/// Labels that name the stack of an image: ours, then the Cloud Native Buildpacks one
/// (Heroku's images carry `io.buildpacks.stack.id=heroku-22`).
const STACK_LABELS: [&str; 2] = ["io.deis.builder.stack", "io.buildpacks.stack.id"];

/// Where Debian-family stacks keep the CA bundle every TLS client reads by default.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Largest stack CA bundle read at start-up.
const MAX_CA_BUNDLE_BYTES: u64 = 8 << 20;

/// The stack builds run on, read off the stack image once at start-up.
#[derive(Debug, Clone)]
pub struct Stack {
    /// `$STACK` in buildpack builds.
    pub name: String,
    /// The image's CA bundle plus `--build-ca-file`: written over [`SYSTEM_CA_BUNDLE`] in
    /// every buildpack build, and named by the variables TLS clients read.
    pub ca_bundle: Option<Arc<[u8]>>,
}

impl Stack {
    /// Checks that the stack image and the build network exist and reads what builds need.
    pub async fn inspect(engine: &Engine, settings: &BuildSettings) -> Result<Stack, EngineError> {
        let labels = engine.require_image(&settings.stack_image).await?;
        engine.require_network(&settings.network).await?;
        let name = match &settings.stack_name {
            Some(name) => name.clone(),
            None => STACK_LABELS
                .iter()
                .find_map(|label| labels.get(*label).filter(|value| !value.is_empty()))
                .filter(|name| deis_types::names::is_stack_name(name))
                .cloned()
                .unwrap_or_else(|| DEFAULT_STACK.to_owned()),
        };
        let ca_bundle = match &settings.egress.ca {
            None => None,
            Some((_, extra)) => {
                let mut bundle = engine
                    .read_image_file(&settings.stack_image, SYSTEM_CA_BUNDLE, MAX_CA_BUNDLE_BYTES)
                    .await?
                    .unwrap_or_else(|| {
                        // A stack without it (or with a link there) would trust only the
                        // operator's CA: public registries then fail TLS in every build.
                        tracing::warn!(
                            image = %settings.stack_image,
                            path = SYSTEM_CA_BUNDLE,
                            "the stack image has no CA bundle file; builds trust only --build-ca-file"
                        );
                        Vec::new()
                    });
                if !bundle.is_empty() && !bundle.ends_with(b"\n") {
                    bundle.push(b'\n');
                }
                bundle.extend_from_slice(extra.as_bytes());
                Some(Arc::from(bundle))
            }
        };
        Ok(Stack { name, ca_bundle })
    }

    /// For a pipeline that only imports images (`deis-builder pull`).
    pub fn for_imports_only() -> Stack {
        Stack {
            name: DEFAULT_STACK.to_owned(),
            ca_bundle: None,
        }
    }

    /// Environment of a buildpack build that points TLS clients at the CA bundle.
    pub fn ca_env(&self) -> Vec<String> {
        if self.ca_bundle.is_none() {
            return Vec::new();
        }
        [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "PIP_CERT",
            "NODE_EXTRA_CA_CERTS",
            "GIT_SSL_CAINFO",
            "CURL_CA_BUNDLE",
        ]
        .iter()
        .map(|name| format!("{name}={SYSTEM_CA_BUNDLE}"))
        .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Controller(#[from] ControllerError),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Git(#[from] SourceError),
    #[error("invalid config var name {0:?}: use letters, digits and underscores")]
    ConfigName(String),
    #[error("{0}")]
    Plan(String),
    #[error("base image {image} is not in the Docker engine and cannot be pulled here ({detail})")]
    MissingBaseImage { image: String, detail: String },
    #[error("no buildpack matched this app")]
    NoBuildpack,
    #[error("{0}")]
    Fetch(#[from] fetch::FetchError),
    #[error("{0}")]
    Submodule(#[from] submodule::SubmoduleError),
    #[error("the compiled slug is {size}, over the limit of {limit}")]
    SlugTooLarge { size: String, limit: String },
    #[error("the build exited with status {0}")]
    BuildFailed(i64),
    #[error("the build took longer than {0:?} and was stopped")]
    Timeout(Duration),
    /// The engine went away during the build (and took the build with it): an outage,
    /// not the build's fault.
    #[error("cannot reach the Docker engine: {0}")]
    EngineLost(String),
    /// This builder no longer holds the app (replicas: its lease in the shared store), so
    /// it must not release it.
    #[error("stopped before the release, nothing was deployed: {0}")]
    HoldLost(String),
    /// An import stopped before its release by its caller's token (the server's shutdown).
    #[error("stopped: the builder is shutting down")]
    Cancelled,
    #[error("{0}")]
    Slug(#[from] slug::SlugError),
    #[error("{0}")]
    Procfile(#[from] slug::ProcfileError),
    #[error("cannot read the buildpack's release output: {0}")]
    Release(#[from] slug::ReleaseError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// What kind of failure ended a push or an import. One classification decides the HTTP
/// status of a failed import, whether a failed release keeps its objects, and the
/// `failure` field of the log event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A service could not be reached or did not answer in time (engine, storage,
    /// controller), or the builder is stopping: worth trying again later. A release call
    /// that ends so may still have cut the release.
    Outage,
    /// A service answered and said no: the controller or the registry refused.
    Refused,
    /// Everything else: the push or image itself (a failed build, bad config, a bad
    /// Procfile, an image that cannot be pulled) and engine errors that are not outages.
    Invalid,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::Outage => "outage",
            Failure::Refused => "refused",
            Failure::Invalid => "invalid",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl BuildError {
    pub fn failure(&self) -> Failure {
        match self {
            BuildError::Controller(error) if error.is_unreachable() => Failure::Outage,
            BuildError::Controller(_) => Failure::Refused,
            BuildError::Storage(_)
            | BuildError::EngineLost(_)
            | BuildError::Cancelled
            | BuildError::HoldLost(_) => Failure::Outage,
            BuildError::Engine(EngineError::Connect(_)) => Failure::Outage,
            BuildError::Engine(EngineError::Registry(_)) => Failure::Refused,
            _ => Failure::Invalid,
        }
    }
}

/// Object keys of one build, in the Deis layout.
#[derive(Debug, Clone)]
pub struct Keys {
    pub source: String,
    pub slug: String,
    pub procfile: String,
}

impl Keys {
    /// The Deis layout, `home/<app>:git-<sha8>/…`: where the first build of a commit goes.
    pub fn new(app: &AppName, sha8: &str) -> Keys {
        Keys::under(format!("home/{app}:git-{sha8}"))
    }

    /// `home/<app>:git-<sha8>-<push id>/…`: where a later build of the same commit goes, so
    /// objects a release may point to are never overwritten (write-once).
    pub fn for_push(app: &AppName, sha8: &str, push_id: &str) -> Keys {
        Keys::under(format!("home/{app}:git-{sha8}-{push_id}"))
    }

    fn under(base: String) -> Keys {
        Keys {
            source: format!("{base}/tar"),
            slug: format!("{base}/push/slug.tgz"),
            procfile: format!("{base}/push/Procfile"),
        }
    }
}

/// The buildpack pipeline.
#[derive(Debug)]
pub struct Pipeline {
    pub controller: Arc<dyn Controller>,
    pub store: Arc<dyn ObjectStore>,
    /// Runs buildpack builds: the Docker engine, or [`deis_executor::fake`] in tests.
    pub executor: Arc<dyn Executor>,
    /// Dockerfile builds, pushes, pulls and tags.
    pub images: Arc<dyn Images>,
    pub settings: BuildSettings,
    pub stack: Stack,
    /// Build containers created while their pushes were still being received.
    pub warm: buildpack::WarmBuilds,
    /// Source tarballs of deployed pushes, stored once the push is over.
    pub archives: SourceArchives,
}

#[async_trait::async_trait]
impl PushRunner for Pipeline {
    fn expect(&self, app: &AppName, push_id: &str) {
        self.warm_up(app, push_id);
    }

    async fn forget(&self, push_id: &str) {
        self.archives.start(push_id);
        self.warm.discard(push_id).await;
    }

    async fn run(&self, push: Push, out: Output, cancel: CancellationToken) -> Verdict {
        let span = tracing::info_span!(
            "push", push_id = %push.id, app = %push.app, user = %push.user, sha = %push.commit.short()
        );
        async {
            let started = Instant::now();
            let receive = started.saturating_duration_since(push.receive_started);
            let times = StageTimes::default();
            let journal = RollbackJournal::new(self.store.clone(), self.images.clone());
            let built = tokio::select! {
                built = async {
                    let built = self.build(&push, &out, &journal, &times).await?;
                    crate::push::confirm(push.hold.as_deref()).await?;
                    Ok::<_, BuildError>(built)
                } => Some(built),
                () = cancel.cancelled() => None,
            };
            let (built, source_key) = match built {
                Some(Ok(built)) => built,
                Some(Err(error)) => {
                    tracing::warn!(%error, failure = %error.failure(), "push rejected");
                    out.error(format!("Build failed: {error}")).await;
                    journal.roll_back().await;
                    metrics::push_finished(PushResult::Failed);
                    return Verdict::Reject;
                }
                None => {
                    tracing::warn!(
                        "push cancelled: the client went away or the server is stopping"
                    );
                    journal.roll_back().await;
                    metrics::push_finished(PushResult::Cancelled);
                    return Verdict::Reject;
                }
            };
            // Not raced against cancellation: once asked, the controller may cut the release
            // whether or not we wait, and its objects must then stay (the call has a timeout).
            let released = times
                .time(Stage::Release, self.release(&push, &built, &out))
                .await;
            journal.settle(&released).await;
            // Only a deployed push lands in git, where its source is read once it is over.
            if released.is_ok() {
                self.archives.after_push(
                    &push.id,
                    self.store.clone(),
                    push.source.landed(),
                    push.commit.clone(),
                    source_key,
                );
            }
            match released {
                Ok(version) => {
                    tracing::info!(
                        version,
                        elapsed_ms = timing::millis(started.elapsed()),
                        receive_ms = timing::millis(receive),
                        config_ms = times.millis(Stage::Config),
                        prepare_ms = times.millis(Stage::Prepare),
                        container_ms = times.millis(Stage::Container),
                        compile_ms = times.millis(Stage::Compile),
                        cache_ms = times.millis(Stage::Cache),
                        pack_ms = times.millis(Stage::Pack),
                        upload_ms = times.millis(Stage::Upload),
                        cleanup_ms = times.millis(Stage::Cleanup),
                        release_ms = times.millis(Stage::Release),
                        context_ms = times.millis(Stage::Context),
                        tag_ms = times.millis(Stage::Tag),
                        build_ms = times.millis(Stage::Build),
                        push_ms = times.millis(Stage::Push),
                        "deployed"
                    );
                    metrics::push_finished(PushResult::Success);
                    Verdict::Accept
                }
                Err(error) => {
                    tracing::warn!(%error, failure = %error.failure(), "release failed");
                    out.error(format!("Build failed: {error}")).await;
                    metrics::push_finished(PushResult::Failed);
                    Verdict::Reject
                }
            }
        }
        .instrument(span)
        .await
    }
}

impl Pipeline {
    /// Everything up to the release: config and the build itself. Also says where the
    /// source tarball goes once the push is over.
    async fn build(
        &self,
        push: &Push,
        out: &Output,
        journal: &RollbackJournal,
        times: &StageTimes,
    ) -> Result<(Built, String), BuildError> {
        let config_started = Instant::now();
        let (keys, config) = tokio::try_join!(self.keys_for(push), async {
            Ok(self.controller.app_config(&push.user, &push.app).await?)
        })?;
        if let Some(bad) = config.values.keys().find(|k| !input::valid_config_name(k)) {
            return Err(BuildError::ConfigName(deis_types::names::printable(bad)));
        }
        times.add(Stage::Config, config_started.elapsed());

        let plan = self.plan(push, &config.values).await?;
        let build_started = Instant::now();
        let (kind, built) = match plan {
            Plan::Buildpack => (
                BuildKind::Buildpack,
                self.buildpack_build(push, &config.values, out, journal, &keys, times)
                    .await,
            ),
            Plan::Dockerfile => (
                BuildKind::Dockerfile,
                self.dockerfile_build(push, &config.values, out, journal, times)
                    .await,
            ),
        };
        metrics::build_finished(kind, build_started.elapsed());
        let built = built?;
        out.line("Build complete.").await;
        Ok((built, keys.source))
    }

    /// The Deis keys, unless an earlier push of this commit already used them (its objects
    /// may belong to a live release): then keys of this push alone.
    async fn keys_for(&self, push: &Push) -> Result<Keys, BuildError> {
        let first = Keys::new(&push.app, push.commit.short());
        // One round trip's time, not three.
        let existing = futures_util::future::try_join_all(
            [&first.source, &first.slug, &first.procfile].map(|key| self.store.exists(key)),
        )
        .await?;
        if existing.contains(&true) {
            tracing::info!(
                key = %first.source,
                "this commit was built before; this push stores its objects under its own keys"
            );
            return Ok(Keys::for_push(&push.app, push.commit.short(), &push.id));
        }
        Ok(first)
    }

    async fn release(&self, push: &Push, built: &Built, out: &Output) -> Result<u64, BuildError> {
        out.line("Launching App...").await;
        let version = self
            .controller
            .release(&ReleaseRequest {
                user: &push.user,
                app: &push.app,
                sha: push.commit.as_str(),
                artifact: &built.artifact,
                procfile: &built.process_types.0,
            })
            .await?;
        out.line(format!("Done, {}:v{version} deployed", push.app))
            .await;
        Ok(version)
    }
}

/// How a push is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Buildpack,
    Dockerfile,
}

/// App config that picks the build type when an app has both a Dockerfile and a Procfile
/// (Hephy's name): `procfile`/`buildpack` or `dockerfile`.
pub const BUILDER_SETTING: &str = "HEPHY_BUILDER";

impl Pipeline {
    /// A Dockerfile at the root means a Docker build, unless app config says otherwise.
    async fn plan(
        &self,
        push: &Push,
        config: &std::collections::BTreeMap<String, String>,
    ) -> Result<Plan, BuildError> {
        let has_dockerfile = push.source.has_file(&push.commit, "Dockerfile").await?;
        match config
            .get(BUILDER_SETTING)
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("") => Ok(if has_dockerfile {
                Plan::Dockerfile
            } else {
                Plan::Buildpack
            }),
            Some("procfile" | "buildpack") => Ok(Plan::Buildpack),
            Some("dockerfile") if has_dockerfile => Ok(Plan::Dockerfile),
            Some("dockerfile") => Err(BuildError::Plan(format!(
                "{BUILDER_SETTING}=dockerfile is set but the app has no Dockerfile at its root"
            ))),
            Some(other) => Err(BuildError::Plan(format!(
                "{BUILDER_SETTING}={} is not one of `procfile`, `buildpack` or `dockerfile` \
                 (or unset: a Dockerfile decides)",
                deis_types::names::printable(other)
            ))),
        }
    }
}

/// What a build produced, for the release.
#[derive(Debug)]
pub struct Built {
    pub artifact: Artifact,
    pub process_types: ProcessTypes,
}

/// Runs a blocking writer over an async byte stream, producing an async byte stream.
pub(crate) fn blocking_writer<F>(input: ByteStream, write: F) -> ByteStream
where
    F: FnOnce(
            SyncIoBridge<StreamReader<ByteStream, bytes::Bytes>>,
            &mut deis_types::pipe::PipeWriter,
        ) -> io::Result<()>
        + Send
        + 'static,
{
    let reader = SyncIoBridge::new(StreamReader::new(input));
    let (mut writer, output) = deis_types::pipe::pipe(8);
    tokio::task::spawn_blocking(move || match write(reader, &mut writer) {
        Ok(()) => {
            let _ = writer.finish();
        }
        Err(error) => writer.fail(error),
    });
    output
}

/// Objects and image tags this push created, deleted again if the push does not land, so a
/// failed push leaves nothing behind. What existed before (an earlier push) stays.
///
/// Each put runs as a task tracked here, its key recorded before it starts: a cancelled
/// push drops its futures, but a put dropped late may still publish (the local store syncs
/// the directory after its rename; S3 may be completing a multipart upload). A rollback
/// therefore first stops the bodies still being read (the store then aborts those puts)
/// and waits for every put to end, and only then deletes.
struct RollbackJournal {
    store: Arc<dyn ObjectStore>,
    images: Arc<dyn Images>,
    created: Mutex<Vec<String>>,
    tags: Mutex<Vec<CreatedTag>>,
    uploads: TaskTracker,
    /// Fired by the rollback: fails the bodies of puts still running.
    stop: CancellationToken,
}

/// An image tag a push created: in the local engine, and in the registry once pushed.
#[derive(Debug, Clone)]
pub(crate) struct CreatedTag {
    /// `repository:tag` in the local engine.
    pub reference: String,
    /// The tag in the registry, once pushed there.
    pub registry: Option<RegistryTag>,
}

impl CreatedTag {
    /// `reference`, local and as `app:tag` in `registry`: recorded before the push, since
    /// one stopped half-way may still have put the manifest (the last step), and rolling
    /// back an absent tag is a no-op.
    pub(crate) fn in_registry(
        reference: String,
        registry: &crate::settings::RegistrySettings,
        auth: Option<deis_executor::RegistryAuth>,
        app: &AppName,
        tag: &str,
    ) -> CreatedTag {
        CreatedTag {
            reference,
            registry: Some(RegistryTag {
                host: registry.host.clone(),
                auth,
                name: app.to_string(),
                tag: tag.to_owned(),
            }),
        }
    }
}

impl RollbackJournal {
    fn new(store: Arc<dyn ObjectStore>, images: Arc<dyn Images>) -> RollbackJournal {
        RollbackJournal {
            store,
            images,
            created: Mutex::new(Vec::new()),
            tags: Mutex::new(Vec::new()),
            uploads: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Records a tag this push created (call again once it is in the registry).
    fn image(&self, image: CreatedTag) {
        let mut images = self.tags.lock().unwrap_or_else(PoisonError::into_inner);
        images.retain(|known| known.reference != image.reference);
        images.push(image);
    }

    async fn put<B>(&self, key: &str, body: B) -> Result<u64, BuildError>
    where
        B: tokio::io::AsyncRead + Send + Unpin + 'static,
    {
        let (written, _) = self.put_body(key, body).await?;
        Ok(written?)
    }

    /// [`RollbackJournal::put`], giving the body back to a caller that reads on after a failed
    /// put. The outer error is for a put that could not be started or did not end.
    async fn put_body<B>(
        &self,
        key: &str,
        body: B,
    ) -> Result<(Result<u64, StorageError>, B), BuildError>
    where
        B: tokio::io::AsyncRead + Send + Unpin + 'static,
    {
        if !self.store.exists(key).await? {
            // Before the put: one dropped half-way may still publish, and must be found.
            self.created_keys().push(key.to_owned());
        }
        let store = self.store.clone();
        let owned_key = key.to_owned();
        let mut body = Stoppable {
            inner: body,
            stop: Box::pin(self.stop.clone().cancelled_owned()),
        };
        let upload = self.uploads.spawn(async move {
            let written = store.put(&owned_key, &mut body).await;
            (written, body.inner)
        });
        match upload.await {
            Ok(done) => Ok(done),
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(error) => Err(BuildError::Io(io::Error::other(format!(
                    "the upload of {key} did not finish: {error}"
                )))),
            },
        }
    }

    /// After the release call (never before: until it is asked, a failure rolls back):
    /// a cut release keeps everything; a refused one rolls back; one whose outcome is
    /// unknown (an outage: the controller may have cut it) keeps what it would point to.
    async fn settle<T>(&self, released: &Result<T, BuildError>) {
        match released {
            Ok(_) => self.keep(),
            Err(error) if error.failure() == Failure::Outage => {
                tracing::warn!("release outcome unknown; keeping what this push or import created");
            }
            Err(_) => self.roll_back().await,
        }
    }

    /// The release was cut: everything stays.
    fn keep(&self) {
        self.created_keys().clear();
        self.tags
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    async fn roll_back(&self) {
        self.stop.cancel();
        self.uploads.close();
        self.uploads.wait().await;
        let keys = std::mem::take(&mut *self.created_keys());
        for key in keys {
            if let Err(error) = self.store.delete(&key).await {
                tracing::error!(%error, %key, "cannot delete object of a failed push");
            }
        }
        let images = std::mem::take(&mut *self.tags.lock().unwrap_or_else(PoisonError::into_inner));
        for image in images {
            if let Some(registry) = &image.registry {
                match self.images.delete_registry_tag(registry).await {
                    Ok(TagRemoval::Deleted | TagRemoval::Absent) => {}
                    Ok(TagRemoval::Shared { other_tag }) => tracing::warn!(
                        image = %image.reference, %other_tag,
                        "registry tag of a failed push kept: its manifest is also tagged otherwise"
                    ),
                    Err(error) => tracing::error!(
                        %error, image = %image.reference,
                        "cannot delete the registry tag of a failed push"
                    ),
                }
            }
            if let Err(error) = self.images.remove(&image.reference).await {
                tracing::error!(%error, image = %image.reference, "cannot remove the image tag of a failed push");
            }
        }
    }

    fn created_keys(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.created.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An upload body that fails once `stop` fires, even while the inner reader waits.
struct Stoppable<R> {
    inner: R,
    stop: std::pin::Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Stoppable<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::future::Future;
        if self.stop.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(Err(io::Error::other(
                "the push was stopped: upload abandoned",
            )));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}
