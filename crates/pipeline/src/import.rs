//! Image import (`deis pull`): an existing image is pulled, tagged into the app's
//! repository under a content-derived tag, pushed to the private registry and released.
//! Pull, tag and push stop at `--build-timeout` or when the caller's token fires (shutdown),
//! and what they tagged is rolled back; the release, once asked for, is never cut short.

use tokio_util::sync::CancellationToken;

use super::dockerfile::{image_repository, registry_auth, relay};
use super::timing::{millis, Stage, StageTimes};
use super::{BuildError, CreatedTag, Pipeline, RollbackJournal};
use crate::push::{Hold, Output};
use deis_controller::{Artifact, ReleaseRequest};
use deis_executor::RegistryAuth;
use deis_slug::ProcessTypes;
use deis_types::names::{AppName, ImageRef};

#[derive(Debug)]
pub struct ImportRequest {
    pub app: AppName,
    pub image: ImageRef,
    pub user: String,
    pub process_types: ProcessTypes,
    /// User name and password for the registry the image comes from (`Debug` hides the
    /// password).
    pub source_credentials: Option<(String, deis_types::Secret)>,
}

/// A finished import.
#[derive(Debug)]
pub struct Imported {
    pub version: u64,
    pub image: String,
}

/// The image an import tagged into the app's repository, ready for the release.
struct Staged {
    /// `repository:tag`, what the release names.
    reference: String,
    /// The image's content id in hex (the release's "sha").
    hex: String,
}

/// The app's tag of an imported image.
struct Tagged {
    repository: String,
    tag: String,
    /// `repository:tag`.
    reference: String,
    /// Whether the registry had the tag before this import (unknown counts as yes).
    in_registry: bool,
}

impl Pipeline {
    /// Imports `request`'s image. Until the release is asked for, `cancel` stops it (with
    /// [`BuildError::Cancelled`]), as does `--build-timeout`; either way everything it
    /// tagged is removed again.
    pub async fn import(
        &self,
        request: &ImportRequest,
        hold: Option<&dyn Hold>,
        out: &Output,
        cancel: &CancellationToken,
    ) -> Result<Imported, BuildError> {
        let started = std::time::Instant::now();
        let times = StageTimes::default();
        // Outlives the staging future: when that is dropped (timeout, cancellation), what it
        // recorded is still rolled back below.
        let journal = RollbackJournal::new(self.store.clone(), self.images.clone());
        let timeout = self.settings.timeout;
        let staged = tokio::select! {
            staged = tokio::time::timeout(timeout, self.stage(request, &journal, out, &times)) => {
                match staged.unwrap_or(Err(BuildError::Timeout(timeout))) {
                    Ok(staged) => crate::push::confirm(hold).await.map(|()| staged),
                    Err(error) => Err(error),
                }
            }
            () = cancel.cancelled() => Err(BuildError::Cancelled),
        };
        let staged = match staged {
            Ok(staged) => staged,
            Err(error) => {
                journal.roll_back().await;
                return Err(error);
            }
        };
        // Not raced against cancellation: once asked, the controller may cut the release
        // whether or not we wait, and its image must then stay (the call has a timeout).
        let released = self.release_import(request, &staged, out, &times).await;
        journal.settle(&released).await;
        let (version, image) = (released?, staged.reference);
        tracing::info!(
            app = %request.app,
            version,
            elapsed_ms = millis(started.elapsed()),
            pull_ms = times.millis(Stage::Pull),
            tag_ms = times.millis(Stage::Tag),
            push_ms = times.millis(Stage::Push),
            release_ms = times.millis(Stage::Release),
            "imported"
        );
        Ok(Imported { version, image })
    }

    /// Pull, tag and push: everything before the release. Every tag is recorded in
    /// `journal` before it is made, so dropping this future half-way loses none.
    async fn stage(
        &self,
        request: &ImportRequest,
        journal: &RollbackJournal,
        out: &Output,
        times: &StageTimes,
    ) -> Result<Staged, BuildError> {
        let pulled = self.pull_import(request, out, times).await?;
        let id = self.images.image_id(&pulled).await?;
        let hex = id.trim_start_matches("sha256:");
        let tagged = self
            .tag_import(&request.app, &pulled, hex, journal, times)
            .await?;
        self.push_import(&request.app, &tagged, journal, out, times)
            .await?;
        Ok(Staged {
            reference: tagged.reference,
            hex: hex.to_owned(),
        })
    }

