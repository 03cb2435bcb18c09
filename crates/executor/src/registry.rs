//! Tags in the private registry: whether one exists (asked through the engine, which knows
//! how to reach the registry), and removing one a failed push published (the registry's own
//! v2 HTTP API: the engine cannot delete anything from a registry).

use std::time::Duration;

use bollard::errors::Error as DockerError;
use reqwest::StatusCode;

use super::{Engine, EngineError, RegistryAuth};

/// Manifest media types we accept when asking a registry for a tag's digest.
const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json";
/// Bounds every call to the registry's HTTP API.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(30);

/// A tag a push put into the private registry: what rolling it back needs.
#[derive(Debug, Clone)]
pub struct RegistryTag {
    /// The registry's `host:port`.
    pub host: String,
    pub auth: Option<RegistryAuth>,
    /// The repository name in the registry (the app).
    pub name: String,
    pub tag: String,
}

/// What became of a tag we tried to remove from the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagRemoval {
    /// The tag's manifest was deleted.
    Deleted,
    /// The tag was not there (never published, or already gone).
    Absent,
    /// Another tag names the same manifest; deleting it would take that tag along, so both
    /// stay (the image is identical to one that is already published).
    Shared { other_tag: String },
}

impl Engine {
    /// Whether `repository:tag` exists in its registry, asked through the engine (which knows
    /// the registry's transport and auth). `Ok(None)` means "not there".
    pub async fn registry_digest(
        &self,
        repository: &str,
        tag: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<Option<String>, EngineError> {
        let reference = format!("{repository}:{tag}");
        match self
            .docker
            .inspect_registry_image(&reference, auth.map(RegistryAuth::credentials))
            .await
        {
            Ok(inspected) => Ok(Some(inspected.descriptor.digest.unwrap_or_default())),
            Err(DockerError::DockerResponseServerError {
                status_code,
                message,
            }) if status_code == 404 || message.contains("manifest unknown") => Ok(None),
            Err(error) => Err(EngineError::Registry(format!(
                "cannot look up {reference}: {error}"
            ))),
        }
    }
}

/// The registry's v2 HTTP API over plain HTTP (the in-cluster Deis registry). Basic auth
/// with the builder's registry credentials when they are set.
#[derive(Debug, Clone)]
pub struct RegistryApi {
    http: reqwest::Client,
    host: String,
    auth: Option<RegistryAuth>,
}

impl RegistryApi {
    pub fn new(host: &str, auth: Option<RegistryAuth>) -> Result<RegistryApi, EngineError> {
        let http = reqwest::Client::builder()
            .timeout(REGISTRY_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| EngineError::Registry(format!("cannot set up an HTTP client: {e}")))?;
        Ok(RegistryApi {
            http,
            host: host.to_owned(),
            auth,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, format!("http://{}/v2/{path}", self.host))
            .header(reqwest::header::ACCEPT, MANIFEST_TYPES);
        match &self.auth {
            Some(auth) => request.basic_auth(&auth.username, Some(&auth.password)),
            None => request,
        }
    }

    fn failed(&self, action: &str, detail: impl std::fmt::Display) -> EngineError {
        EngineError::Registry(format!("{action} on {}: {detail}", self.host))
    }

    /// The digest of `name:tag`'s manifest, `None` when the tag does not exist.
    async fn digest(&self, name: &str, tag: &str) -> Result<Option<String>, EngineError> {
        let action = "reading a manifest";
        let response = self
            .request(reqwest::Method::HEAD, &format!("{name}/manifests/{tag}"))
            .send()
            .await
            .map_err(|e| self.failed(action, e))?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(|digest| Some(digest.to_owned()))
                .ok_or_else(|| self.failed(action, "the reply has no Docker-Content-Digest")),
            status => Err(self.failed(action, format!("HTTP {status}"))),
        }
    }

    async fn tags(&self, name: &str) -> Result<Vec<String>, EngineError> {
        let action = "listing tags";
        let response = self
            .request(reqwest::Method::GET, &format!("{name}/tags/list"))
            .send()
            .await
            .map_err(|e| self.failed(action, e))?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        if !response.status().is_success() {
            return Err(self.failed(action, format!("HTTP {}", response.status())));
        }
        let body: serde_json::Value = response.json().await.map_err(|e| self.failed(action, e))?;
        Ok(body
            .get("tags")
            .and_then(serde_json::Value::as_array)
            .map(|tags| {
                tags.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Removes `name:tag` unless another tag of `name` names the same manifest (a registry
    /// deletes manifests, not tags, so that tag would go too).
    pub async fn delete_tag(&self, name: &str, tag: &str) -> Result<TagRemoval, EngineError> {
        let Some(digest) = self.digest(name, tag).await? else {
            return Ok(TagRemoval::Absent);
        };
        for other in self.tags(name).await? {
            if other != tag && self.digest(name, &other).await?.as_deref() == Some(&digest) {
                return Ok(TagRemoval::Shared { other_tag: other });
            }
        }
        let response = self
            .request(
                reqwest::Method::DELETE,
                &format!("{name}/manifests/{digest}"),
            )
            .send()
            .await
            .map_err(|e| self.failed("deleting a manifest", e))?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(TagRemoval::Absent),
            status if status.is_success() => Ok(TagRemoval::Deleted),
            status => Err(self.failed("deleting a manifest", format!("HTTP {status}"))),
        }
    }
}
