//! Image import (`deis pull`): an existing image is pulled, tagged into the app's
//! repository under a content-derived tag, pushed to the private registry and released.

use super::dockerfile::{image_repository, registry_auth, relay};
use super::timing::{millis, Stage, StageTimes};
use super::{BuildError, Pipeline, Published, PublishedImage};
use crate::controller::BuildHook;
use crate::engine::{RegistryApi, RegistryAuth};
use crate::names::{AppName, ImageRef};
use crate::push::Output;
use crate::slug::ProcessTypes;

#[derive(Debug)]
pub struct ImportRequest {
    pub app: AppName,
    pub image: ImageRef,
    pub user: String,
    pub process_types: ProcessTypes,
    /// User name and password for the registry the image comes from (`Debug` hides the
    /// password).
    pub source_credentials: Option<(String, crate::config::Secret)>,
}

/// A finished import.
#[derive(Debug)]
pub struct Imported {
    pub version: u64,
    pub image: String,
}

impl Pipeline {
    pub async fn import(
        &self,
        request: &ImportRequest,
        out: &Output,
    ) -> Result<Imported, BuildError> {
        let started = std::time::Instant::now();
        let times = StageTimes::default();
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
                relay(
                    self.engine.pull_image(image, source_auth.as_ref()),
                    out,
                    true,
                ),
            )
            .await?;
        let pulled = match &image.digest {
            Some(digest) => format!("{}@{digest}", image.repository),
            None => format!("{}:{}", image.repository, image.pull_tag()),
        };
        let id = self.engine.image_id(&pulled).await?;
        let hex = id.trim_start_matches("sha256:");
        // Deterministic: the same image imported twice gets the same tag.
        let tag = format!("import-{}", hex.get(..12).unwrap_or(hex));
        let repository = image_repository(self.settings.registry.as_ref(), request.app.as_str());
        let reference = format!("{repository}:{tag}");
        // The same image always gets the same tag, so an existing tag already names exactly
        // this image; only tags this import creates are removed if it fails.
        let published = Published::new(self.store.clone(), self.engine.clone());
        let imported = self
            .tag_push_release(
                request,
                &published,
                (&pulled, hex),
                (&repository, &tag),
                out,
                &times,
            )
            .await;
        match &imported {
            Ok(_) => published.keep(),
            Err(BuildError::Controller(error)) if error.is_unreachable() => {
                tracing::warn!("release outcome unknown; keeping the imported image");
            }
            Err(_) => published.roll_back().await,
        }
        let version = imported?;
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
        Ok(Imported {
            version,
            image: reference,
        })
    }

    async fn tag_push_release(
        &self,
        request: &ImportRequest,
        published: &Published,
        // The pulled image, and its content id's hex (the release's "sha").
        (pulled, hex): (&str, &str),
        (repository, tag): (&str, &str),
        out: &Output,
        times: &StageTimes,
    ) -> Result<u64, BuildError> {
        let reference = format!("{repository}:{tag}");
        let tag_started = std::time::Instant::now();
        let registry = self
            .settings
            .registry
            .as_ref()
            .map(|registry| (registry, registry_auth(registry)));
        // Both existence checks at once: one round trip's time.
        let (local, in_registry) = tokio::join!(self.engine.image_id(&reference), async {
            match &registry {
                None => None,
                Some((_, auth)) => Some(
                    self.engine
                        .registry_digest(repository, tag, auth.as_ref())
                        .await
                        .map(|digest| digest.is_some())
                        // Unknown: treat as existing, so a rollback never deletes what it
                        // did not make.
                        .unwrap_or(true),
                ),
            }
        });
        if local.is_err() {
            self.engine.tag_image(pulled, repository, tag).await?;
            published.image(PublishedImage {
                reference: reference.clone(),
                registry: None,
            });
        }
        times.add(Stage::Tag, tag_started.elapsed());
        if let Some((registry, auth)) = registry {
            let existed = in_registry.unwrap_or(true);
            if !existed {
                published.image(PublishedImage {
                    reference: reference.clone(),
                    registry: Some((
                        RegistryApi::new(&registry.host, auth.clone())?,
                        request.app.to_string(),
                        tag.to_owned(),
                    )),
                });
            }
            out.step(format!("Pushing {reference}")).await;
            times
                .time(
                    Stage::Push,
                    relay(
                        self.engine.push_image(repository, tag, auth.as_ref()),
                        out,
                        true,
                    ),
                )
                .await?;
        }
        out.line("Launching App...").await;
        let release_started = std::time::Instant::now();
        let version = self
            .controller
            .release(&BuildHook {
                user: &request.user,
                app: request.app.as_str(),
                sha: hex,
                image: &reference,
                procfile: &request.process_types.0,
                dockerfile: true,
            })
            .await;
        times.add(Stage::Release, release_started.elapsed());
        let version = version?;
        out.line(format!("Done, {}:v{version} deployed", request.app))
            .await;
        Ok(version)
    }
}
