//! The only code that talks to the Docker engine: build containers, their input and
//! output archives, and the start-up sweep of anything a previous run left behind.
//!
//! The build pipeline sees the engine through two narrow traits: [`Executor`] (build
//! containers, as [`Job`]s) and [`Images`] (Dockerfile builds, pushes, pulls, tags).
//! [`Engine`] implements both; [`fake`] runs builds in-process for pipeline tests.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

/// The in-process executor of the pipeline's own tests (feature `fake`).
#[cfg(any(test, feature = "fake"))]
pub mod fake;
mod images;
mod registry;
pub mod shared;

pub use images::{ImageBuild, Images, LineStream, RegistryAuth};
pub use registry::{RegistryApi, RegistryTag, TagRemoval};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};

use deis_types::pipe::ByteStream;

/// Every container we create carries this label (value: the builder instance id).
pub const LABEL_INSTANCE: &str = "io.deis.builder.instance";
pub const LABEL_APP: &str = "io.deis.builder.app";
pub const LABEL_PUSH: &str = "io.deis.builder.push";

/// Where a build's cache lives in its container (CACHE_DIR).
pub const CACHE_DIR: &str = "/build/cache";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach the Docker engine: {0}")]
    Connect(String),
    #[error(
        "stack image {0} is not in the Docker engine (build it with the project's set-up script)"
    )]
    MissingImage(String),
    #[error(
        "the Docker engine has no network {0:?} for builds: on an engine without a bridge network use --build-network host, or none for builds without network"
    )]
    MissingNetwork(String),
    #[error("the Docker build failed: {0}")]
    BuildFailed(String),
    #[error("the registry refused the image: {0}")]
    Registry(String),
    #[error("cannot pull the image: {0}")]
    Pull(String),
    #[error("Docker engine error while {action}: {message}")]
    Api {
        action: &'static str,
        message: String,
    },
}

fn api(action: &'static str) -> impl Fn(bollard::errors::Error) -> EngineError {
    move |e| EngineError::Api {
        action,
        message: e.to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    instance: String,
    /// Whether build containers share `/app` and CACHE_DIR with the builder's own
    /// filesystem (a local engine; see [`shared`]).
    share_files: bool,
}

/// What a buildpack build container looks like.
#[derive(Debug, Clone)]
pub struct BuildContainerSpec {
    pub image: String,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    pub network: String,
    pub memory_bytes: i64,
    pub pids_limit: i64,
    pub app: String,
    pub push_id: String,
    /// A directory of the push's workspace where the executor may keep the container's
    /// `/app` and CACHE_DIR, when it shares files with the builder.
    pub files_dir: Option<std::path::PathBuf>,
}

/// A build container's output (stdout and stderr interleaved), as it is written.
pub type OutputStream = Pin<Box<dyn Stream<Item = Result<Bytes, EngineError>> + Send + 'static>>;

/// Runs buildpack build containers: the Docker engine ([`Engine`]), or in-process for
/// pipeline tests ([`fake::FakeExecutor`]).
#[async_trait::async_trait]
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// Creates (does not start) a locked-down build container as `spec` says; it carries
    /// the instance, app and push labels.
    async fn create(&self, spec: &BuildContainerSpec) -> Result<Box<dyn Job>, EngineError>;

    /// Whether the executor is still there: asked when a build died of a signal the
    /// builder did not send, to tell an engine outage from a failed build.
    async fn ping(&self) -> Result<(), EngineError>;
}

/// One build container. The caller bounds [`Job::wait`] (build timeout, cancellation) and
/// then calls [`Job::remove`]; a job dropped without it (an error path, a cancelled push)
/// must still be killed and removed, so none outlives its build (invariant 4).
#[async_trait::async_trait]
pub trait Job: Send + Sync + std::fmt::Debug {
    fn id(&self) -> &str;

    /// Streams a tar archive into the container, unpacked at `/`.
    async fn upload(&self, tar: ByteStream) -> Result<(), EngineError>;

    async fn start(&self) -> Result<(), EngineError>;

    /// Everything the container writes, as it writes it; ends when the container stops.
    fn output(&self) -> OutputStream;

    /// The container's exit code once it stops. A build that never stops never returns:
    /// the caller's timeout or cancellation ends the wait.
    async fn wait(&self) -> Result<i64, EngineError>;

