//! What the pipeline is told at start-up: build limits, the registry, egress.

use std::path::PathBuf;
use std::time::Duration;

use deis_types::Secret;

/// Limits and placement of build containers.
#[derive(Debug, Clone)]
pub struct BuildSettings {
    pub stack_image: String,
    /// Where images go; `None` keeps them in the local engine.
    pub registry: Option<RegistrySettings>,
    pub network: String,
    /// `--build-files auto`: share `/app` and the cache with a local engine when it can.
    pub share_files: bool,
    pub memory_bytes: i64,
    pub pids_limit: i64,
    pub timeout: Duration,
    /// Compressed slug size that gets a warning.
    pub slug_warn_bytes: u64,
    /// Compressed slug size above which the push is refused.
    pub slug_max_bytes: u64,
    /// Per-buildpack limit for fetching BUILDPACK_URL / `.buildpacks` entries.
    pub fetch_timeout: Duration,
    /// Most a fetched buildpack tarball may unpack to (sum of its file sizes).
    pub buildpack_max_bytes: u64,
    /// Where pushes keep private workspaces (fetched buildpacks, the cache archive):
    /// `DATA_DIR/tmp`, emptied by the start-up sweep after a crash.
    pub work_dir: PathBuf,
    /// `--stack-name`; unset, the stack image's label names the stack.
    pub stack_name: Option<String>,
    /// What builds get to reach package registries through a corporate network.
    pub egress: EgressSettings,
    /// The static Cloud Native Buildpacks driver (`deis-cnb`) copied into CNB builds;
    /// without one, a push that selects CNBs is refused.
    pub cnb_driver: Option<PathBuf>,
}

/// Extra trust and proxies for builds. `Debug` shows proxy URLs without credentials.
#[derive(Clone, Default)]
pub struct EgressSettings {
    /// `--build-ca-file` and its PEM text, checked at start-up.
    pub ca: Option<(PathBuf, String)>,
    pub http_proxy: Option<Secret>,
    pub https_proxy: Option<Secret>,
    pub no_proxy: Option<String>,
}

impl EgressSettings {
    /// The proxy variables of a build's environment, both spellings as tools differ.
    pub fn proxy_env(&self) -> Vec<(&'static str, &str)> {
        let pairs = [
            (
                "HTTP_PROXY",
                "http_proxy",
                self.http_proxy.as_ref().map(Secret::expose),
            ),
            (
                "HTTPS_PROXY",
                "https_proxy",
                self.https_proxy.as_ref().map(Secret::expose),
            ),
            ("NO_PROXY", "no_proxy", self.no_proxy.as_deref()),
        ];
        pairs
            .into_iter()
            .filter_map(|(upper, lower, value)| Some([(upper, value?), (lower, value?)]))
            .flatten()
            .collect()
    }
}

impl std::fmt::Debug for EgressSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |proxy: &Option<Secret>| {
            proxy
                .as_ref()
                .map(|p| deis_types::names::mask_url_credentials(p.expose()))
        };
        f.debug_struct("EgressSettings")
            .field("ca_file", &self.ca.as_ref().map(|(path, _)| path))
            .field("http_proxy", &shown(&self.http_proxy))
            .field("https_proxy", &shown(&self.https_proxy))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

/// The private registry. `Debug` says whether credentials are set, never what they are
/// (the user name is half of the credential, so it is not shown either).
#[derive(Clone)]
pub struct RegistrySettings {
    /// `host:port`
    pub host: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

impl std::fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrySettings")
            .field("host", &self.host)
            .field("username", &self.username.as_ref().map(|_| Secret::new("")))
            .field("password", &self.password)
            .finish()
    }
}
