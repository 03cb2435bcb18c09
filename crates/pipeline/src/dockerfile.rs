//! Dockerfile builds: the pushed tree (minus `.dockerignore`d paths) is the build context;
//! the engine builds it, the image goes to the private registry (or stays in the local
//! engine when none is configured), and the release names the image.

use std::collections::{BTreeMap, HashMap};

use futures_util::{Stream, StreamExt};

use super::fetch::{Fetcher, Workspace};
use super::redact::{RedactedOutput, Redactor};
use super::submodule;
use super::timing::{Stage, StageTimes};
use deis_controller::Artifact;

use super::{blocking_writer, input, BuildError, Built, CreatedTag, Pipeline, RollbackJournal};
use crate::push::{Output, Push};
use crate::settings::RegistrySettings;
use deis_executor::{EngineError, ImageBuild, RegistryAuth};
use deis_slug::tar_writer::TarWriter;
use deis_slug::{self as slug, ProcessTypes, SlugIgnore};

/// Largest `.dockerignore`, Dockerfile or Procfile we read from the pushed tree.
const MAX_SMALL_FILE: usize = 256 * 1024;
/// App config that passes every config var to the build as `--build-arg`s.
pub const BUILD_ARGS_SETTING: &str = "DEIS_DOCKER_BUILD_ARGS_ENABLED";

/// What a Dockerfile build starts from, made before the engine is asked.
struct BuildContext {
    /// The context tar, streamed while the engine reads it.
    archive: deis_types::pipe::ByteStream,
    build_args: HashMap<String, String>,
    process_types: ProcessTypes,
    /// Holds the submodule checkouts the archive reads from: dropped after the build.
    _workspace: Workspace,
}

impl Pipeline {
    /// Builds the image from the pushed tree and pushes it to the registry, if any: the
    /// release names the image.
    pub(super) async fn dockerfile_build(
        &self,
        push: &Push,
        config: &BTreeMap<String, String>,
        out: &Output,
        journal: &RollbackJournal,
        times: &StageTimes,
    ) -> Result<Built, BuildError> {
        let repository = image_repository(self.settings.registry.as_ref(), push.app.as_str());
        // The tag checks ask the engine and the registry; the context needs only git.
        let (context, tag) = tokio::join!(
            times.time(Stage::Context, self.build_context(push, config, out)),
            times.time(Stage::Tag, self.image_tag(push, &repository)),
        );
        // Bound for the whole build: it holds the workspace the archive reads from.
        let context = context?;
        let reference = format!("{repository}:{tag}");
        let spec = ImageBuild {
            tag: reference.clone(),
            build_args: context.build_args,
            network: self.settings.network.clone(),
            push_id: push.id.clone(),
        };
        // The tag did not exist before this push (see `image_tag`): it goes if the push
        // fails. Recorded before the build, which tags at its very end: a build stopped
        // there (timeout, cancellation) must not leave the tag behind.
        journal.image(CreatedTag {
            reference: reference.clone(),
            registry: None,
        });
        self.build_image(push, config, context.archive, &spec, out, times)
            .await?;
        self.push_to_registry(push, &repository, &tag, journal, out, times)
            .await?;
        show_process_types(&context.process_types, out).await;
        Ok(Built {
            artifact: Artifact::Image(reference),
            process_types: context.process_types,
        })
    }

    /// The engine builds `spec` from the context, its output shown with secrets hidden.
    async fn build_image(
        &self,
        push: &Push,
        config: &BTreeMap<String, String>,
        archive: deis_types::pipe::ByteStream,
        spec: &ImageBuild,
        out: &Output,
        times: &StageTimes,
    ) -> Result<(), BuildError> {
        out.step(format!("Building Docker image {}", spec.tag))
            .await;
        let timeout = self.settings.timeout;
        let built = times
            .time(
                Stage::Build,
                tokio::time::timeout(
                    timeout,
                    relay_redacted(
                        self.images.build(archive, spec),
                        out,
                        Redactor::for_build(config, None, &self.own_secrets()),
                    ),
                ),
            )
            .await
            .map_err(|_| BuildError::Timeout(timeout))?;
        if let Err(error) = built {
            return Err(self.explain_failed_build(push, error).await);
        }
        Ok(())
    }

