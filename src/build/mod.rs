//! One build, from a received push to a released slug. Knows nothing of SSH: it gets a
//! [`Push`], writes progress to an [`Output`] and returns a [`Verdict`].

mod input;

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::BuildSettings;
use crate::controller::{BuildHook, Controller, ControllerError};
use crate::engine::{BuildContainer, BuildContainerSpec, Engine, EngineError};
use crate::git::GitError;
use crate::names::AppName;
use crate::pipe::ByteStream;
use crate::push::{Output, Push, PushRunner, Verdict};
use crate::slug::{self, PackOptions, ProcessTypes, SlugIgnore};
use crate::storage::{ObjectStore, StorageError};

/// The stack name buildpacks see in `$STACK`.
pub const STACK: &str = "deis-bookworm";
/// Largest `.slugignore` we read.
const MAX_SLUGIGNORE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Controller(#[from] ControllerError),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Git(#[from] GitError),
    #[error("invalid config var name {0:?}: use letters, digits and underscores")]
    ConfigName(String),
    #[error("no buildpack matched this app")]
    NoBuildpack,
    #[error("the build exited with status {0}")]
    BuildFailed(i64),
    #[error("the build took longer than {0:?} and was stopped")]
    Timeout(Duration),
    #[error("{0}")]
    Slug(#[from] slug::SlugError),
    #[error("{0}")]
    Procfile(#[from] slug::ProcfileError),
    #[error("cannot read the buildpack's release output: {0}")]
    Release(#[from] slug::ReleaseError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Object keys of one build, in the Deis layout.
#[derive(Debug, Clone)]
pub struct Keys {
    pub source: String,
    pub slug: String,
    pub procfile: String,
}

impl Keys {
    pub fn new(app: &AppName, sha8: &str) -> Keys {
        let base = format!("home/{app}:git-{sha8}");
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
    pub engine: Engine,
    pub settings: BuildSettings,
}

#[async_trait::async_trait]
impl PushRunner for Pipeline {
    async fn run(&self, push: Push, out: Output, cancel: CancellationToken) -> Verdict {
        let span = tracing::info_span!(
            "push", id = %push.id, app = %push.app, user = %push.user, sha = %push.commit.short()
        );
        async {
            let started = Instant::now();
            let published = Published::new(self.store.clone());
            let outcome = tokio::select! {
                outcome = self.build_and_release(&push, &out, &published) => Some(outcome),
                () = cancel.cancelled() => None,
            };
            match outcome {
                Some(Ok(version)) => {
                    tracing::info!(
                        version,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "deployed"
                    );
                    Verdict::Accept
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "push rejected");
                    out.error(format!("Build failed: {error}")).await;
                    published.roll_back().await;
                    Verdict::Reject
                }
                None => {
                    tracing::warn!(
                        "push cancelled: the client went away or the server is stopping"
                    );
                    published.roll_back().await;
                    Verdict::Reject
                }
            }
        }
        .instrument(span)
        .await
    }
}

impl Pipeline {
    async fn build_and_release(
        &self,
        push: &Push,
        out: &Output,
        published: &Published,
    ) -> Result<u64, BuildError> {
        let keys = Keys::new(&push.app, push.commit.short());
        let config = self
            .controller
            .app_config(&push.user, push.app.as_str())
            .await?;
        if let Some(bad) = config.values.keys().find(|k| !input::valid_config_name(k)) {
            return Err(BuildError::ConfigName(crate::names::printable(bad)));
        }

        let mut source_tar = StreamReader::new(push.source.archive(&push.commit)?);
        published.put(&keys.source, &mut source_tar).await?;

        let ignore = match push
            .source
            .read_file(&push.commit, ".slugignore", MAX_SLUGIGNORE)
            .await?
        {
            Some(text) => SlugIgnore::parse(&String::from_utf8_lossy(&text)),
            None => SlugIgnore::empty(),
        };
        for warning in ignore.warnings() {
            out.detail(format!(".slugignore: {warning}")).await;
        }

        let container = self
            .engine
            .create_build_container(&self.container_spec(push))
            .await?;
        let built = self.compile(&container, push, &config.values, out).await;
        let packed = match built {
            Ok(()) => {
                self.pack_and_store(&container, ignore, &keys, published)
                    .await
            }
            Err(error) => Err(error),
        };
        // Removed on every path; on cancellation the container's drop removes it instead.
        if let Err(error) = container.remove().await {
            tracing::error!(%error, "cannot remove build container");
        }
        let packed = packed?;

        let types = process_types(&packed)?;
        out.step("Discovering process types").await;
        if let Some(warning) = describe_types(&packed, &types) {
            out.detail(warning).await;
        }
        out.step(format!(
            "Compiled slug size is {}",
            human_size(packed.compressed_bytes)
        ))
        .await;
        let procfile = types.to_procfile();
        published
            .put(&keys.procfile, &mut procfile.as_bytes())
            .await?;

        out.line("Build complete.").await;
        out.line("Launching App...").await;
        let version = self
            .controller
            .release(&BuildHook {
                user: &push.user,
                app: push.app.as_str(),
                sha: push.commit.as_str(),
                image: &keys.slug,
                procfile: &types.0,
                dockerfile: false,
            })
            .await?;
        published.keep();
        out.line(format!("Done, {}:v{version} deployed", push.app))
            .await;
        Ok(version)
    }

    fn container_spec(&self, push: &Push) -> BuildContainerSpec {
        BuildContainerSpec {
            image: self.settings.stack_image.clone(),
            cmd: vec!["/bin/bash".into(), input::DRIVER.into()],
            env: vec![
                "HOME=/app".into(),
                "APP_DIR=/app".into(),
                format!("STACK={STACK}"),
                format!("SOURCE_VERSION={}", push.commit),
                format!("REQUEST_ID={}", push.id),
                format!("DEIS_APP={}", push.app),
            ],
            user: format!("{uid}:{uid}", uid = input::BUILD_UID),
            network: self.settings.network.clone(),
            memory_bytes: self.settings.memory_bytes,
            pids_limit: self.settings.pids_limit,
            app: push.app.to_string(),
            push_id: push.id.clone(),
        }
    }

    /// Copies the input in, runs the driver with its output streamed live, waits for it.
    async fn compile(
        &self,
        container: &BuildContainer,
        push: &Push,
        config: &BTreeMap<String, String>,
        out: &Output,
    ) -> Result<(), BuildError> {
        let source = push.source.archive(&push.commit)?;
        let config = config.clone();
        container
            .upload(blocking_writer(source, move |source, w| {
                input::write(source, &config, w)
            }))
            .await?;
        container.start().await?;
        let relay = async {
            let mut output = std::pin::pin!(container.output());
            while let Some(chunk) = output.next().await {
                match chunk {
                    Ok(data) => out.bytes(data).await,
                    Err(error) => tracing::warn!(%error, "build output interrupted"),
                }
            }
        };
        let timeout = self.settings.timeout;
        let code = tokio::time::timeout(timeout, async { tokio::join!(relay, container.wait()).1 })
            .await
            .map_err(|_| BuildError::Timeout(timeout))??;
        match code {
            0 => Ok(()),
            2 => Err(BuildError::NoBuildpack),
            code => Err(BuildError::BuildFailed(code)),
        }
    }

    /// Streams `/app` out of the container, through the slug packer, into object storage.
    async fn pack_and_store(
        &self,
        container: &BuildContainer,
        ignore: SlugIgnore,
        keys: &Keys,
        published: &Published,
    ) -> Result<slug::PackedSlug, BuildError> {
        let download: ByteStream = Box::pin(container.download("/app"));
        let app_tree = SyncIoBridge::new(StreamReader::new(download));
        let (mut writer, slug_stream) = crate::pipe::pipe(8);
        let packer = tokio::task::spawn_blocking(move || {
            let options = PackOptions {
                strip_prefix: "app/",
                ignore: &ignore,
            };
            match slug::pack(app_tree, &mut writer, &options) {
                Ok(packed) => writer
                    .finish()
                    .map(|()| packed)
                    .map_err(slug::SlugError::Io),
                Err(error) => {
                    writer.fail(io::Error::other(error.to_string()));
                    Err(error)
                }
            }
        });
        let mut body = StreamReader::new(slug_stream);
        let stored = published.put(&keys.slug, &mut body).await;
        let packed = packer
            .await
            .map_err(|e| io::Error::other(format!("slug packer crashed: {e}")))??;
        stored?;
        tracing::info!(sha256 = %packed.sha256, bytes = packed.compressed_bytes, "slug stored");
        Ok(packed)
    }
}

/// Runs a blocking writer over an async byte stream, producing an async byte stream.
fn blocking_writer<F>(input: ByteStream, write: F) -> ByteStream
where
    F: FnOnce(
            SyncIoBridge<StreamReader<ByteStream, bytes::Bytes>>,
            &mut crate::pipe::PipeWriter,
        ) -> io::Result<()>
        + Send
        + 'static,
{
    let reader = SyncIoBridge::new(StreamReader::new(input));
    let (mut writer, output) = crate::pipe::pipe(8);
    tokio::task::spawn_blocking(move || match write(reader, &mut writer) {
        Ok(()) => {
            let _ = writer.finish();
        }
        Err(error) => writer.fail(error),
    });
    output
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

fn describe_types(packed: &slug::PackedSlug, types: &ProcessTypes) -> Option<String> {
    let names = types.names().join(", ");
    Some(match (packed.procfile.is_some(), types.is_empty()) {
        (_, true) => "No process types declared (add a Procfile)".to_owned(),
        (true, false) => format!("Procfile declares types -> {names}"),
        (false, false) => format!("Default types for buildpack -> {names}"),
    })
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "K", "M", "G"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit < UNITS.len() - 1 {
        size /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{size:.1}{}", UNITS[unit])
    }
}

/// Objects this push created, deleted again if the push does not land, so a failed push
/// leaves nothing behind. Objects that existed before (the same commit pushed earlier) stay.
struct Published {
    store: Arc<dyn ObjectStore>,
    created: Mutex<Vec<String>>,
}

impl Published {
    fn new(store: Arc<dyn ObjectStore>) -> Published {
        Published {
            store,
            created: Mutex::new(Vec::new()),
        }
    }

    async fn put(
        &self,
        key: &str,
        body: &mut (dyn tokio::io::AsyncRead + Send + Unpin),
    ) -> Result<u64, StorageError> {
        let existed = self.store.exists(key).await?;
        let written = self.store.put(key, body).await?;
        if !existed {
            self.created_keys().push(key.to_owned());
        }
        Ok(written)
    }

    /// The release was cut: everything stays.
    fn keep(&self) {
        self.created_keys().clear();
    }

    async fn roll_back(&self) {
        let keys = std::mem::take(&mut *self.created_keys());
        for key in keys {
            if let Err(error) = self.store.delete(&key).await {
                tracing::error!(%error, %key, "cannot delete object of a failed push");
            }
        }
    }

    fn created_keys(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.created.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deis_key_layout() {
        let keys = Keys::new(&AppName::parse("myapp").unwrap(), "1234abcd");
        assert_eq!(keys.source, "home/myapp:git-1234abcd/tar");
        assert_eq!(keys.slug, "home/myapp:git-1234abcd/push/slug.tgz");
        assert_eq!(keys.procfile, "home/myapp:git-1234abcd/push/Procfile");
    }

    #[test]
    fn sizes_read_like_heroku() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1536), "1.5K");
        assert_eq!(human_size(3 << 20), "3.0M");
    }
}