    /// A tar archive of `path` in the container; entries are named after its last
    /// component (`/app` gives `app/…`). A missing path fails the stream.
    fn download(&self, path: &str) -> ByteStream;

    /// Kills and removes the container.
    async fn remove(self: Box<Self>) -> Result<(), EngineError>;

    /// Whether the build certainly left `path` as the upload made it, so archiving it
    /// again can be skipped. `false` when the executor cannot tell cheaply.
    fn unchanged_since_upload(&self, _path: &str) -> bool {
        false
    }
}

impl Engine {
    /// Connects through `DOCKER_HOST` (or the default socket) and agrees on an API version
    /// both sides speak, rather than assuming the client's newest.
    pub async fn connect(
        instance: String,
        request_timeout: Duration,
    ) -> Result<Engine, EngineError> {
        let docker = Docker::connect_with_defaults()
            .map_err(|e| EngineError::Connect(e.to_string()))?
            .with_timeout(request_timeout)
            .negotiate_version()
            .await
            .map_err(|e| EngineError::Connect(e.to_string()))?;
        Ok(Engine {
            docker,
            instance,
            share_files: false,
        })
    }

    /// Turns on shared build files (see [`shared`]) when a probe container from `image`,
    /// running as `uid`, can write a bind-mounted directory of `work_dir` and the file
    /// arrives here with that owner: the engine runs on this machine, without uid
    /// remapping. Otherwise builds copy their files through the engine's archive API.
    pub async fn share_files_if_possible(
        mut self,
        work_dir: &Path,
        image: &str,
        uid: u32,
    ) -> Engine {
        match self.probe_shared_files(work_dir, image, uid).await {
            Ok(()) => {
                tracing::info!("build files are shared with the engine (local engine)");
                self.share_files = true;
            }
            Err(reason) => {
                tracing::info!(%reason, "build files are copied through the engine");
            }
        }
        self
    }

    async fn probe_shared_files(
        &self,
        work_dir: &Path,
        image: &str,
        uid: u32,
    ) -> Result<(), String> {
        let dir = work_dir.join(format!("share-probe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let result = self.run_share_probe(&dir, image, uid).await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    async fn run_share_probe(&self, dir: &Path, image: &str, uid: u32) -> Result<(), String> {
        std::os::unix::fs::lchown(dir, Some(uid), Some(uid))
            .map_err(|e| format!("cannot hand a directory to uid {uid}: {e}"))?;
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            cmd: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo shared > /probe/probe".into(),
            ]),
            user: Some(format!("{uid}:{uid}")),
            labels: Some(HashMap::from([(
                LABEL_INSTANCE.to_owned(),
                self.instance.clone(),
            )])),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                network_mode: Some("none".to_owned()),
                binds: Some(vec![format!("{}:/probe", dir.display())]),
                cap_drop: Some(vec!["ALL".to_owned()]),
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(None, body)
            .await
            .map_err(|e| format!("cannot create a probe container: {e}"))?;
        let container = Box::new(BuildContainer::new(self.docker.clone(), created.id, None));
        let ran = async {
            container.start().await?;
            container.wait().await
        };
        let code = tokio::time::timeout(Duration::from_secs(60), ran).await;
        let _ = container.remove().await;
        match code {
            Ok(Ok(0)) => {}
            Ok(Ok(code)) => return Err(format!("the probe container exited with status {code}")),
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => return Err("the probe container did not finish in 60s".into()),
        }
        let probe = dir.join("probe");
        let written =
            std::fs::read(&probe).map_err(|_| "the probe's file is not here".to_owned())?;
        let owner =
            std::fs::symlink_metadata(&probe).map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        if written != b"shared\n" || owner.ok() != Some(uid) {
            return Err("the probe's file arrived changed or with another owner".into());
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), EngineError> {
        self.docker
            .ping()
            .await
            .map(drop)
            .map_err(|e| EngineError::Connect(e.to_string()))
    }

    /// Fails unless the stack image is in the engine; returns its labels.
    pub async fn require_image(&self, image: &str) -> Result<HashMap<String, String>, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(inspected) => Ok(inspected
                .config
                .and_then(|config| config.labels)
                .unwrap_or_default()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(EngineError::MissingImage(image.to_owned())),
            Err(e) => Err(api("inspecting the stack image")(e)),
        }
    }

