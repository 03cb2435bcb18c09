//! Validated settings. Flags and environment are parsed here once; an invalid value stops
//! start-up with one line naming the setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::ServeArgs;
pub use deis_frontdoor::LimitSettings;
pub use deis_pipeline::settings::{BuildSettings, EgressSettings, RegistrySettings};
pub use deis_types::units::{format_duration, format_size};
pub use deis_types::Secret;

/// `invalid setting --max-builds: "abc" is not a whole number of at least 1 (from env
/// DEIS_BUILDER_MAX_BUILDS)`: the setting as a flag, and the variable when the value came
/// from the environment.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
    /// The environment variable(s) the bad value came from; `None` for the command line
    /// or a default.
    pub env: Option<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid setting {}: {}", self.setting, self.problem)?;
        match &self.env {
            Some(env) => write!(f, " (from env {env})"),
            None => Ok(()),
        }
    }
}

impl ConfigError {
    /// Names the variable(s) the bad value came from, if it came from the environment.
    fn came_from(mut self, env: Option<&str>) -> ConfigError {
        if let Some(env) = env {
            self.env = Some(env.to_owned());
        }
        self
    }
}

fn invalid(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.into(),
        env: None,
    }
}

#[derive(Debug, Clone)]
pub enum StorageSettings {
    Local(PathBuf),
    S3 {
        bucket: String,
        endpoint: Option<String>,
        path_style: bool,
    },
}

#[derive(Debug, Clone)]
pub enum ControllerSettings {
    Standalone {
        authorized_keys: PathBuf,
    },
    Deis {
        url: String,
        builder_key: Secret,
        timeout: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// The shared secret callers of the import endpoint must present (the Deis builder key).
    /// Without one the endpoint is off.
    pub builder_key: Option<Secret>,
    pub ssh_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub host_keys: Vec<PathBuf>,
    pub controller: ControllerSettings,
    pub storage: StorageSettings,
    pub build: BuildSettings,
    pub limits: LimitSettings,
    pub log_format: LogFormat,
    /// `DEIS_DEBUG`: debug-level logs unless `RUST_LOG` says otherwise.
    pub debug: bool,
}

impl Settings {
    pub fn from_args(args: ServeArgs) -> Result<Settings, ConfigError> {
        Self::from_args_and_env(args, |name| std::env::var(name).ok())
    }

    /// `env` looks up the Deis-era variables that combine into one setting. An error names
    /// the variable when the bad value came from the environment (`args.from_env`).
    pub fn from_args_and_env(
        mut args: ServeArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let from_env = std::mem::take(&mut args.from_env);
        Self::validate(args, env).map_err(|error| match from_env.get(error.setting) {
            Some(variable) if error.env.is_none() => error.came_from(Some(variable)),
            _ => error,
        })
    }

