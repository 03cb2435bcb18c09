//! Images: Dockerfile builds, pushes to the private registry, pulls for imports; behind
//! the [`Images`] trait, which [`Engine`] implements.

use std::collections::HashMap;
use std::pin::Pin;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateImageOptionsBuilder, PushImageOptionsBuilder,
    RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use futures_util::{Stream, StreamExt};

use super::registry::{RegistryApi, RegistryTag, TagRemoval};
use super::{api, Engine, EngineError, LABEL_PUSH};
use deis_types::names::ImageRef;
use deis_types::pipe::ByteStream;

/// Progress lines of an image operation; an error ends it.
pub type LineStream = Pin<Box<dyn Stream<Item = Result<String, EngineError>> + Send + 'static>>;

/// The image work of Dockerfile builds and imports: build, push, pull, tag, remove, and
/// the registry tags a failed push leaves. [`Engine`] does it with the Docker engine (and
/// the registry's HTTP API); [`super::fake::FakeImages`] in memory for pipeline tests.
#[async_trait::async_trait]
pub trait Images: Send + Sync + std::fmt::Debug {
    /// Builds `context` (a tar with the Dockerfile at its root) and tags the result
    /// `spec.tag`; yields the build's output. Dropping the stream cancels the build.
    fn build(&self, context: ByteStream, spec: &ImageBuild) -> LineStream;

    /// Pushes `repository:tag`; yields progress lines. Errors (refused credentials
    /// included) end the stream.
    fn push(&self, repository: &str, tag: &str, auth: Option<&RegistryAuth>) -> LineStream;

    /// Pulls `image`; yields progress lines.
    fn pull(&self, image: &ImageRef, auth: Option<&RegistryAuth>) -> LineStream;

    /// Tags `image` as `repository:tag`.
    async fn tag(&self, image: &str, repository: &str, tag: &str) -> Result<(), EngineError>;

    /// The image's content id (`sha256:…`); an error when there is no such image.
    async fn image_id(&self, image: &str) -> Result<String, EngineError>;

    /// Removes a tag (and the image if nothing else uses it); a missing image is fine.
    async fn remove(&self, image: &str) -> Result<(), EngineError>;

    /// Whether `repository:tag` exists in its registry. `Ok(None)` means "not there".
    async fn registry_digest(
        &self,
        repository: &str,
        tag: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<Option<String>, EngineError>;

    /// Removes a tag a failed push published, unless its manifest is shared.
    async fn delete_registry_tag(&self, tag: &RegistryTag) -> Result<TagRemoval, EngineError>;

    /// Whether the engine is still there: a failed build is explained by its absence.
    async fn ping(&self) -> Result<(), EngineError>;
}

/// Credentials for one registry. `Debug` never shows the password.
#[derive(Clone)]
pub struct RegistryAuth {
    pub server: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl RegistryAuth {
    pub(super) fn credentials(&self) -> DockerCredentials {
        DockerCredentials {
            username: Some(self.username.clone()),
            password: Some(self.password.clone()),
            serveraddress: Some(self.server.clone()),
            ..Default::default()
        }
    }
}

/// One Dockerfile build.
#[derive(Debug, Clone)]
pub struct ImageBuild {
    /// Full reference to tag the result with.
    pub tag: String,
    pub build_args: HashMap<String, String>,
    pub network: String,
    pub push_id: String,
}

/// Progress states that repeat for every chunk; shown once per layer instead.
const NOISY_STATES: [&str; 5] = [
    "Pushing",
    "Downloading",
    "Extracting",
    "Waiting",
    "Preparing",
];

fn progress_line(id: Option<&str>, status: Option<&str>) -> Option<String> {
    let status = status?.trim();
    if status.is_empty() || NOISY_STATES.contains(&status) {
        return None;
    }
    Some(match id {
        Some(id) if !id.is_empty() => format!("{id}: {status}"),
        _ => status.to_owned(),
    })
}

fn stream_error(error: bollard::errors::Error, classify: fn(String) -> EngineError) -> EngineError {
    match error {
        bollard::errors::Error::DockerStreamError { error } => classify(error),
        bollard::errors::Error::DockerResponseServerError { message, .. } => classify(message),
        other => classify(other.to_string()),
    }
}

#[async_trait::async_trait]
impl Images for Engine {
    /// Intermediate containers are removed even when a step fails.
    ///
    /// One label, the push id: it makes every push's image unique, so the registry tag of
    /// a failed push can always be deleted without taking along a manifest another tag
    /// names (two commits with the same context would otherwise build the same image).
    /// Only one: the engine's classic builder makes each label a step of its own, ~55 ms.
    fn build(&self, context: ByteStream, spec: &ImageBuild) -> LineStream {
        let labels = HashMap::from([(LABEL_PUSH.to_owned(), spec.push_id.clone())]);
        let options = BuildImageOptionsBuilder::new()
            .dockerfile("Dockerfile")
            .t(&spec.tag)
            .rm(true)
            .forcerm(true)
            .networkmode(&spec.network)
            .buildargs(&spec.build_args)
            .labels(&labels)
            .build();
        let docker = self.docker.clone();
        // bollard's build stream borrows the client, so a task owns both and forwards;
        // dropping the returned stream ends the task, which cancels the build.
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let build = docker
                .build_image(options, None, Some(bollard::body_try_stream(context)))
                .map(|item| match item {
                    Ok(info) => {
                        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                            return Some(Err(EngineError::BuildFailed(detail)));
                        }
                        info.stream.filter(|s| !s.is_empty()).map(Ok)
                    }
                    Err(error) => Some(Err(stream_error(error, EngineError::BuildFailed))),
                })
                .filter_map(futures_util::future::ready);
            let mut build = std::pin::pin!(build);
            while let Some(item) = build.next().await {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }

