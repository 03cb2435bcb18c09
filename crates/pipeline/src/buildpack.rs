//! Buildpack builds: the app runs through buildpacks (the built-in ones, or those named by
//! `BUILDPACK_URL` / `.buildpacks`, fetched on the host) in an ephemeral container, with the
//! app's build cache restored into CACHE_DIR; `/app` comes out as a slug.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::task::JoinHandle;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::cache::{self, Restore, RestoredCache, Saved};
use super::fetch::{self, BuildpackUrl, FetchedBuildpack, Fetcher, UrlKind, Workspace};
use super::redact::{RedactedOutput, Redactor};
use super::submodule::{self, FetchedSubmodule};
use super::timing::{Stage, StageTimes};
use deis_controller::Artifact;

use super::{blocking_writer, input, BuildError, Built, Keys, Pipeline, RollbackJournal};
use crate::push::{Output, Push};
use deis_executor::{BuildContainerSpec, Job};
use deis_slug::{self as slug, PackOptions, ProcessTypes, SlugIgnore};
use deis_types::names::AppName;
use deis_types::pipe::ByteStream;

/// Largest `.slugignore` we read.
const MAX_SLUGIGNORE: usize = 64 * 1024;
/// Largest `.buildpacks` we read.
const MAX_BUILDPACKS_FILE: usize = 64 * 1024;

/// App config: use exactly this buildpack (`url#ref`).
pub const BUILDPACK_URL: &str = "BUILDPACK_URL";
/// App config: present means "delete the cache and build without one".
pub const DISABLE_CACHE: &str = "DEIS_DISABLE_CACHE";
/// App config: private key (base64 or plain) for private buildpacks and dependencies.
pub const SSH_KEY: &str = "SSH_KEY";

/// What the input archive gets besides the source, owned so it can move into the blocking
/// writer.
#[derive(Debug, Default)]
struct BuildInputs {
    config: BTreeMap<String, String>,
    push_env: String,
    cache: Option<PathBuf>,
    buildpacks: Option<Vec<FetchedBuildpack>>,
    ssh_key: Option<String>,
    ca_bundle: Option<std::sync::Arc<[u8]>>,
    submodules: Vec<FetchedSubmodule>,
    /// Set for a Cloud Native Buildpacks build.
    cnb: Option<super::cnb::CnbBuild>,
}

/// What the prepare stage hands on to the later ones.
struct Prepared {
    /// Removed (with everything fetched or downloaded into it) when the build ends.
    workspace: Workspace,
    /// What `.slugignore` leaves out of the slug.
    ignore: SlugIgnore,
    compile: CompileInputs,
}

/// What the compile stage consumes.
struct CompileInputs {
    archive: BuildInputs,
    /// Hides config values and keys in the build's output.
    redactor: Redactor,
    cache: CacheUse,
    /// The container was started while the push was received and waits for the signal.
    started_early: bool,
}

/// The app's build cache in one build.
enum CacheUse {
    /// `DEIS_DISABLE_CACHE`: the stored cache was deleted and none is saved afterwards.
    Disabled,
    /// Saved after a successful compile; `restored` is what the build started from.
    Enabled { restored: Option<RestoredCache> },
}

impl CacheUse {
    fn restored(&self) -> Option<&RestoredCache> {
        match self {
            CacheUse::Enabled { restored } => restored.as_ref(),
            CacheUse::Disabled => None,
        }
    }
}