    fn validate(
        args: ServeArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let data_dir = args.data_dir.clone();
        if data_dir.as_os_str().is_empty() {
            return Err(invalid("--data-dir", "must not be empty"));
        }
        let ssh_addr = match &args.ssh_addr {
            Some(addr) => parse_addr("--ssh-addr", addr)?,
            None => {
                let host = env("SSH_HOST_IP").unwrap_or_else(|| "0.0.0.0".into());
                let port = env("SSH_HOST_PORT").unwrap_or_else(|| "2223".into());
                parse_addr("SSH_HOST_IP/SSH_HOST_PORT", &format!("{host}:{port}"))?
            }
        };
        let http_addr = match &args.http_addr {
            Some(addr) => parse_addr("--http-addr", addr)?,
            None => {
                let port = env("HEALTH_SERVER_PORT").unwrap_or_else(|| "8092".into());
                parse_addr("HEALTH_SERVER_PORT", &format!("0.0.0.0:{port}"))?
            }
        };
        let host_keys = if args.host_keys.is_empty() {
            vec![data_dir.join("ssh_host_ed25519_key")]
        } else {
            args.host_keys.clone()
        };
        // Both modes take the key from either place: standalone needs it for imports.
        let builder_key = builder_key(args.builder_key.clone(), args.builder_key_file.as_deref())?;
        let controller = controller_settings(
            args.controller_url.clone(),
            builder_key.clone(),
            &args.controller_timeout,
            args.authorized_keys
                .clone()
                .unwrap_or_else(|| data_dir.join("authorized_keys")),
            &env,
        )?;
        // The SDK's own variables stand in for --s3-endpoint; an error names the one used.
        let s3_endpoint = match args.s3_endpoint.clone() {
            Some(endpoint) => Some((endpoint, None)),
            None => ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
                .into_iter()
                .find_map(|name| Some((env(name)?, Some(name)))),
        };
        let storage = storage_settings(
            args.storage.clone(),
            s3_endpoint,
            !parse_switch("--s3-virtual-hosted", &args.s3_virtual_hosted)?,
            &data_dir,
        )?;
        let registry = registry_settings(
            args.registry.clone(),
            args.registry_username.clone(),
            args.registry_password.clone(),
            &env,
        )?;
        let build = build_settings(&args, registry, &data_dir)?;
        let limits = limit_settings(&args)?;
        let log_format = log_format(&args.log_format)?;
        // Deis components read DEIS_DEBUG as `true`/`1`; the other usual spellings work too.
        let debug = match env("DEIS_DEBUG") {
            Some(value) => parse_switch("DEIS_DEBUG", &value)?,
            None => false,
        };
        Ok(Settings {
            data_dir,
            builder_key,
            ssh_addr,
            http_addr,
            host_keys,
            controller,
            storage,
            build,
            limits,
            log_format,
            debug,
        })
    }
}

/// Limits and placement of build containers.
/// `--cnb-driver`, checked; unset, a `deis-cnb` next to this executable.
fn cnb_driver(given: Option<PathBuf>) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(path) = given {
        if !path.is_file() {
            return Err(invalid(
                "--cnb-driver",
                format!("{} is not a file", path.display()),
            ));
        }
        return Ok(Some(path));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("deis-cnb")));
    Ok(beside.filter(|path| path.is_file()))
}

fn build_settings(
    args: &ServeArgs,
    registry: Option<RegistrySettings>,
    data_dir: &Path,
) -> Result<BuildSettings, ConfigError> {
    Ok(BuildSettings {
        stack_image: non_empty("--stack-image", args.stack_image.clone())?,
        registry,
        network: non_empty("--build-network", args.build_network.clone())?,
        share_files: match args.build_files.trim() {
            "auto" => true,
            "copy" => false,
            other => {
                return Err(invalid(
                    "--build-files",
                    format!("{other:?} is neither `auto` nor `copy`"),
                ))
            }
        },
        memory_bytes: parse_memory("--build-memory", &args.build_memory)?,
        pids_limit: parse_number("--build-pids", &args.build_pids, 16)?,
        timeout: parse_duration("--build-timeout", &args.build_timeout)?,
        slug_warn_bytes: parse_size("--slug-warn-size", &args.slug_warn_size, 1)?,
        slug_max_bytes: parse_size("--slug-max-size", &args.slug_max_size, 1)?,
        fetch_timeout: parse_duration("--buildpack-fetch-timeout", &args.buildpack_fetch_timeout)?,
        buildpack_max_bytes: parse_size("--buildpack-max-size", &args.buildpack_max_size, 1)?,
        work_dir: data_dir.join("tmp"),
        stack_name: args
            .stack_name
            .clone()
            .map(|name| stack_name("--stack-name", name))
            .transpose()?,
        egress: egress_settings(args)?,
        cnb_driver: cnb_driver(args.cnb_driver.clone())?,
    })
}

/// Extra trust and proxies for builds.
fn egress_settings(args: &ServeArgs) -> Result<EgressSettings, ConfigError> {
    Ok(EgressSettings {
        ca: args
            .build_ca_file
            .clone()
            .map(|path| read_ca_file(&path).map(|pem| (path, pem)))
            .transpose()?,
        http_proxy: args
            .build_http_proxy
            .clone()
            .map(|url| proxy_url("--build-http-proxy", url))
            .transpose()?,
        https_proxy: args
            .build_https_proxy
            .clone()
            .map(|url| proxy_url("--build-https-proxy", url))
            .transpose()?,
        no_proxy: args
            .build_no_proxy
            .clone()
            .map(|hosts| plain_value("--build-no-proxy", hosts))
            .transpose()?,
    })
}