    /// Fails unless build containers can join the engine network `name`.
    pub async fn require_network(&self, name: &str) -> Result<(), EngineError> {
        match self.docker.inspect_network(name, None).await {
            Ok(_) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(EngineError::MissingNetwork(name.to_owned())),
            Err(e) => Err(api("inspecting the build network")(e)),
        }
    }

    /// One file of an image (at most `max_bytes`), read through a container that is
    /// created, never started, and removed. `None` when the image has no such file.
    pub async fn read_image_file(
        &self,
        image: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<Option<Vec<u8>>, EngineError> {
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            cmd: Some(vec!["true".to_owned()]),
            labels: Some(HashMap::from([(
                LABEL_INSTANCE.to_owned(),
                self.instance.clone(),
            )])),
            network_disabled: Some(true),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(None, body)
            .await
            .map_err(api("creating a container to read the stack image"))?;
        let container = BuildContainer::new(self.docker.clone(), created.id, None);
        let archive: Result<Vec<Bytes>, io::Error> = container.download(path).try_collect().await;
        Box::new(container).remove().await?;
        let archive = match archive {
            Ok(chunks) => chunks.concat(),
            // The engine answers 404 for a path the image does not have.
            Err(error) if error.to_string().contains("404") => return Ok(None),
            Err(error) => {
                return Err(EngineError::Api {
                    action: "reading a file of the stack image",
                    message: error.to_string(),
                })
            }
        };
        let read = || -> io::Result<Option<Vec<u8>>> {
            let mut tar = tar::Archive::new(archive.as_slice());
            for entry in tar.entries()? {
                let entry = entry?;
                if entry.header().entry_type().is_file() {
                    if entry.size() > max_bytes {
                        return Err(io::Error::other(format!(
                            "{path} is larger than {max_bytes} bytes"
                        )));
                    }
                    let mut data = Vec::new();
                    io::Read::read_to_end(&mut io::Read::take(entry, max_bytes), &mut data)?;
                    return Ok(Some(data));
                }
            }
            Ok(None)
        };
        read().map_err(|e| EngineError::Api {
            action: "reading a file of the stack image",
            message: e.to_string(),
        })
    }

    /// Removes every container this builder instance left behind (after a crash or kill).
    pub async fn sweep(&self) -> Result<Vec<String>, EngineError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{LABEL_INSTANCE}={}", self.instance)],
        )]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let leftovers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(api("listing leftover containers"))?;
        let mut removed = Vec::new();
        for container in leftovers {
            let Some(id) = container.id else { continue };
            remove_container(&self.docker, &id).await?;
            removed.push(id);
        }
        Ok(removed)
    }

    /// Removes untagged images this builder instance labelled (Dockerfile builds whose tag
    /// moved on or never landed). Tagged ones stay: without a registry they are releases.
    /// An image still in use by some container is left alone.
    pub async fn sweep_images(&self) -> Result<Vec<String>, EngineError> {
        let filters = HashMap::from([
            (
                "label".to_owned(),
                vec![format!("{LABEL_INSTANCE}={}", self.instance)],
            ),
            ("dangling".to_owned(), vec!["true".to_owned()]),
        ]);
        let options = bollard::query_parameters::ListImagesOptionsBuilder::new()
            .all(false)
            .filters(&filters)
            .build();
        let leftovers = self
            .docker
            .list_images(Some(options))
            .await
            .map_err(api("listing leftover images"))?;
        let mut removed = Vec::new();
        for image in leftovers {
            let options = bollard::query_parameters::RemoveImageOptionsBuilder::new().build();
            match self
                .docker
                .remove_image(&image.id, Some(options), None)
                .await
            {
                Ok(_) => removed.push(image.id),
                Err(error) => {
                    tracing::warn!(image = %image.id, %error, "cannot remove a leftover image");
                }
            }
        }
        Ok(removed)
    }
}

