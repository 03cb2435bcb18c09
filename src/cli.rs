//! Command-line interface: every flag can also come from the environment, with the
//! Deis Workflow names where operators already set one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "deis-builder",
    version,
    about = "git push builder and slug pipeline"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the process's arguments like [`Parser::parse`] (a usage error exits with
    /// clap's message) and records which settings came from the environment, so that an
    /// invalid one can be traced to its variable.
    pub fn parse_with_sources() -> Cli {
        let matches = Cli::command().get_matches();
        Cli::from_matches(&matches).unwrap_or_else(|error| error.exit())
    }

    fn from_matches(matches: &ArgMatches) -> Result<Cli, clap::Error> {
        let mut cli = Cli::from_arg_matches(matches)?;
        let definition = Cli::command();
        if let (Some(serve), Some((name, sub_matches))) =
            (cli.command.serve_args_mut(), matches.subcommand())
        {
            if let Some(sub) = definition.find_subcommand(name) {
                serve.from_env = env_sources(sub, sub_matches);
            }
        }
        Ok(cli)
    }
}

/// `--flag` → environment variable, for each value of `command` that came from its variable.
fn env_sources(command: &clap::Command, matches: &ArgMatches) -> BTreeMap<String, String> {
    command
        .get_arguments()
        .filter(|arg| matches.value_source(arg.get_id().as_str()) == Some(ValueSource::EnvVariable))
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let env = arg.get_env()?;
            Some((format!("--{long}"), env.to_string_lossy().into_owned()))
        })
        .collect()
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the SSH git server, the build pipeline and the health endpoints.
    Serve(Box<ServeArgs>),
    /// Git pre-receive hook: relays a push to the running server (installed by the server).
    Hook,
    /// Import an existing image: pull it, push it to the private registry, release it.
    Pull(Box<PullArgs>),
    /// Delete an app's build cache, from the storage `serve` uses (same flags and environment).
    PurgeCache(Box<PurgeCacheArgs>),
}

impl Command {
    fn serve_args_mut(&mut self) -> Option<&mut ServeArgs> {
        match self {
            Command::Serve(args) => Some(args),
            Command::Pull(args) => Some(&mut args.serve),
            Command::PurgeCache(args) => Some(&mut args.serve),
            Command::Hook => None,
        }
    }
}

#[derive(Debug, Args)]
pub struct PurgeCacheArgs {
    /// The app whose build cache is deleted.
    pub app: String,