impl Pipeline {
    /// Compiles the app in a build container and stores its slug and Procfile.
    pub(super) async fn buildpack_build(
        &self,
        push: &Push,
        config: &BTreeMap<String, String>,
        out: &Output,
        journal: &RollbackJournal,
        keys: &Keys,
        times: &StageTimes,
    ) -> Result<Built, BuildError> {
        let prepare_started = Instant::now();
        // A container created while the push was received comes with its workspace.
        let (workspace, warm) = match self.warm.take(&push.id).await {
            Some(WarmBuild { workspace, job }) => (workspace, Some(job)),
            None => (Workspace::create(&self.settings.work_dir, &push.id)?, None),
        };
        let started_early = warm.is_some();
        // The workspace stays bound here, so it outlives the container and the uploads.
        let Prepared {
            workspace,
            ignore,
            mut compile,
        } = self.prepare(push, config, workspace, out).await?;
        compile.started_early = started_early;
        times.add(Stage::Prepare, prepare_started.elapsed());

        let container = match warm {
            Some(job) => job,
            None => {
                let spec = self.container_spec(&push.app, &push.id, &workspace, false);
                times
                    .time(Stage::Container, self.executor.create(&spec))
                    .await?
            }
        };
        let job: &dyn Job = container.as_ref();
        let packed = match self
            .compile(job, push, out, times, compile, &workspace)
            .await
        {
            Ok(()) => self.pack_and_store(job, ignore, keys, journal, times).await,
            Err(error) => Err(error),
        };
        // Removed on every path; on cancellation the container's drop removes it instead.
        if let Err(error) = times.time(Stage::Cleanup, container.remove()).await {
            tracing::error!(%error, "cannot remove build container");
        }
        self.publish_process_types(&packed?, keys, journal, out, times)
            .await
    }

    /// Everything before the container: `.slugignore`, the workspace, buildpacks and
    /// submodules fetched on the host, and the cache restored (or deleted).
    async fn prepare(
        &self,
        push: &Push,
        config: &BTreeMap<String, String>,
        workspace: Workspace,
        out: &Output,
    ) -> Result<Prepared, BuildError> {
        let ignore = read_slugignore(push, out).await?;
        let ssh_key = config
            .get(SSH_KEY)
            .map(|value| input::decode_ssh_key(value));
        let redactor = Redactor::for_build(config, ssh_key.as_deref(), &self.own_secrets());
        let fetcher = Fetcher::new(&self.settings, ssh_key.clone());
        let buildpacks = self
            .fetch_buildpacks(push, config, &fetcher, &workspace, out)
            .await?;
        let (buildpacks, cnb) = self
            .select_cnb(push, buildpacks, &fetcher, &workspace, out)
            .await?;
        // A CNB slug's launch layers are not the app's files: .slugignore leaves them be.
        let ignore = match cnb {
            Some(_) => ignore.keeping(deis_cnb::CNB_DIR),
            None => ignore,
        };
        let submodules =
            submodule::fetch_all(&push.source, &push.commit, &fetcher, &workspace, out).await?;
        let cache = self.prepare_cache(push, config, &workspace, out).await;
        // The driver runs every buildpack listed, in order, without detection.
        let selection = match (&cnb, &buildpacks) {
            (Some(_), _) => "cnb",
            (None, Some(_)) => "listed",
            (None, None) => "detect",
        };
        let archive = BuildInputs {
            push_env: format!(
                "SOURCE_VERSION={}\nBUILDPACK_SELECTION={selection}\n",
                push.commit
            ),
            config: config.clone(),
            cache: cache.restored().map(|r| r.path.clone()),
            buildpacks,
            ssh_key,
            ca_bundle: self.stack.ca_bundle.clone(),
            submodules,
            cnb,
        };
        Ok(Prepared {
            workspace,
            ignore,
            compile: CompileInputs {
                archive,
                redactor,
                cache,
                started_early: false,
            },
        })
    }

    /// Runs the buildpacks: the input copied in, the driver started and followed to its
    /// exit, and then the cache saved.
    async fn compile(
        &self,
        container: &dyn Job,
        push: &Push,
        out: &Output,
        times: &StageTimes,
        inputs: CompileInputs,
        workspace: &Workspace,
    ) -> Result<(), BuildError> {
        times
            .time(
                Stage::Container,
                Self::copy_in_and_start(container, inputs.started_early, push, inputs.archive),
            )
            .await?;
        times
            .time(
                Stage::Compile,
                self.await_driver(container, out, inputs.redactor),
            )
            .await?;
        if let CacheUse::Enabled { restored } = &inputs.cache {
            let previous = restored.as_ref().map(|r| r.sha256.as_str());
            times
                .time(
                    Stage::Cache,
                    self.save_cache(push, container, previous, workspace, out),
                )
                .await;
        }
        Ok(())
    }