    /// Refused credentials are reported by the engine inside the stream.
    fn push(&self, repository: &str, tag: &str, auth: Option<&RegistryAuth>) -> LineStream {
        let options = PushImageOptionsBuilder::new().tag(tag).build();
        let credentials = auth.map(RegistryAuth::credentials);
        let docker = self.docker.clone();
        let repository = repository.to_owned();
        async_stream_of(move || {
            docker
                .push_image(&repository, Some(options), credentials)
                .map(|item| match item {
                    Ok(info) => {
                        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                            return Some(Err(EngineError::Registry(detail)));
                        }
                        progress_line(None, info.status.as_deref()).map(Ok)
                    }
                    Err(error) => Some(Err(stream_error(error, EngineError::Registry))),
                })
                .filter_map(futures_util::future::ready)
        })
    }

    fn pull(&self, image: &ImageRef, auth: Option<&RegistryAuth>) -> LineStream {
        let options = CreateImageOptionsBuilder::new()
            .from_image(&image.repository)
            .tag(&image.pull_tag())
            .build();
        let credentials = auth.map(RegistryAuth::credentials);
        let docker = self.docker.clone();
        async_stream_of(move || {
            docker
                .create_image(Some(options), None, credentials)
                .map(|item| match item {
                    Ok(info) => {
                        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                            return Some(Err(EngineError::Pull(detail)));
                        }
                        progress_line(info.id.as_deref(), info.status.as_deref()).map(Ok)
                    }
                    Err(error) => Some(Err(stream_error(error, EngineError::Pull))),
                })
                .filter_map(futures_util::future::ready)
        })
    }

    async fn tag(&self, image: &str, repository: &str, tag: &str) -> Result<(), EngineError> {
        let options = TagImageOptionsBuilder::new()
            .repo(repository)
            .tag(tag)
            .build();
        self.docker
            .tag_image(image, Some(options))
            .await
            .map_err(api("tagging the image"))
    }

    async fn image_id(&self, image: &str) -> Result<String, EngineError> {
        let inspected = self
            .docker
            .inspect_image(image)
            .await
            .map_err(api("inspecting the image"))?;
        inspected.id.ok_or(EngineError::Api {
            action: "inspecting the image",
            message: "the engine returned no image id".into(),
        })
    }

    async fn remove(&self, image: &str) -> Result<(), EngineError> {
        let options = RemoveImageOptionsBuilder::new().build();
        match self.docker.remove_image(image, Some(options), None).await {
            Ok(_)
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(api("removing an image")(e)),
        }
    }

    /// Asked through the engine, which knows the registry's transport and auth.
    async fn registry_digest(
        &self,
        repository: &str,
        tag: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<Option<String>, EngineError> {
        Engine::registry_digest(self, repository, tag, auth).await
    }

    /// Through the registry's v2 HTTP API: the engine cannot delete from a registry.
    async fn delete_registry_tag(&self, tag: &RegistryTag) -> Result<TagRemoval, EngineError> {
        RegistryApi::new(&tag.host, tag.auth.clone())?
            .delete_tag(&tag.name, &tag.tag)
            .await
    }

    async fn ping(&self) -> Result<(), EngineError> {
        Engine::ping(self).await
    }
}

/// bollard's image streams borrow the client; this owns the client instead so callers
/// can hold the stream across awaits without borrowing the engine.
fn async_stream_of<S, F>(make: F) -> LineStream
where
    F: FnOnce() -> S + Send + 'static,
    S: Stream<Item = Result<String, EngineError>> + Send + 'static,
{
    Box::pin(futures_util::stream::once(async move { make() }).flatten())
}