/// Renewals go every third of the TTL: a shorter one would mostly measure the store's
/// round trips.
const MIN_LEASE_TTL: Duration = Duration::from_secs(3);

fn limit_settings(args: &ServeArgs) -> Result<LimitSettings, ConfigError> {
    Ok(LimitSettings {
        max_builds: parse_number("--max-builds", &args.max_builds, 1)?,
        max_connections: parse_number("--max-connections", &args.max_connections, 1)?,
        login_timeout: parse_duration("--login-timeout", &args.login_timeout)?,
        idle_timeout: parse_duration("--idle-timeout", &args.idle_timeout)?,
        max_auth_attempts: parse_number("--max-auth-attempts", &args.max_auth_attempts, 1)?,
        max_push_bytes: parse_size("--max-push-size", &args.max_push_size, 1)?,
        lock_wait: match args.lock_wait.trim() {
            "0" | "0s" => Duration::ZERO,
            other => parse_duration("--lock-wait", other)?,
        },
        shutdown_grace: parse_duration("--shutdown-grace", &args.shutdown_grace)?,
        lease_ttl: match parse_duration("--lease-ttl", &args.lease_ttl)? {
            ttl if ttl < MIN_LEASE_TTL => {
                return Err(invalid(
                    "--lease-ttl",
                    format!("{ttl:?} is too short: renewals go every third of it; use at least 3s"),
                ))
            }
            ttl => ttl,
        },
        repo_restore_max_bytes: parse_size("--repo-restore-max", &args.repo_restore_max, 0)?,
    })
}

fn log_format(value: &str) -> Result<LogFormat, ConfigError> {
    match value {
        "text" | "human" => Ok(LogFormat::Human),
        "json" => Ok(LogFormat::Json),
        other => Err(invalid(
            "--log-format",
            format!("{other:?} is neither `text` nor `json`"),
        )),
    }
}

impl Settings {
    /// Logs the effective settings at start-up, as one event. Every secret shows as
    /// `[redacted]` when set (`None` when not); the S3 credentials, which the SDK reads from
    /// the environment, only say whether they are set.
    pub fn log_effective(&self) {
        let s3_credentials = match self.storage {
            StorageSettings::S3 { .. } => s3_credentials_summary(|name| std::env::var(name).ok()),
            StorageSettings::Local(_) => "not used".to_owned(),
        };
        tracing::info!(
            data_dir = %self.data_dir.display(),
            ssh_addr = %self.ssh_addr,
            http_addr = %self.http_addr,
            host_keys = ?self.host_keys,
            controller = ?self.controller,
            builder_key = ?self.builder_key,
            storage = ?self.storage,
            s3_credentials = %s3_credentials,
            build = ?self.build,
            limits = ?self.limits,
            log_format = ?self.log_format,
            "effective settings"
        );
    }
}

/// Whether a log event may be written whatever `RUST_LOG` says: dependencies that print
/// credentials in verbose events are capped. The AWS SDK prints the S3 identity (access key
/// id included) when it resolves an endpoint at debug level and whole signed requests at
/// trace; HTTP clients print headers (the builder key, registry auth) at trace.
pub fn log_event_allowed(metadata: &tracing::Metadata<'_>) -> bool {
    let target = metadata.target();
    let level = *metadata.level();
    if target.starts_with("aws_smithy_runtime::client::orchestrator::endpoints") {
        return level <= tracing::Level::INFO;
    }
    let chatty = ["aws_", "hyper", "h2", "reqwest", "bollard", "russh"];
    !(level == tracing::Level::TRACE && chatty.iter().any(|prefix| target.starts_with(prefix)))
}

