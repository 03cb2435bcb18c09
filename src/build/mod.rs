//! One build, from a received push to a released slug. Knows nothing of SSH: it gets a
//! [`Push`], writes progress to an [`Output`] and returns a [`Verdict`].

mod buildpack;
pub mod cache;
mod dockerfile;
mod fetch;
mod import;
mod input;
mod redact;

pub use import::{ImportRequest, Imported};

use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::BuildSettings;
use crate::controller::{BuildHook, Controller, ControllerError};
use crate::engine::{Engine, EngineError};
use crate::git::GitError;
use crate::names::AppName;
use crate::pipe::ByteStream;
use crate::push::{Output, Push, PushRunner, Verdict};
use crate::slug::{self, ProcessTypes};
use crate::storage::{ObjectStore, StorageError};

/// The stack name buildpacks see in `$STACK`.
pub const STACK: &str = "deis-bookworm";

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
    #[error("{0}")]
    Plan(String),
    #[error("base image {image} is not in the Docker engine and cannot be pulled here ({detail})")]
    MissingBaseImage { image: String, detail: String },
    #[error("no buildpack matched this app")]
    NoBuildpack,
    #[error("{0}")]
    Fetch(#[from] fetch::FetchError),
    #[error("the compiled slug is {size}, over the limit of {limit}")]
    SlugTooLarge { size: String, limit: String },
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
            let built = tokio::select! {
                built = self.build(&push, &out, &published) => Some(built),
                () = cancel.cancelled() => None,
            };
            let artifact = match built {
                Some(Ok(artifact)) => artifact,
                Some(Err(error)) => {
                    tracing::warn!(%error, "push rejected");
                    out.error(format!("Build failed: {error}")).await;
                    published.roll_back().await;
                    return Verdict::Reject;
                }
                None => {
                    tracing::warn!(
                        "push cancelled: the client went away or the server is stopping"
                    );
                    published.roll_back().await;
                    return Verdict::Reject;
                }
            };
            // Not raced against cancellation: once asked, the controller may cut the release
            // whether or not we wait, and its objects must then stay (the call has a timeout).
            match self.release(&push, &artifact, &out).await {
                Ok(version) => {
                    published.keep();
                    tracing::info!(
                        version,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "deployed"
                    );
                    Verdict::Accept
                }
                Err(error) => {
                    tracing::warn!(%error, "release failed");
                    out.error(format!("Build failed: {error}")).await;
                    let ambiguous =
                        matches!(&error, BuildError::Controller(e) if e.is_unreachable());
                    if ambiguous {
                        // The controller may have released it: keep what it would point to.
                        tracing::warn!("release outcome unknown; keeping the build's objects");
                    } else {
                        published.roll_back().await;
                    }
                    Verdict::Reject
                }
            }
        }
        .instrument(span)
        .await
    }
}

impl Pipeline {
    /// Everything up to the release: config, source tarball, and the build itself.
    async fn build(
        &self,
        push: &Push,
        out: &Output,
        published: &Published,
    ) -> Result<Artifact, BuildError> {
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

        let artifact = match self.plan(push, &config.values).await? {
            Plan::Buildpack => {
                self.buildpack_build(push, &config.values, out, published, &keys)
                    .await?
            }
            Plan::Dockerfile => self.dockerfile_build(push, &config.values, out).await?,
        };
        out.line("Build complete.").await;
        Ok(artifact)
    }

    async fn release(
        &self,
        push: &Push,
        artifact: &Artifact,
        out: &Output,
    ) -> Result<u64, BuildError> {
        out.line("Launching App...").await;
        let version = self
            .controller
            .release(&BuildHook {
                user: &push.user,
                app: push.app.as_str(),
                sha: push.commit.as_str(),
                image: &artifact.image,
                procfile: &artifact.process_types.0,
                dockerfile: artifact.dockerfile,
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
                "{BUILDER_SETTING}={} is neither `procfile` nor `dockerfile`",
                crate::names::printable(other)
            ))),
        }
    }
}

/// What a build produced, for the release.
#[derive(Debug)]
pub struct Artifact {
    /// The slug's object key, or the image reference.
    pub image: String,
    pub process_types: ProcessTypes,
    pub dockerfile: bool,
}

/// Runs a blocking writer over an async byte stream, producing an async byte stream.
pub(crate) fn blocking_writer<F>(input: ByteStream, write: F) -> ByteStream
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
}
