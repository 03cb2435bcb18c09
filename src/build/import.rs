//! Image import (`deis pull`): an existing image is pulled, tagged into the app's
//! repository under a content-derived tag, pushed to the private registry and released.

use super::dockerfile::{image_repository, registry_auth, relay};
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
        relay(
            self.engine.pull_image(image, source_auth.as_ref()),
            out,
            true,
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
            .tag_push_release(request, &published, &pulled, hex, (&repository, &tag), out)
            .await;
        match &imported {
            Ok(_) => published.keep(),
            Err(BuildError::Controller(error)) if error.is_unreachable() => {
                tracing::warn!("release outcome unknown; keeping the imported image");
            }
            Err(_) => published.roll_back().await,
        }
        let version = imported?;
        Ok(Imported {
            version,
            image: reference,
        })
    }

    async fn tag_push_release(
        &self,
        request: &ImportRequest,
        published: &Published,
        pulled: &str,
        hex: &str,
        (repository, tag): (&str, &str),
        out: &Output,
    ) -> Result<u64, BuildError> {
        let reference = format!("{repository}:{tag}");
        if self.engine.image_id(&reference).await.is_err() {
            self.engine.tag_image(pulled, repository, tag).await?;
            published.image(PublishedImage {
                reference: reference.clone(),
                registry: None,
            });
        }
        if let Some(registry) = &self.settings.registry {
            let auth = registry_auth(registry);
            let existed = self
                .engine
                .registry_digest(repository, tag, auth.as_ref())
                .await
                .map(|digest| digest.is_some())
                // Unknown: treat as existing, so a rollback never deletes what it did not make.
                .unwrap_or(true);
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
            relay(
                self.engine.push_image(repository, tag, auth.as_ref()),
                out,
                true,
            )
            .await?;
        }
        out.line("Launching App...").await;
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
            .await?;
        out.line(format!("Done, {}:v{version} deployed", request.app))
            .await;
        Ok(version)
    }
}