/// `AWS_ACCESS_KEY_ID=[redacted] AWS_SECRET_ACCESS_KEY=[redacted] AWS_SESSION_TOKEN unset
/// region=us-east-1`: whether each credential is set, never its value.
fn s3_credentials_summary(env: impl Fn(&str) -> Option<String>) -> String {
    let mut parts: Vec<String> = [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ]
    .iter()
    .map(|name| match env(name).filter(|v| !v.is_empty()) {
        Some(_) => format!("{name}=[redacted]"),
        None => format!("{name} unset"),
    })
    .collect();
    let region = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION"));
    parts.push(format!("region={}", region.as_deref().unwrap_or("unset")));
    parts.join(" ")
}

/// The builder key from `--builder-key` (an empty value counts as unset) or, failing
/// that, the first line of `--builder-key-file` (the usual Kubernetes Secret mount).
fn builder_key(
    key: Option<String>,
    key_file: Option<&Path>,
) -> Result<Option<Secret>, ConfigError> {
    if let Some(key) = key.filter(|key| !key.trim().is_empty()) {
        return Ok(Some(Secret::new(key.trim().to_owned())));
    }
    let Some(file) = key_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file).map_err(|e| {
        invalid(
            "--builder-key-file",
            format!("cannot read {}: {e}", file.display()),
        )
    })?;
    match text.trim() {
        "" => Err(invalid(
            "--builder-key-file",
            format!("{} is empty", file.display()),
        )),
        key => Ok(Some(Secret::new(key.to_owned()))),
    }
}

fn controller_settings(
    url: Option<String>,
    builder_key: Option<Secret>,
    timeout: &str,
    authorized_keys: PathBuf,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<ControllerSettings, ConfigError> {
    let url = url.or_else(|| {
        let host = env("DEIS_CONTROLLER_SERVICE_HOST")?;
        let port = env("DEIS_CONTROLLER_SERVICE_PORT").unwrap_or_else(|| "80".into());
        Some(format!("http://{host}:{port}"))
    });
    let Some(url) = url else {
        return Ok(ControllerSettings::Standalone { authorized_keys });
    };
    let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
    if !scheme_ok || url.len() < "http://x".len() {
        return Err(invalid(
            "--controller-url",
            format!("{url:?} is not an http(s) URL"),
        ));
    }
    let Some(builder_key) = builder_key else {
        return Err(invalid(
            "--builder-key",
            "a controller URL is set but no builder key (DEIS_BUILDER_KEY or --builder-key-file)",
        ));
    };
    Ok(ControllerSettings::Deis {
        url,
        builder_key,
        timeout: parse_duration("--controller-timeout", timeout)?,
    })
}

fn registry_settings(
    host: Option<String>,
    username: Option<String>,
    password: Option<String>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<RegistrySettings>, ConfigError> {
    let (host, origin) = match host {
        Some(host) => (host, None),
        None => {
            let Some(host) = env("DEIS_REGISTRY_SERVICE_HOST") else {
                return Ok(None);
            };
            let port = env("DEIS_REGISTRY_SERVICE_PORT").unwrap_or_else(|| "5000".into());
            (
                format!("{host}:{port}"),
                Some("DEIS_REGISTRY_SERVICE_HOST/DEIS_REGISTRY_SERVICE_PORT"),
            )
        }
    };
    let valid = !host.is_empty()
        && !host.contains("://")
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if !valid {
        return Err(invalid("--registry", format!("{host:?} is not HOST:PORT")).came_from(origin));
    }
    if username.is_some() != password.is_some() {
        return Err(invalid(
            "--registry-username",
            "give both a registry user name and a password, or neither",
        ));
    }
    Ok(Some(RegistrySettings {
        host,
        username,
        password: password.map(Secret::new),
    }))
}

/// `endpoint` comes with the variable it was read from, when not from `--s3-endpoint` (or
/// its own variable).
fn storage_settings(
    spec: Option<String>,
    endpoint: Option<(String, Option<&'static str>)>,
    path_style: bool,
    data_dir: &Path,
) -> Result<StorageSettings, ConfigError> {
    let Some(spec) = spec else {
        return Ok(StorageSettings::Local(data_dir.join("storage")));
    };
    if let Some(bucket) = spec.strip_prefix("s3://") {
        let bucket = bucket.trim_end_matches('/');
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return Err(invalid(
                "--storage",
                format!("{bucket:?} is not a valid S3 bucket name"),
            ));
        }
        if let Some((endpoint, origin)) = &endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(invalid(
                    "--s3-endpoint",
                    format!("{endpoint:?} is not an http(s) URL"),
                )
                .came_from(*origin));
            }
        }
        return Ok(StorageSettings::S3 {
            bucket: bucket.to_owned(),
            endpoint: endpoint.map(|(endpoint, _)| endpoint),
            path_style,
        });
    }
    if spec.contains("://") {
        return Err(invalid(
            "--storage",
            format!("{spec:?}: only directories and s3://BUCKET are supported"),
        ));
    }
    Ok(StorageSettings::Local(PathBuf::from(spec)))
}