    /// Pulls the image from its registry; returns its name in the local engine.
    async fn pull_import(
        &self,
        request: &ImportRequest,
        out: &Output,
        times: &StageTimes,
    ) -> Result<String, BuildError> {
        let image = &request.image;
        out.step(format!("Pulling {image}")).await;
        let source_auth = request
            .source_credentials
            .as_ref()
            .map(|(username, password)| RegistryAuth {
                server: image.registry().unwrap_or("docker.io").to_owned(),
                username: username.clone(),
                password: password.expose().to_owned(),
            });
        times
            .time(
                Stage::Pull,
                relay(self.images.pull(image, source_auth.as_ref()), out, true),
            )
            .await?;
        Ok(match &image.digest {
            Some(digest) => format!("{}@{digest}", image.repository),
            None => format!("{}:{}", image.repository, image.pull_tag()),
        })
    }

    /// Tags the pulled image (content id `hex`) into the app's repository, unless the tag
    /// is there already, and finds out whether the registry has it.
    async fn tag_import(
        &self,
        app: &AppName,
        pulled: &str,
        hex: &str,
        journal: &RollbackJournal,
        times: &StageTimes,
    ) -> Result<Tagged, BuildError> {
        // Deterministic: the same image imported twice gets the same tag.
        let tag = format!("import-{}", hex.get(..12).unwrap_or(hex));
        let repository = image_repository(self.settings.registry.as_ref(), app.as_str());
        let reference = format!("{repository}:{tag}");
        // The same image always gets the same tag, so an existing tag already names exactly
        // this image; only tags this import creates are removed if it fails.
        let tag_started = std::time::Instant::now();
        // Both existence checks at once: one round trip's time.
        let (local, in_registry) = tokio::join!(
            self.images.image_id(&reference),
            self.registry_has(&repository, &tag)
        );
        if local.is_err() {
            // Recorded first: removing a tag that was never made is a no-op.
            journal.image(CreatedTag {
                reference: reference.clone(),
                registry: None,
            });
            self.images.tag(pulled, &repository, &tag).await?;
        }
        times.add(Stage::Tag, tag_started.elapsed());
        Ok(Tagged {
            repository,
            tag,
            reference,
            in_registry,
        })
    }

    /// Whether the registry, if there is one, has `repository:tag`.
    async fn registry_has(&self, repository: &str, tag: &str) -> bool {
        let Some(registry) = &self.settings.registry else {
            return false;
        };
        self.images
            .registry_digest(repository, tag, registry_auth(registry).as_ref())
            .await
            .map(|digest| digest.is_some())
            // Unknown: treat as existing, so a rollback never deletes what it did not make.
            .unwrap_or(true)
    }

    /// Pushes the tagged image to the registry; without one it stays in the local engine.
    async fn push_import(
        &self,
        app: &AppName,
        tagged: &Tagged,
        journal: &RollbackJournal,
        out: &Output,
        times: &StageTimes,
    ) -> Result<(), BuildError> {
        let Some(registry) = &self.settings.registry else {
            return Ok(());
        };
        let auth = registry_auth(registry);
        if !tagged.in_registry {
            journal.image(CreatedTag::in_registry(
                tagged.reference.clone(),
                registry,
                auth.clone(),
                app,
                &tagged.tag,
            ));
        }
        out.step(format!("Pushing {}", tagged.reference)).await;
        times
            .time(
                Stage::Push,
                relay(
                    self.images
                        .push(&tagged.repository, &tagged.tag, auth.as_ref()),
                    out,
                    true,
                ),
            )
            .await?;
        Ok(())
    }

    async fn release_import(
        &self,
        request: &ImportRequest,
        staged: &Staged,
        out: &Output,
        times: &StageTimes,
    ) -> Result<u64, BuildError> {
        out.line("Launching App...").await;
        let release_started = std::time::Instant::now();
        let version = self
            .controller
            .release(&ReleaseRequest {
                user: &request.user,
                app: &request.app,
                sha: &staged.hex,
                artifact: &Artifact::Image(staged.reference.clone()),
                procfile: &request.process_types.0,
            })
            .await;
        times.add(Stage::Release, release_started.elapsed());
        let version = version?;
        out.line(format!("Done, {}:v{version} deployed", request.app))
            .await;
        Ok(version)
    }
}