    /// The builder's own settings (storage, data dir), as for `serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Numbers and switches are kept as text and parsed in [`crate::config`], so that a bad
/// value (a negative number too, hence `allow_negative_numbers`) gets the same one-line
/// error as every other setting instead of clap's usage error.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory for repositories, host keys, local storage and standalone-controller state.
    #[arg(
        long,
        env = "DEIS_BUILDER_DATA_DIR",
        default_value = "/var/lib/deis-builder"
    )]
    pub data_dir: PathBuf,

    /// SSH listen address [default: $SSH_HOST_IP:$SSH_HOST_PORT, or 0.0.0.0:2223]
    #[arg(long, env = "DEIS_BUILDER_SSH_ADDR")]
    pub ssh_addr: Option<String>,

    /// HTTP listen address for /healthz and /readiness [default: 0.0.0.0:$HEALTH_SERVER_PORT, or 0.0.0.0:8092]
    #[arg(long, env = "DEIS_BUILDER_HTTP_ADDR")]
    pub http_addr: Option<String>,

    /// Deis Workflow controller base URL; without it the built-in standalone controller is used
    /// [default: from $DEIS_CONTROLLER_SERVICE_HOST and $DEIS_CONTROLLER_SERVICE_PORT when set]
    #[arg(long, env = "DEIS_CONTROLLER_URL")]
    pub controller_url: Option<String>,

    /// Shared secret sent to the controller as X-Deis-Builder-Auth.
    #[arg(long, env = "DEIS_BUILDER_KEY", hide_env_values = true)]
    pub builder_key: Option<String>,

    /// File holding the builder key (used when --builder-key is not given).
    #[arg(long, env = "DEIS_BUILDER_KEY_FILE")]
    pub builder_key_file: Option<PathBuf>,

    /// Controller request timeout, e.g. `30s`.
    #[arg(long, env = "DEIS_BUILDER_CONTROLLER_TIMEOUT", default_value = "30s")]
    pub controller_timeout: String,

    /// Standalone mode: OpenSSH authorized_keys file; the key comment is the user name
    /// [default: DATA_DIR/authorized_keys]
    #[arg(long, env = "DEIS_BUILDER_AUTHORIZED_KEYS")]
    pub authorized_keys: Option<PathBuf>,

    /// Object storage: a local directory, or `s3://BUCKET` [default: DATA_DIR/storage]
    #[arg(long, env = "DEIS_BUILDER_STORAGE")]
    pub storage: Option<String>,

    /// S3 endpoint for S3-compatible servers (MinIO, Ceph, moto, …); AWS when not set.
    #[arg(long, env = "DEIS_BUILDER_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// Use virtual-hosted-style S3 URLs instead of path-style ones (from the environment:
    /// true/false, yes/no, on/off or 1/0).
    // A plain flag on the command line; the environment's spelling is checked in config.
    #[arg(
        long,
        env = "DEIS_BUILDER_S3_VIRTUAL_HOSTED",
        action = ArgAction::SetTrue,
        value_parser = clap::builder::StringValueParser::new()
    )]
    pub s3_virtual_hosted: String,

    /// Image that buildpack builds run in.
    #[arg(
        long,
        env = "DEIS_BUILDER_STACK_IMAGE",
        default_value = "deis-builder/stack:bookworm"
    )]
    pub stack_image: String,

    /// SSH host key file(s) in OpenSSH format [default: DATA_DIR/ssh_host_ed25519_key, generated on first start]
    #[arg(
        long = "host-key",
        env = "DEIS_BUILDER_HOST_KEYS",
        value_delimiter = ','
    )]
    pub host_keys: Vec<PathBuf>,

    /// Engine network of build containers: `bridge` (a stock engine's default), `host`
    /// (an engine without a bridge), another engine network, or `none` (sealed builds).
    #[arg(long, env = "DEIS_BUILDER_BUILD_NETWORK", default_value = "bridge")]
    pub build_network: String,

    /// How build files reach the build container: `auto` shares `/app` and the cache
    /// with a local engine through bind mounts (checked at start-up; a remote engine
    /// falls back to copying), `copy` always moves them through the engine's API.
    #[arg(long, env = "DEIS_BUILDER_BUILD_FILES", default_value = "auto")]
    pub build_files: String,

    /// PEM file of CA certificates every build trusts besides the stack's own (a
    /// corporate proxy's CA).
    #[arg(long, env = "DEIS_BUILDER_BUILD_CA_FILE")]
    pub build_ca_file: Option<PathBuf>,

    /// HTTP proxy URL handed to builds (`HTTP_PROXY`/`http_proxy`).
    #[arg(long, env = "DEIS_BUILDER_BUILD_HTTP_PROXY")]
    pub build_http_proxy: Option<String>,

    /// HTTPS proxy URL handed to builds (`HTTPS_PROXY`/`https_proxy`).
    #[arg(long, env = "DEIS_BUILDER_BUILD_HTTPS_PROXY")]
    pub build_https_proxy: Option<String>,

    /// Hosts builds reach without the proxy (`NO_PROXY`/`no_proxy`), comma-separated.
    #[arg(long, env = "DEIS_BUILDER_BUILD_NO_PROXY")]
    pub build_no_proxy: Option<String>,

    /// The stack name builds see in `$STACK` [default: the stack image's
    /// `io.deis.builder.stack` or `io.buildpacks.stack.id` label, else `deis-bookworm`].
    #[arg(long, env = "DEIS_BUILDER_STACK_NAME")]
    pub stack_name: Option<String>,

    /// Memory limit of a build container, e.g. `2g`, `512m`.
    #[arg(long, env = "DEIS_BUILDER_BUILD_MEMORY", default_value = "2g")]
    pub build_memory: String,

    /// Process limit of a build container.
    #[arg(
        long,
        env = "DEIS_BUILDER_BUILD_PIDS",
        default_value = "1024",
        allow_negative_numbers = true
    )]
    pub build_pids: String,

    /// Longest a buildpack build may run, e.g. `15m`.
    #[arg(long, env = "DEIS_BUILDER_BUILD_TIMEOUT", default_value = "15m")]
    pub build_timeout: String,

    /// Compiled slug size above which the push gets a warning, e.g. `300m`.
    #[arg(long, env = "DEIS_BUILDER_SLUG_WARN_SIZE", default_value = "300m")]
    pub slug_warn_size: String,

    /// Largest compiled slug accepted; a bigger one rejects the push, e.g. `500m`.
    #[arg(long, env = "DEIS_BUILDER_SLUG_MAX_SIZE", default_value = "500m")]
    pub slug_max_size: String,

    /// Longest fetching one BUILDPACK_URL or .buildpacks entry may take, e.g. `2m`.
    #[arg(
        long,
        env = "DEIS_BUILDER_BUILDPACK_FETCH_TIMEOUT",
        default_value = "2m"
    )]
    pub buildpack_fetch_timeout: String,

    /// Largest a BUILDPACK_URL or .buildpacks tarball may unpack to; a bigger one rejects
    /// the push, e.g. `1g`.
    #[arg(long, env = "DEIS_BUILDER_BUILDPACK_MAX_SIZE", default_value = "1g")]
    pub buildpack_max_size: String,

    /// The static `deis-cnb` binary copied into Cloud Native Buildpacks builds [default:
    /// `deis-cnb` next to this executable, if there is one].
    #[arg(long, env = "DEIS_BUILDER_CNB_DRIVER")]
    pub cnb_driver: Option<PathBuf>,

    /// Private registry (HOST:PORT) that Dockerfile builds and imports are pushed to; without
    /// one, images stay in the local engine [default: from $DEIS_REGISTRY_SERVICE_HOST and
    /// $DEIS_REGISTRY_SERVICE_PORT when set]
    #[arg(long, env = "DEIS_BUILDER_REGISTRY")]
    pub registry: Option<String>,

    /// User name for the private registry.
    #[arg(long, env = "DEIS_REGISTRY_USERNAME")]
    pub registry_username: Option<String>,

    /// Password for the private registry.
    #[arg(long, env = "DEIS_REGISTRY_PASSWORD", hide_env_values = true)]
    pub registry_password: Option<String>,

    /// Log format: `text` (for people; `human` also works) or `json` (one object a line).
    #[arg(long, env = "DEIS_BUILDER_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Builds that run at once; further pushes wait in line and are told their position.
    #[arg(
        long,
        env = "DEIS_BUILDER_MAX_BUILDS",
        default_value = "8",
        allow_negative_numbers = true
    )]
    pub max_builds: String,

    /// SSH connections served at once; more are refused until one ends.
    #[arg(
        long,
        env = "DEIS_BUILDER_MAX_CONNECTIONS",
        default_value = "256",
        allow_negative_numbers = true
    )]
    pub max_connections: String,

    /// An SSH connection that has not authenticated within this time is dropped, e.g. `30s`.
    #[arg(long, env = "DEIS_BUILDER_LOGIN_TIMEOUT", default_value = "30s")]
    pub login_timeout: String,

    /// An SSH connection on which nothing moves for this long is closed, e.g. `10m`. The
    /// builder's keepalives count while the client answers them, so silent builds are not cut.
    #[arg(long, env = "DEIS_BUILDER_IDLE_TIMEOUT", default_value = "10m")]
    pub idle_timeout: String,

    /// Rejected authentication attempts per SSH connection before it is closed.
    #[arg(
        long,
        env = "DEIS_BUILDER_MAX_AUTH_ATTEMPTS",
        default_value = "6",
        allow_negative_numbers = true
    )]
    pub max_auth_attempts: String,

    /// Most bytes one push may send (the git pack), e.g. `1g`; a bigger push is refused and
    /// nothing of it is stored.
    #[arg(long, env = "DEIS_BUILDER_MAX_PUSH_SIZE", default_value = "1g")]
    pub max_push_size: String,

    /// How long a push waits for another push to the same app to finish, e.g. `5m`; `0`
    /// refuses it at once.
    #[arg(long, env = "DEIS_BUILDER_LOCK_WAIT", default_value = "5m")]
    pub lock_wait: String,

    /// With S3 storage shared by several builders: an app's lease not renewed for this long
    /// (its builder died or lost the store) may be taken over by another builder, e.g. `30s`.
    #[arg(long, env = "DEIS_BUILDER_LEASE_TTL", default_value = "30s")]
    pub lease_ttl: String,

    /// With S3 storage: the most bytes of saved git objects fetched to bring a builder's
    /// copy of an app's repository up to date before a push, e.g. `1g`; over it, the push
    /// sends the whole history instead.
    #[arg(long, env = "DEIS_BUILDER_REPO_RESTORE_MAX", default_value = "1g")]
    pub repo_restore_max: String,

    /// After SIGTERM, how long running builds get to finish before they are cancelled, e.g. `30s`.
    #[arg(long, env = "DEIS_BUILDER_SHUTDOWN_GRACE", default_value = "30s")]
    pub shutdown_grace: String,

    /// Settings whose value came from the environment: `--flag` → variable name.
    #[arg(skip)]
    pub from_env: BTreeMap<String, String>,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub import: ImportArgs,

    /// The builder's own settings (controller, registry, data dir), as for `serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The image to import, e.g. `registry.example.com/team/web:1.4`.
    pub image: String,

    /// App to release the image as.
    #[arg(long)]
    pub app: String,

    /// Procfile giving the image's process types.
    #[arg(long)]
    pub procfile: Option<PathBuf>,

    /// User the release is made for (the controller checks they may deploy the app).
    #[arg(long, env = "USER", default_value = "admin")]
    pub user: String,

    /// User name for the registry the image comes from.
    #[arg(long, env = "DEIS_PULL_USERNAME")]
    pub source_username: Option<String>,

    /// Password for the registry the image comes from.
    #[arg(long, env = "DEIS_PULL_PASSWORD", hide_env_values = true)]
    pub source_password: Option<String>,
}