    /// Tells the developer what the slug runs and how large it is, and stores its Procfile
    /// beside it.
    async fn publish_process_types(
        &self,
        packed: &slug::PackedSlug,
        keys: &Keys,
        journal: &RollbackJournal,
        out: &Output,
        times: &StageTimes,
    ) -> Result<Built, BuildError> {
        let types = process_types(packed)?;
        out.step("Discovering process types").await;
        out.detail(describe_types(packed, &types)).await;
        self.report_slug_size(packed.compressed_bytes, out).await;
        let procfile = types.to_procfile();
        times
            .time(
                Stage::Upload,
                journal.put(&keys.procfile, std::io::Cursor::new(procfile.into_bytes())),
            )
            .await?;
        Ok(Built {
            artifact: Artifact::Slug(keys.slug.clone()),
            process_types: types,
        })
    }

    async fn report_slug_size(&self, compressed_bytes: u64, out: &Output) {
        let size = deis_types::units::human_size(compressed_bytes);
        out.step(format!("Compiled slug size is {size}")).await;
        if compressed_bytes > self.settings.slug_warn_bytes {
            out.error(format!(
                "Warning: the slug is {size}, over the recommended {}; large slugs slow down \
                 deploys and scaling (use .slugignore to leave files out)",
                deis_types::units::human_size(self.settings.slug_warn_bytes)
            ))
            .await;
        }
    }

    /// `BUILDPACK_URL` wins over `.buildpacks`; neither means the built-in buildpacks.
    async fn fetch_buildpacks(
        &self,
        push: &Push,
        config: &BTreeMap<String, String>,
        fetcher: &Fetcher,
        workspace: &Workspace,
        out: &Output,
    ) -> Result<Option<Vec<FetchedBuildpack>>, BuildError> {
        if let Some(text) = config.get(BUILDPACK_URL).filter(|v| !v.trim().is_empty()) {
            let url = BuildpackUrl::parse(text)?;
            out.step("Fetching custom buildpack").await;
            let fetched = fetcher.fetch(&url, 0, workspace).await?;
            out.detail(describe_fetched(&url, &fetched)).await;
            return Ok(Some(vec![fetched]));
        }
        let Some(text) = push
            .source
            .read_file(&push.commit, ".buildpacks", MAX_BUILDPACKS_FILE)
            .await?
        else {
            return Ok(None);
        };
        let urls = fetch::parse_buildpacks_file(&String::from_utf8_lossy(&text))?;
        if urls.is_empty() {
            return Ok(None);
        }
        let mut fetched = Vec::with_capacity(urls.len());
        for (index, url) in urls.iter().enumerate() {
            out.line(format!("=====> Downloading Buildpack: {url}"))
                .await;
            let buildpack = fetcher.fetch(url, index, workspace).await?;
            out.detail(describe_fetched(url, &buildpack)).await;
            fetched.push(buildpack);
        }
        Ok(Some(fetched))
    }

    /// The cache to build with, or none: `DEIS_DISABLE_CACHE` deletes the stored one.
    async fn prepare_cache(
        &self,
        push: &Push,
        config: &BTreeMap<String, String>,
        workspace: &Workspace,
        out: &Output,
    ) -> CacheUse {
        if !config.contains_key(DISABLE_CACHE) {
            let restored = self.restore_cache(push, workspace, out).await;
            return CacheUse::Enabled { restored };
        }
        if let Err(error) = cache::purge(self.store.as_ref(), &push.app).await {
            tracing::warn!(%error, "cannot delete the build cache");
        }
        out.step(format!(
            "Cache disabled by {DISABLE_CACHE}: building without one"
        ))
        .await;
        CacheUse::Disabled
    }