#[async_trait::async_trait]
impl Executor for Engine {
    async fn create(&self, spec: &BuildContainerSpec) -> Result<Box<dyn Job>, EngineError> {
        // The build user owns the shared directories; a user given by name cannot be
        // resolved here, so such a build copies its files instead.
        let build_uid = spec.user.split(':').next().and_then(|uid| uid.parse().ok());
        let shared = match (&spec.files_dir, build_uid, self.share_files) {
            (Some(dir), Some(uid), true) => Some(shared::SharedDirs::create(dir, uid).map_err(
                |e| EngineError::Api {
                    action: "preparing the build's shared directories",
                    message: e.to_string(),
                },
            )?),
            _ => None,
        };
        let labels = HashMap::from([
            (LABEL_INSTANCE.to_owned(), self.instance.clone()),
            (LABEL_APP.to_owned(), spec.app.clone()),
            (LABEL_PUSH.to_owned(), spec.push_id.clone()),
        ]);
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.cmd.clone()),
            env: Some(spec.env.clone()),
            user: Some(spec.user.clone()),
            working_dir: Some("/app".to_owned()),
            labels: Some(labels),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            network_disabled: Some(spec.network == "none"),
            host_config: Some(HostConfig {
                network_mode: Some(spec.network.clone()),
                memory: Some(spec.memory_bytes),
                memory_swap: Some(spec.memory_bytes),
                pids_limit: Some(spec.pids_limit),
                cap_drop: Some(vec!["ALL".to_owned()]),
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                init: Some(true),
                binds: shared.as_ref().map(shared::SharedDirs::binds),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(None, body)
            .await
            .map_err(api("creating the build container"))?;
        Ok(Box::new(BuildContainer::new(
            self.docker.clone(),
            created.id,
            shared,
        )))
    }

    async fn ping(&self) -> Result<(), EngineError> {
        Engine::ping(self).await
    }
}

async fn remove_container(docker: &Docker, id: &str) -> Result<(), EngineError> {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(())
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(api("removing a container")(e)),
    }
}

/// A build container in the Docker engine. Removed by [`Job::remove`], or in the
/// background if dropped on any other path (error, cancellation), so none outlives its
/// build.
#[derive(Debug)]
pub struct BuildContainer {
    docker: Docker,
    id: String,
    removed: bool,
    /// `/app` and CACHE_DIR on the host, when the engine shares files with the builder.
    shared: Option<shared::SharedDirs>,
    /// The shared CACHE_DIR as the upload left it, to tell whether the build changed it.
    uploaded_cache: std::sync::Mutex<Option<shared::Manifest>>,
}

#[async_trait::async_trait]
impl Job for BuildContainer {
    fn id(&self) -> &str {
        &self.id
    }

    async fn upload(&self, tar: ByteStream) -> Result<(), EngineError> {
        let tar = match &self.shared {
            // The shared directories' entries go straight to the host; the engine gets the
            // rest (config, buildpacks, the driver), a small archive.
            Some(shared) => {
                let rest = split_input(shared.clone(), tar).await?;
                let manifest = shared.manifest(CACHE_DIR);
                *self
                    .uploaded_cache
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = manifest;
                return match rest {
                    Some(rest) => {
                        let rest = futures_util::stream::once(async move { Ok(Bytes::from(rest)) });
                        self.upload_to_engine(Box::pin(rest)).await
                    }
                    None => Ok(()),
                };
            }
            None => tar,
        };
        self.upload_to_engine(tar).await
    }

    async fn start(&self) -> Result<(), EngineError> {
        self.docker
            .start_container(&self.id, None)
            .await
            .map_err(api("starting the build container"))
    }

    fn output(&self) -> OutputStream {
        let options = LogsOptionsBuilder::new()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .build();
        Box::pin(
            self.docker
                .logs(&self.id, Some(options))
                .map_ok(|chunk| chunk.into_bytes())
                .map_err(api("reading build output")),
        )
    }