    /// Pushes `repository:tag` to the registry; without one the image stays in the local
    /// engine. On error the local tag (and a registry tag, should one exist) is rolled back.
    async fn push_to_registry(
        &self,
        push: &Push,
        repository: &str,
        tag: &str,
        journal: &RollbackJournal,
        out: &Output,
        times: &StageTimes,
    ) -> Result<(), BuildError> {
        let Some(registry) = &self.settings.registry else {
            return Ok(());
        };
        let reference = format!("{repository}:{tag}");
        out.step(format!("Pushing {reference}")).await;
        let auth = registry_auth(registry);
        journal.image(CreatedTag::in_registry(
            reference,
            registry,
            auth.clone(),
            &push.app,
            tag,
        ));
        let timeout = self.settings.timeout;
        match times
            .time(
                Stage::Push,
                tokio::time::timeout(
                    timeout,
                    relay(self.images.push(repository, tag, auth.as_ref()), out, true),
                ),
            )
            .await
        {
            Ok(pushed) => Ok(pushed?),
            Err(_) => Err(BuildError::Timeout(timeout)),
        }
    }

    /// Everything the engine gets besides the Dockerfile's own work: the context (the
    /// pushed tree minus `.dockerignore`d paths, with submodules) and the build args; the
    /// Procfile is read now so that a bad one fails the push before the build.
    async fn build_context(
        &self,
        push: &Push,
        config: &BTreeMap<String, String>,
        out: &Output,
    ) -> Result<BuildContext, BuildError> {
        let (dockerignore, procfile) = tokio::try_join!(
            push.source
                .read_file(&push.commit, ".dockerignore", MAX_SMALL_FILE),
            push.source
                .read_file(&push.commit, "Procfile", MAX_SMALL_FILE),
        )?;
        let ignore = match dockerignore {
            Some(text) => SlugIgnore::parse_dockerignore(&String::from_utf8_lossy(&text)),
            None => SlugIgnore::empty(),
        };
        let process_types = match procfile {
            Some(text) => slug::parse_procfile(&String::from_utf8_lossy(&text))?,
            None => ProcessTypes::default(),
        };
        let mut build_args: HashMap<String, String> = if enabled(config.get(BUILD_ARGS_SETTING)) {
            config.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        } else {
            HashMap::new()
        };
        // Docker's predefined proxy args: usable by RUN without an ARG line, and kept out
        // of the image's history.
        for (name, value) in self.settings.egress.proxy_env() {
            build_args
                .entry(name.to_owned())
                .or_insert_with(|| value.to_owned());
        }
        // Submodules are part of the context, as in a recursive checkout.
        let workspace = Workspace::create(&self.settings.work_dir, &push.id)?;
        let ssh_key = config.get(super::buildpack::SSH_KEY);
        let fetcher = Fetcher::new(&self.settings, ssh_key.map(|v| input::decode_ssh_key(v)));
        let submodules =
            submodule::fetch_all(&push.source, &push.commit, &fetcher, &workspace, out).await?;
        // The Dockerfile and .dockerignore always go to the engine, as with `docker build`.
        let archive = blocking_writer(push.source.archive(&push.commit)?, move |source, w| {
            let keep = |path: &str, is_dir: bool| {
                matches!(path, "Dockerfile" | ".dockerignore") || !ignore.is_ignored(path, is_dir)
            };
            let mut tar = TarWriter::new(w, input::BUILD_UID, 0);
            input::copy_tree(source, &mut tar, "", &keep)?;
            for submodule in &submodules {
                input::append_host_dir(&mut tar, &submodule.dir, &submodule.path, &keep)?;
            }
            tar.finish().map(drop)
        });
        Ok(BuildContext {
            archive,
            build_args,
            process_types,
            _workspace: workspace,
        })
    }

    /// Why a Dockerfile build failed, in the terms a developer can act on: the engine went
    /// away, or a base image is not in the engine (which cannot pull it here).
    async fn explain_failed_build(&self, push: &Push, error: EngineError) -> BuildError {
        if self.images.ping().await.is_err() {
            return BuildError::EngineLost(format!(
                "the engine stopped during the build ({error})"
            ));
        }
        if let EngineError::BuildFailed(_) = &error {
            let dockerfile = push
                .source
                .read_file(&push.commit, "Dockerfile", MAX_SMALL_FILE)
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            let missing = self
                .missing_base_images(&String::from_utf8_lossy(&dockerfile))
                .await;
            if let Some(first) = missing.into_iter().next() {
                return BuildError::MissingBaseImage {
                    image: first,
                    detail: error.to_string(),
                };
            }
        }
        error.into()
    }