    /// The app's cache, verified, or nothing (first build, or an unreadable cache).
    async fn restore_cache(
        &self,
        push: &Push,
        workspace: &Workspace,
        out: &Output,
    ) -> Option<RestoredCache> {
        match cache::restore(self.store.as_ref(), &push.app, workspace.path()).await {
            Restore::Empty => None,
            Restore::Restored(restored) => {
                out.step(format!(
                    "Restoring cache ({})",
                    deis_types::units::human_size(restored.compressed_bytes)
                ))
                .await;
                Some(restored)
            }
            Restore::Discarded(reason) => {
                out.error(format!(
                    "Warning: the build cache was unreadable ({reason}); it was discarded \
                     and this build runs without it"
                ))
                .await;
                None
            }
        }
    }

    /// Stores CACHE_DIR when it changed. A failure only costs the next build time.
    async fn save_cache(
        &self,
        push: &Push,
        container: &dyn Job,
        previous: Option<&str>,
        workspace: &Workspace,
        out: &Output,
    ) {
        let saved = cache::save(
            self.store.as_ref(),
            &push.app,
            container,
            previous,
            workspace.path(),
        )
        .await;
        match saved {
            Ok(Saved::Empty) => {}
            Ok(Saved::Unchanged) => out.step("Cache unchanged").await,
            Ok(Saved::Stored { compressed_bytes }) => {
                out.step(format!(
                    "Cache saved ({})",
                    deis_types::units::human_size(compressed_bytes)
                ))
                .await
            }
            Err(error) => {
                tracing::warn!(%error, "cannot save the build cache");
                out.error(format!("Warning: cannot save the build cache: {error}"))
                    .await;
            }
        }
    }

    /// The build container of a push: nothing in it depends on the pushed commit (that
    /// comes in `/build/push.env`), so it can be created while the push is received.
    /// Started early, it waits for [`GO_SIGNAL`] before it runs the driver.
    fn container_spec(
        &self,
        app: &AppName,
        push_id: &str,
        workspace: &Workspace,
        start_early: bool,
    ) -> BuildContainerSpec {
        let mut env = vec![
            "HOME=/app".into(),
            "APP_DIR=/app".into(),
            format!("STACK={}", self.stack.name),
            format!("REQUEST_ID={push_id}"),
            format!("DEIS_APP={app}"),
            // Lets buildpacks explain a failed download in a sealed build.
            format!("DEIS_BUILD_NETWORK={}", self.settings.network),
        ];
        env.extend(self.stack.ca_env());
        env.extend(
            self.settings
                .egress
                .proxy_env()
                .into_iter()
                .map(|(name, value)| format!("{name}={value}")),
        );
        BuildContainerSpec {
            image: self.settings.stack_image.clone(),
            cmd: if start_early {
                // Polls often for the first second (a small push's pack has arrived by
                // then), then ten times a second, so a long receive costs next to nothing.
                let wait = format!(
                    "n=0; until [ -e {GO_SIGNAL} ]; do \
                     if [ $n -lt 200 ]; then n=$((n+1)); sleep 0.005; else sleep 0.1; fi; \
                     done; exec /bin/bash {}",
                    input::DRIVER
                );
                vec!["/bin/sh".into(), "-c".into(), wait]
            } else {
                vec!["/bin/bash".into(), input::DRIVER.into()]
            },
            env,
            user: format!("{uid}:{uid}", uid = input::BUILD_UID),
            network: self.settings.network.clone(),
            memory_bytes: self.settings.memory_bytes,
            pids_limit: self.settings.pids_limit,
            app: app.to_string(),
            push_id: push_id.to_owned(),
            // With a local engine, /app and the cache live here instead of being copied.
            files_dir: Some(workspace.path().join("files")),
        }
    }