/// Largest `--build-ca-file` accepted (a full public bundle is about 200 KiB).
const MAX_CA_FILE_BYTES: u64 = 4 << 20;

/// Reads `--build-ca-file`: PEM text with at least one certificate.
fn read_ca_file(path: &Path) -> Result<String, ConfigError> {
    let fail = |problem: String| invalid("--build-ca-file", problem);
    let size = std::fs::metadata(path)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?
        .len();
    if size > MAX_CA_FILE_BYTES {
        return Err(fail(format!("{} is larger than 4 MiB", path.display())));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(fail(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(text)
}

/// A proxy URL: `http(s)://[user:password@]host[:port]`, one line.
fn proxy_url(setting: &'static str, url: String) -> Result<Secret, ConfigError> {
    let url = plain_value(setting, url)?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(invalid(
            setting,
            format!(
                "{:?} is not an http(s) URL",
                deis_types::names::mask_url_credentials(&url)
            ),
        ));
    }
    Ok(Secret::new(url))
}

/// A stack name as buildpacks compare it: letters, digits, `-`, `_`, `.`.
pub fn stack_name(setting: &'static str, name: String) -> Result<String, ConfigError> {
    if deis_types::names::is_stack_name(&name) {
        Ok(name)
    } else {
        Err(invalid(
            setting,
            format!("{name:?} is not a stack name (letters, digits, `-`, `_`, `.`)"),
        ))
    }
}

/// A value that becomes one environment variable: trimmed, non-empty, no control bytes.
fn plain_value(setting: &'static str, value: String) -> Result<String, ConfigError> {
    let value = value.trim().to_owned();
    if value.is_empty() || value.chars().any(char::is_control) {
        return Err(invalid(setting, "must be one non-empty line"));
    }
    Ok(value)
}

fn non_empty(setting: &'static str, value: String) -> Result<String, ConfigError> {
    if value.trim().is_empty() {
        Err(invalid(setting, "must not be empty"))
    } else {
        Ok(value)
    }
}

fn parse_addr(setting: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| invalid(setting, format!("{value:?} is not an IP:PORT address")))
}

/// A whole number of at least `min`: `8`, `1024`.
fn parse_number<T>(setting: &'static str, value: &str, min: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    match value.trim().parse::<T>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(invalid(
            setting,
            format!("{value:?} is not a whole number of at least {min}"),
        )),
    }
}

/// An on/off setting from the environment: `true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`
/// in any case; empty counts as unset (off). Anything else is refused rather than guessed.
fn parse_switch(setting: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid(
            setting,
            format!("{value:?} is not a switch: use true/false, yes/no, on/off or 1/0"),
        )),
    }
}

/// `90`, `90s`, `15m`, `2h`.
pub fn parse_duration(setting: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let (digits, unit) = split_number(value);
    let n: u64 = digits.parse().map_err(|_| {
        invalid(
            setting,
            format!("{value:?} is not a duration like 90s, 15m or 1h"),
        )
    })?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => {
            return Err(invalid(
                setting,
                format!("{value:?} is not a duration like 90s, 15m or 1h"),
            ))
        }
    };
    if secs == 0 {
        return Err(invalid(setting, "must be longer than zero"));
    }
    Ok(Duration::from_secs(secs))
}