    /// `git-<sha8>` for the first image of a commit; `git-<sha8>-<push id>` when that tag
    /// already exists (locally or in the registry, where a release may use it) or cannot be
    /// checked, so a tag is never moved to another image (write-once).
    async fn image_tag(&self, push: &Push, repository: &str) -> String {
        let first = format!("git-{}", push.commit.short());
        let reference = format!("{repository}:{first}");
        let (local, in_registry) = tokio::join!(self.images.image_id(&reference), async {
            match &self.settings.registry {
                None => Ok(false),
                Some(registry) => self
                    .images
                    .registry_digest(repository, &first, registry_auth(registry).as_ref())
                    .await
                    .map(|digest| digest.is_some()),
            }
        });
        let local = local.is_ok();
        match (local, in_registry) {
            (false, Ok(false)) => first,
            (_, checked) => {
                if let Err(error) = checked {
                    tracing::warn!(%error, "cannot tell whether {first} exists; using a tag of this push");
                }
                format!("{first}-{}", push.id)
            }
        }
    }

    /// Base images the Dockerfile names that the engine does not have; used to explain a
    /// failed build (without network the engine cannot pull them).
    async fn missing_base_images(&self, dockerfile: &str) -> Vec<String> {
        let mut stages = Vec::new();
        let mut missing = Vec::new();
        for line in dockerfile.lines().map(str::trim) {
            let mut words = line.split_whitespace();
            if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
                continue;
            }
            let Some(image) = words.find(|w| !w.starts_with("--")) else {
                continue;
            };
            if let (Some(as_word), Some(stage)) = (words.next(), words.next()) {
                if as_word.eq_ignore_ascii_case("AS") {
                    stages.push(stage.to_ascii_lowercase());
                }
            }
            let computed = image.contains('$')
                || image == "scratch"
                || stages.contains(&image.to_ascii_lowercase());
            if !computed && self.images.image_id(image).await.is_err() {
                missing.push(image.to_owned());
            }
        }
        missing
    }
}

/// `<registry>/<app>` with a registry, plain `<app>` (kept in the local engine) without.
pub(super) fn image_repository(registry: Option<&RegistrySettings>, app: &str) -> String {
    match registry {
        Some(registry) => format!("{}/{app}", registry.host),
        None => app.to_owned(),
    }
}

pub(super) fn registry_auth(registry: &RegistrySettings) -> Option<RegistryAuth> {
    match (&registry.username, &registry.password) {
        (Some(username), Some(password)) => Some(RegistryAuth {
            server: registry.host.clone(),
            username: username.clone(),
            password: password.expose().to_owned(),
        }),
        _ => None,
    }
}

/// Shows the process types the Procfile declares, if any.
async fn show_process_types(process_types: &ProcessTypes, out: &Output) {
    if !process_types.is_empty() {
        out.step("Discovering process types").await;
        out.detail(format!(
            "Procfile declares types -> {}",
            process_types.names().join(", ")
        ))
        .await;
    }
}

/// Config flags count as set unless empty, `0` or `false`.
fn enabled(value: Option<&String>) -> bool {
    value.is_some_and(|v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no"
        )
    })
}

/// Copies engine progress to the developer; `indent` puts it under a `-----> ` header.
pub(super) async fn relay(
    stream: impl Stream<Item = Result<String, EngineError>>,
    out: &Output,
    indent: bool,
) -> Result<(), EngineError> {
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        let text = item?;
        if indent {
            out.detail(text.trim_end()).await;
        } else {
            out.bytes(bytes::Bytes::from(text)).await;
        }
    }
    Ok(())
}

/// [`relay`] for build steps, which may print config (build args): secrets are hidden.
async fn relay_redacted(
    stream: impl Stream<Item = Result<String, EngineError>>,
    out: &Output,
    redactor: Redactor,
) -> Result<(), EngineError> {
    let mut stream = std::pin::pin!(stream);
    let mut shown = RedactedOutput::new(out, redactor);
    let mut result = Ok(());
    while let Some(item) = stream.next().await {
        match item {
            Ok(text) => shown.write(text.as_bytes()).await,
            Err(error) => {
                result = Err(error);
                break;
            }
        }
    }
    shown.finish().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_repositories() {
        assert!(enabled(Some(&"1".to_owned())));
        assert!(enabled(Some(&"true".to_owned())));
        assert!(!enabled(Some(&"false".to_owned())));
        assert!(!enabled(None));
        let registry = RegistrySettings {
            host: "127.0.0.1:5000".into(),
            username: None,
            password: None,
        };
        assert_eq!(
            image_repository(Some(&registry), "web"),
            "127.0.0.1:5000/web"
        );
        assert_eq!(image_repository(None, "web"), "web");
    }
}