    /// Copies the input (source, config, cache, buildpacks) in and starts the driver: by
    /// starting the container, or, when it was started early and waits, by giving the
    /// signal once every input file is in place.
    async fn copy_in_and_start(
        container: &dyn Job,
        started_early: bool,
        push: &Push,
        inputs: BuildInputs,
    ) -> Result<(), BuildError> {
        let source = push.source.archive(&push.commit)?;
        container
            .upload(blocking_writer(source, move |source, w| {
                let extras = input::Extras {
                    cache: inputs.cache.as_deref(),
                    buildpacks: inputs.buildpacks.as_deref(),
                    ssh_key: inputs.ssh_key.as_deref(),
                    ca_bundle: inputs.ca_bundle.as_deref(),
                    submodules: &inputs.submodules,
                    push_env: &inputs.push_env,
                    keep_source: inputs.cnb.as_ref().and_then(|cnb| cnb.filter.as_deref()),
                    cnb_driver: inputs.cnb.as_ref().map(|cnb| cnb.driver.as_path()),
                };
                input::write(source, &inputs.config, &extras, w)
            }))
            .await?;
        if started_early {
            container.upload(go_signal()?).await?;
        } else {
            container.start().await?;
        }
        Ok(())
    }

    /// Streams the driver's output live (secrets redacted) and waits for it to exit.
    async fn await_driver(
        &self,
        container: &dyn Job,
        out: &Output,
        redactor: Redactor,
    ) -> Result<(), BuildError> {
        let relay = async {
            let mut shown = RedactedOutput::new(out, redactor);
            let mut output = container.output();
            while let Some(chunk) = output.next().await {
                match chunk {
                    Ok(data) => shown.write(&data).await,
                    Err(error) => tracing::warn!(%error, "build output interrupted"),
                }
            }
            shown.finish().await;
        };
        let timeout = self.settings.timeout;
        let code = tokio::time::timeout(timeout, async { tokio::join!(relay, container.wait()).1 })
            .await
            .map_err(|_| BuildError::Timeout(timeout))??;
        match code {
            0 => Ok(()),
            2 => Err(BuildError::NoBuildpack),
            // Killed by a signal we did not send: if the engine is gone, it stopped (and
            // took the build with it); say so rather than blame the build.
            code if code > 128 && self.executor.ping().await.is_err() => {
                Err(BuildError::EngineLost(format!(
                    "the engine stopped during the build, which was killed (exit status {code})"
                )))
            }
            code => Err(BuildError::BuildFailed(code)),
        }
    }

    /// Streams `/app` out of the container, through the slug packer, into object storage.
    /// A slug over the size limit is not stored: the upload is aborted once it passes the
    /// limit, and the rest is only counted so the developer learns the real size.
    async fn pack_and_store(
        &self,
        container: &dyn Job,
        ignore: SlugIgnore,
        keys: &Keys,
        journal: &RollbackJournal,
        times: &StageTimes,
    ) -> Result<slug::PackedSlug, BuildError> {
        let pack_started = Instant::now();
        let (packer, slug_stream) = spawn_packer(container.download("/app"), ignore);
        let body = SizeLimit {
            inner: StreamReader::new(slug_stream),
            read: 0,
            limit: self.settings.slug_max_bytes,
        };
        let (stored, mut body) = match journal.put_body(&keys.slug, body).await {
            Ok((stored, body)) => (stored.map_err(BuildError::from), Some(body)),
            Err(error) => (Err(error), None),
        };
        let exceeded = body.as_ref().is_some_and(SizeLimit::exceeded);
        if let (Some(body), true) = (&mut body, exceeded) {
            // Keep the packer going to its end so the message can give the full size.
            let _ = tokio::io::copy(&mut body.inner, &mut tokio::io::sink()).await;
        }
        // After a failed upload nobody reads the pipe any more: dropping it makes the
        // packer's next write fail instead of blocking forever on a full pipe.
        drop(body);
        let (packed, packer_done) = packer
            .await
            .map_err(|e| io::Error::other(format!("slug packer crashed: {e}")))?;
        times.add(
            Stage::Pack,
            packer_done.saturating_duration_since(pack_started),
        );
        times.add(Stage::Upload, packer_done.elapsed());
        // An upload error wins over the packer's (which only says the pipe closed); an
        // oversize slug is reported below with its full size.
        if let (Err(error), false) = (stored, exceeded) {
            return Err(error);
        }
        let packed = packed?;
        if exceeded || packed.compressed_bytes > self.settings.slug_max_bytes {
            return Err(BuildError::SlugTooLarge {
                size: deis_types::units::human_size(packed.compressed_bytes),
                limit: deis_types::units::human_size(self.settings.slug_max_bytes),
            });
        }
        tracing::info!(sha256 = %packed.sha256, bytes = packed.compressed_bytes, "slug stored");
        deis_metrics::slug_stored(packed.compressed_bytes);
        Ok(packed)
    }
}