/// A size: `300m`, `2g`, `512k`, `1048576` (bytes), at least `min` bytes.
fn parse_size(setting: &'static str, value: &str, min: u64) -> Result<u64, ConfigError> {
    let (digits, unit) = split_number(value);
    let bad = || invalid(setting, format!("{value:?} is not a size like 300m or 1g"));
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(bad()),
    };
    let bytes = n.checked_mul(factor).ok_or_else(bad)?;
    if bytes < min.max(1) {
        let least = match min {
            0 | 1 => "larger than zero".to_owned(),
            min => format!("at least {}", format_size(min)),
        };
        return Err(invalid(
            setting,
            format!("{value:?}: the size must be {least}"),
        ));
    }
    Ok(bytes)
}

/// A container memory limit (the engine takes an `i64`): at least 64m.
fn parse_memory(setting: &'static str, value: &str) -> Result<i64, ConfigError> {
    let bytes = parse_size(setting, value, 64 << 20)?;
    i64::try_from(bytes).map_err(|_| invalid(setting, format!("{value:?} is too large")))
}

fn split_number(value: &str) -> (&str, &str) {
    let value = value.trim();
    let end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    value.split_at(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn serve_args(args: &[&str]) -> ServeArgs {
        let mut argv = vec!["deis-builder", "serve"];
        argv.extend_from_slice(args);
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        let crate::cli::Command::Serve(args) = cli.command else {
            unreachable!()
        };
        *args
    }

    fn settings_from(args: ServeArgs, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_args_and_env(args, move |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    fn settings(args: &[&str], env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        settings_from(serve_args(args), env)
    }

    #[test]
    fn defaults_are_standalone_and_local() {
        let s = settings(&["--data-dir", "/d"], &[]).unwrap();
        assert_eq!(s.ssh_addr.to_string(), "0.0.0.0:2223");
        assert_eq!(s.http_addr.to_string(), "0.0.0.0:8092");
        assert!(matches!(
            s.controller,
            ControllerSettings::Standalone { .. }
        ));
        assert!(matches!(s.storage, StorageSettings::Local(ref p) if p == Path::new("/d/storage")));
        assert_eq!(s.build.timeout, Duration::from_secs(900));
        assert_eq!(s.build.memory_bytes, 2 << 30);
        assert_eq!(s.build.slug_warn_bytes, 300 << 20);
        assert_eq!(s.build.slug_max_bytes, 500 << 20);
        assert_eq!(s.build.buildpack_max_bytes, 1 << 30);
        assert_eq!(s.limits.max_builds, 8);
        assert_eq!(s.limits.max_connections, 256);
        assert_eq!(s.limits.login_timeout, Duration::from_secs(30));
        assert_eq!(s.limits.max_push_bytes, 1 << 30);
        assert_eq!(s.limits.lock_wait, Duration::from_secs(300));
        assert_eq!(s.limits.shutdown_grace, Duration::from_secs(30));
        assert_eq!(s.limits.lease_ttl, Duration::from_secs(30));
    }

    #[test]
    fn lock_wait_may_be_zero() {
        let s = settings(&["--lock-wait", "0"], &[]).unwrap();
        assert_eq!(s.limits.lock_wait, Duration::ZERO);
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_size(1 << 30), "1g");
        assert_eq!(format_size(3 << 19), "1536k");
        assert_eq!(format_size(1000), "1000 bytes");
    }

    #[test]
    fn deis_environment_names_work() {
        let env = [
            ("SSH_HOST_PORT", "2200"),
            ("HEALTH_SERVER_PORT", "9000"),
            ("DEIS_CONTROLLER_SERVICE_HOST", "10.0.0.1"),
            ("DEIS_CONTROLLER_SERVICE_PORT", "8000"),
        ];
        let s = settings(&["--builder-key", "k", "--storage", "s3://builder"], &env).unwrap();
        assert_eq!(s.ssh_addr.port(), 2200);
        assert_eq!(s.http_addr.port(), 9000);
        assert!(
            matches!(s.controller, ControllerSettings::Deis { ref url, .. } if url == "http://10.0.0.1:8000")
        );
        assert!(
            matches!(s.storage, StorageSettings::S3 { ref bucket, path_style: true, .. } if bucket == "builder")
        );
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let env = [("DEIS_REGISTRY_SERVICE_HOST", "10.0.0.2")];
        let s = settings(
            &[
                "--controller-url",
                "http://c:8000",
                "--builder-key",
                "builder-key-SECRET-1",
                "--registry-username",
                "registry-user-SECRET-2",
                "--registry-password",
                "registry-password-SECRET-3",
            ],
            &env,
        )
        .unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("builder_key: Some([redacted])"), "{shown}");
        assert!(shown.contains("password: Some([redacted])"), "{shown}");
        assert!(shown.contains("10.0.0.2:5000"), "{shown}");
        let ControllerSettings::Deis { builder_key, .. } = &s.controller else {
            panic!("not a Deis controller")
        };
        assert_eq!(builder_key.expose(), "builder-key-SECRET-1");
        assert_eq!(format!("{builder_key}"), "[redacted]");

        let summary = s3_credentials_summary(|name| match name {
            "AWS_ACCESS_KEY_ID" => Some("AKIA-SECRET".into()),
            "AWS_SECRET_ACCESS_KEY" => Some("very-SECRET".into()),
            "AWS_REGION" => Some("eu-west-1".into()),
            _ => None,
        });
        assert_eq!(
            summary,
            "AWS_ACCESS_KEY_ID=[redacted] AWS_SECRET_ACCESS_KEY=[redacted] \
             AWS_SESSION_TOKEN unset region=eu-west-1"
        );
    }

    #[test]
    fn errors_name_the_setting() {
        for (args, setting) in [
            (&["--ssh-addr", "nope"][..], "--ssh-addr"),
            (&["--controller-url", "http://c"][..], "--builder-key"),
            (
                &["--controller-url", "ftp://c", "--builder-key", "k"][..],
                "--controller-url",
            ),
            (&["--storage", "s3://B!"][..], "--storage"),
            (&["--storage", "gs://b"][..], "--storage"),
            (&["--build-timeout", "soon"][..], "--build-timeout"),
            (&["--build-memory", "1k"][..], "--build-memory"),
            (&["--log-format", "xml"][..], "--log-format"),
            (&["--max-builds", "0"][..], "--max-builds"),
            (&["--login-timeout", "0"][..], "--login-timeout"),
            (&["--max-push-size", "big"][..], "--max-push-size"),
            (&["--lock-wait", "later"][..], "--lock-wait"),
            (&["--lease-ttl", "1s"][..], "--lease-ttl"),
            (&["--shutdown-grace", "0"][..], "--shutdown-grace"),
            (&["--slug-max-size", "lots"][..], "--slug-max-size"),
            (
                &["--buildpack-fetch-timeout", "0"][..],
                "--buildpack-fetch-timeout",
            ),
            (&["--buildpack-max-size", "0"][..], "--buildpack-max-size"),
            (&["--build-files", "mount"][..], "--build-files"),
            (
                &["--cnb-driver", "/nonexistent/deis-cnb"][..],
                "--cnb-driver",
            ),
        ] {
            let err = settings(args, &[]).unwrap_err();
            assert_eq!(err.setting, setting, "{args:?}");
        }
    }

    #[test]
    fn numbers_are_checked_here_not_by_clap() {
        for (args, setting, problem) in [
            (
                &["--max-builds", "abc"][..],
                "--max-builds",
                "\"abc\" is not a whole number of at least 1",
            ),
            (
                &["--max-connections", "-1"][..],
                "--max-connections",
                "\"-1\" is not a whole number of at least 1",
            ),
            (
                &["--max-auth-attempts", "0"][..],
                "--max-auth-attempts",
                "\"0\" is not a whole number of at least 1",
            ),
            (
                &["--build-pids", "8"][..],
                "--build-pids",
                "\"8\" is not a whole number of at least 16",
            ),
            (
                &["--build-pids", "lots"][..],
                "--build-pids",
                "\"lots\" is not a whole number of at least 16",
            ),
        ] {
            let err = settings(args, &[]).unwrap_err();
            assert_eq!((err.setting, err.problem.as_str()), (setting, problem));
            assert_eq!(err.env, None, "{args:?}");
        }
        let s = settings(
            &[
                "--max-builds",
                " 3 ",
                "--build-pids",
                "16",
                "--max-auth-attempts",
                "2",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            (s.limits.max_builds, s.build.pids_limit),
            (3, 16),
            "surrounding spaces are fine"
        );
        assert_eq!(s.limits.max_auth_attempts, 2);
    }

    #[test]
    fn errors_name_the_variable_a_bad_value_came_from() {
        let mut args = serve_args(&["--max-builds", "abc"]);
        args.from_env
            .insert("--max-builds".into(), "DEIS_BUILDER_MAX_BUILDS".into());
        let err = settings_from(args, &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid setting --max-builds: \"abc\" is not a whole number of at least 1 \
             (from env DEIS_BUILDER_MAX_BUILDS)"
        );
        // Only the bad setting's variable is named.
        let mut args = serve_args(&["--max-builds", "abc"]);
        args.from_env.insert(
            "--max-connections".into(),
            "DEIS_BUILDER_MAX_CONNECTIONS".into(),
        );
        let err = settings_from(args, &[]).unwrap_err();
        assert_eq!(err.env, None);
        assert!(!err.to_string().contains("from env"), "{err}");

        // Variables that stand in for a flag are named too.
        let err = settings(
            &["--storage", "s3://bucket"],
            &[("AWS_ENDPOINT_URL", "minio:9000")],
        )
        .unwrap_err();
        assert_eq!(err.setting, "--s3-endpoint");
        assert_eq!(err.env.as_deref(), Some("AWS_ENDPOINT_URL"));
        let err = settings(&[], &[("DEIS_REGISTRY_SERVICE_HOST", "http://r")]).unwrap_err();
        assert_eq!(err.setting, "--registry");
        assert_eq!(
            err.env.as_deref(),
            Some("DEIS_REGISTRY_SERVICE_HOST/DEIS_REGISTRY_SERVICE_PORT")
        );
        let err =
            settings(&["--storage", "s3://bucket", "--s3-endpoint", "minio"], &[]).unwrap_err();
        assert_eq!((err.setting, err.env), ("--s3-endpoint", None));
    }

    #[test]
    fn switches_take_the_usual_spellings() {
        for (value, on) in [
            ("1", true),
            ("true", true),
            ("TRUE", true),
            ("yes", true),
            ("Yes", true),
            ("on", true),
            ("0", false),
            ("false", false),
            ("no", false),
            ("OFF", false),
            ("", false),
        ] {
            assert_eq!(parse_switch("DEIS_DEBUG", value).unwrap(), on, "{value:?}");
            let s = settings(&["--data-dir", "/d"], &[("DEIS_DEBUG", value)]).unwrap();
            assert_eq!(s.debug, on, "{value:?}");
        }
        for value in ["y", "enabled", "2"] {
            let err = parse_switch("--s3-virtual-hosted", value).unwrap_err();
            assert_eq!(err.setting, "--s3-virtual-hosted");
            assert!(err.problem.contains("yes/no"), "{err}");
        }
        let err = settings(&[], &[("DEIS_DEBUG", "verbose")]).unwrap_err();
        assert_eq!(err.setting, "DEIS_DEBUG");
        assert!(!settings(&[], &[]).unwrap().debug);

        // On the command line --s3-virtual-hosted is a plain flag.
        let s = settings(&["--storage", "s3://bucket", "--s3-virtual-hosted"], &[]).unwrap();
        assert!(matches!(
            s.storage,
            StorageSettings::S3 {
                path_style: false,
                ..
            }
        ));
        let s = settings(&["--storage", "s3://bucket"], &[]).unwrap();
        assert!(matches!(
            s.storage,
            StorageSettings::S3 {
                path_style: true,
                ..
            }
        ));
    }
}