    async fn wait(&self) -> Result<i64, EngineError> {
        let mut waits = self.docker.wait_container(&self.id, None);
        match waits.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(api("waiting for the build")(e)),
            None => Err(EngineError::Api {
                action: "waiting for the build",
                message: "the engine closed the wait stream".into(),
            }),
        }
    }

    fn download(&self, path: &str) -> ByteStream {
        if let Some(shared) = self.shared.as_ref().filter(|s| s.host_dir(path).is_some()) {
            return archive_shared(shared.clone(), path.to_owned());
        }
        let options = DownloadFromContainerOptionsBuilder::new()
            .path(path)
            .build();
        Box::pin(
            self.docker
                .download_from_container(&self.id, Some(options))
                .map_err(|e| io::Error::other(format!("copying the build output: {e}"))),
        )
    }

    fn unchanged_since_upload(&self, path: &str) -> bool {
        let (Some(shared), true) = (&self.shared, path == CACHE_DIR) else {
            return false;
        };
        let uploaded = self
            .uploaded_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        uploaded.is_some() && uploaded == shared.manifest(CACHE_DIR)
    }

    /// Removes the container (forced: a running one is killed). When the engine cannot be
    /// reached, removal is retried in the background until it comes back (see
    /// [`remove_when_engine_returns`]).
    async fn remove(mut self: Box<Self>) -> Result<(), EngineError> {
        self.removed = true;
        let removed = remove_container(&self.docker, &self.id).await;
        if removed.is_err() {
            remove_when_engine_returns(self.docker.clone(), self.id.clone());
        }
        removed
    }
}

impl BuildContainer {
    fn new(docker: Docker, id: String, shared: Option<shared::SharedDirs>) -> BuildContainer {
        BuildContainer {
            docker,
            id,
            removed: false,
            shared,
            uploaded_cache: Default::default(),
        }
    }

    async fn upload_to_engine(&self, tar: ByteStream) -> Result<(), EngineError> {
        let options = UploadToContainerOptionsBuilder::new().path("/").build();
        self.docker
            .upload_to_container(&self.id, Some(options), bollard::body_try_stream(tar))
            .await
            .map_err(api("copying the build input into the container"))
    }
}

/// Splits the input archive on a blocking thread: shared entries are written to the host;
/// what is left for the engine (outside `/app` and `/build`: the CA bundle, if any, a few
/// hundred KiB) comes back as an archive, `None` when there is nothing.
async fn split_input(
    shared: shared::SharedDirs,
    tar: ByteStream,
) -> Result<Option<Vec<u8>>, EngineError> {
    let split_error = |message: String| EngineError::Api {
        action: "writing the build input to the shared directories",
        message,
    };
    let task = tokio::task::spawn_blocking(move || {
        let input = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(tar));
        let mut rest = Vec::new();
        let to_engine = shared.split_input(input, &mut rest)?;
        Ok::<_, io::Error>((to_engine > 0).then_some(rest))
    });
    match task.await {
        Ok(result) => result.map_err(|e| split_error(e.to_string())),
        Err(e) => Err(split_error(e.to_string())),
    }
}

/// A shared directory archived on a blocking thread, as the engine would stream it.
fn archive_shared(shared: shared::SharedDirs, path: String) -> ByteStream {
    let (mut writer, archive) = deis_types::pipe::pipe(8);
    tokio::task::spawn_blocking(move || match shared.archive(&path, &mut writer) {
        // A finish that fails means the reader is gone: nothing is left to tell.
        Ok(()) => drop(writer.finish()),
        Err(error) => writer.fail(io::Error::other(format!("reading {path}: {error}"))),
    });
    archive
}

/// How long a container whose removal failed is retried; an engine down longer than this
/// leaves it to the next start's sweep.
const REMOVAL_RETRY_FOR: Duration = Duration::from_secs(30 * 60);
const REMOVAL_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// Keeps trying to remove a container (the engine was stopped or restarted under a build),
/// so none outlives its build once the engine is back.
fn remove_when_engine_returns(docker: Docker, id: String) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let deadline = tokio::time::Instant::now() + REMOVAL_RETRY_FOR;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(REMOVAL_RETRY_PAUSE).await;
            if remove_container(&docker, &id).await.is_ok() {
                tracing::info!(container = %id, "removed build container after a failed first attempt");
                return;
            }
        }
        tracing::error!(container = %id, "gave up removing build container; the next start sweeps it");
    });
}

impl Drop for BuildContainer {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let docker = self.docker.clone();
        let id = std::mem::take(&mut self.id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = remove_container(&docker, &id).await {
                    tracing::error!(%error, container = %id, "cannot remove build container");
                    remove_when_engine_returns(docker, id);
                }
            });
        }
    }
}