/// What `.slugignore` leaves out of the slug; its warnings go to the developer.
async fn read_slugignore(push: &Push, out: &Output) -> Result<SlugIgnore, BuildError> {
    let ignore = match push
        .source
        .read_file(&push.commit, ".slugignore", MAX_SLUGIGNORE)
        .await?
    {
        Some(text) => SlugIgnore::parse(&String::from_utf8_lossy(&text)),
        None => SlugIgnore::empty(),
    };
    for warning in ignore.warnings() {
        out.error(format!("Warning: {warning}")).await;
    }
    Ok(ignore)
}

fn describe_fetched(url: &BuildpackUrl, fetched: &FetchedBuildpack) -> String {
    match url.kind {
        UrlKind::Git => {
            let short: String = fetched.version.chars().take(8).collect();
            format!("{url} at {short}")
        }
        UrlKind::Tarball => url.to_string(),
    }
}

/// The packer's result, and when it wrote its last byte (where `Stage::Pack` ends).
type Packer = tokio::task::JoinHandle<(Result<slug::PackedSlug, slug::SlugError>, Instant)>;

/// Packs the downloaded `/app` tree into a slug on a blocking thread; the slug streams out
/// of the returned pipe as it is written.
fn spawn_packer(app_tree: ByteStream, ignore: SlugIgnore) -> (Packer, ByteStream) {
    let app_tree = SyncIoBridge::new(StreamReader::new(app_tree));
    let (mut writer, slug_stream) = deis_types::pipe::pipe(8);
    let packer = tokio::task::spawn_blocking(move || {
        let options = PackOptions {
            strip_prefix: "app/",
            ignore: &ignore,
        };
        let packed = match slug::pack(app_tree, &mut writer, &options) {
            Ok(packed) => writer
                .finish()
                .map(|()| packed)
                .map_err(slug::SlugError::Io),
            Err(error) => {
                writer.fail(io::Error::other(error.to_string()));
                Err(error)
            }
        };
        (packed, Instant::now())
    });
    (packer, slug_stream)
}

/// Fails the read once more than `limit` bytes went through, so storage aborts the upload.
struct SizeLimit<R> {
    inner: R,
    read: u64,
    limit: u64,
}

impl<R> SizeLimit<R> {
    fn exceeded(&self) -> bool {
        self.read > self.limit
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for SizeLimit<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.exceeded() {
            return Poll::Ready(Err(io::Error::other("the slug is over the size limit")));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.read += (buf.filled().len() - before) as u64;
            if self.exceeded() {
                return Poll::Ready(Err(io::Error::other("the slug is over the size limit")));
            }
        }
        polled
    }
}

