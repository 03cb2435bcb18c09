//! Buildpack builds: the app runs through the built-in (classic Heroku API) buildpacks in
//! an ephemeral container; `/app` comes out as a slug.

use std::collections::BTreeMap;
use std::io;

use futures_util::StreamExt;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::{blocking_writer, input, Artifact, BuildError, Keys, Pipeline, Published, STACK};
use crate::engine::{BuildContainer, BuildContainerSpec};
use crate::pipe::ByteStream;
use crate::push::{Output, Push};
use crate::slug::{self, PackOptions, ProcessTypes, SlugIgnore};

/// Largest `.slugignore` we read.
const MAX_SLUGIGNORE: usize = 64 * 1024;

impl Pipeline {
    /// Compiles the app in a build container and stores its slug and Procfile.
    pub(super) async fn buildpack_build(
        &self,
        push: &Push,
        config: &BTreeMap<String, String>,
        out: &Output,
        published: &Published,
        keys: &Keys,
    ) -> Result<Artifact, BuildError> {
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
        let built = self.compile(&container, push, config, out).await;
        let packed = match built {
            Ok(()) => {
                self.pack_and_store(&container, ignore, keys, published)
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
        out.detail(describe_types(&packed, &types)).await;
        out.step(format!(
            "Compiled slug size is {}",
            human_size(packed.compressed_bytes)
        ))
        .await;
        let procfile = types.to_procfile();
        published
            .put(&keys.procfile, &mut procfile.as_bytes())
            .await?;
        Ok(Artifact {
            image: keys.slug.clone(),
            process_types: types,
            dockerfile: false,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_heroku() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1536), "1.5K");
        assert_eq!(human_size(3 << 20), "3.0M");
    }
}