/// Process types: the app's Procfile wins; otherwise the buildpack's defaults.
fn process_types(packed: &slug::PackedSlug) -> Result<ProcessTypes, BuildError> {
    if let Some(procfile) = &packed.procfile {
        return Ok(slug::parse_procfile(procfile)?);
    }
    match &packed.release {
        Some(release) => Ok(slug::parse_release_process_types(release)?),
        None => Ok(ProcessTypes(BTreeMap::new())),
    }
}

fn describe_types(packed: &slug::PackedSlug, types: &ProcessTypes) -> String {
    let names = types.names().join(", ");
    match (packed.procfile.is_some(), types.is_empty()) {
        (_, true) => "No process types declared (add a Procfile)".to_owned(),
        (true, false) => format!("Procfile declares types -> {names}"),
        (false, false) => format!("Default types for buildpack -> {names}"),
    }
}

/// A build container created while its push was received, with the workspace its files
/// live in.
pub struct WarmBuild {
    workspace: Workspace,
    job: Box<dyn Job>,
}

/// Build containers being created (or created) for pushes still being received, by push
/// id. The run takes its own; whatever is left when the push is over is removed.
#[derive(Default)]
pub struct WarmBuilds {
    by_push: Mutex<HashMap<String, JoinHandle<Option<WarmBuild>>>>,
}

impl std::fmt::Debug for WarmBuilds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmBuilds").finish_non_exhaustive()
    }
}

impl WarmBuilds {
    fn insert(&self, push_id: &str, creating: JoinHandle<Option<WarmBuild>>) {
        if let Some(replaced) = self.lock().insert(push_id.to_owned(), creating) {
            replaced.abort();
        }
    }

    /// The push's container, once created; `None` when there is none or creating it failed.
    async fn take(&self, push_id: &str) -> Option<WarmBuild> {
        let creating = self.lock().remove(push_id)?;
        creating.await.ok().flatten()
    }

    /// Removes what was prepared for a push that did not use it (refused, a Dockerfile
    /// build, a client gone): its container, then its workspace.
    pub async fn discard(&self, push_id: &str) {
        let Some(creating) = self.lock().remove(push_id) else {
            return;
        };
        if let Ok(Some(WarmBuild { workspace, job })) = creating.await {
            if let Err(error) = job.remove().await {
                tracing::warn!(%error, "cannot remove an unused build container");
            }
            drop(workspace);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, JoinHandle<Option<WarmBuild>>>> {
        self.by_push
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Pipeline {
    /// Starts creating the push's build container while the push is received, so the
    /// build does not wait for it. A failure is only logged: the build creates its own.
    pub(super) fn warm_up(&self, app: &AppName, push_id: &str) {
        let workspace = match Workspace::create(&self.settings.work_dir, push_id) {
            Ok(workspace) => workspace,
            Err(error) => {
                tracing::debug!(%error, "no workspace for an early build container");
                return;
            }
        };
        let spec = self.container_spec(app, push_id, &workspace, true);
        let executor = self.executor.clone();
        let creating = tokio::spawn(async move {
            // Started too: starting is the slow part. It runs nothing of the push's until
            // the build gives the signal; unused, it is removed with the push.
            let started = async {
                let job = executor.create(&spec).await?;
                job.start().await?;
                Ok::<_, deis_executor::EngineError>(job)
            };
            match started.await {
                Ok(job) => Some(WarmBuild { workspace, job }),
                Err(error) => {
                    tracing::debug!(%error, "cannot start a build container early");
                    None
                }
            }
        });
        self.warm.insert(push_id, creating);
    }
}

/// The file a build container started early waits for: it arrives after every input file.
const GO_SIGNAL: &str = "/build/.go";

fn go_signal() -> std::io::Result<ByteStream> {
    let mut tar = deis_slug::tar_writer::TarWriter::new(Vec::new(), input::BUILD_UID, 0);
    tar.file(GO_SIGNAL.trim_start_matches('/'), 0o644, b"")?;
    let archive = bytes::Bytes::from(tar.finish()?);
    Ok(Box::pin(futures_util::stream::once(
        async move { Ok(archive) },
    )))
}
