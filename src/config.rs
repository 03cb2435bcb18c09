//! Validated settings. Flags and environment are parsed here once; an invalid value stops
//! start-up with one line naming the setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::ServeArgs;

#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

fn invalid(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.into(),
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
        builder_key: String,
        timeout: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Limits and placement of build containers.
#[derive(Debug, Clone)]
pub struct BuildSettings {
    pub stack_image: String,
    /// Where images go; `None` keeps them in the local engine.
    pub registry: Option<RegistrySettings>,
    pub network: String,
    pub memory_bytes: i64,
    pub pids_limit: i64,
    pub timeout: Duration,
    /// Compressed slug size that gets a warning.
    pub slug_warn_bytes: u64,
    /// Compressed slug size above which the push is refused.
    pub slug_max_bytes: u64,
    /// Per-buildpack limit for fetching BUILDPACK_URL / `.buildpacks` entries.
    pub fetch_timeout: Duration,
}

/// The private registry. `Debug` never shows the password.
#[derive(Clone)]
pub struct RegistrySettings {
    /// `host:port`
    pub host: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrySettings")
            .field("host", &self.host)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// The shared secret callers of the import endpoint must present (the Deis builder key).
    /// Without one the endpoint is off.
    pub builder_key: Option<String>,
    pub ssh_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub host_keys: Vec<PathBuf>,
    pub controller: ControllerSettings,
    pub storage: StorageSettings,
    pub build: BuildSettings,
    pub log_format: LogFormat,
}

impl Settings {
    pub fn from_args(args: ServeArgs) -> Result<Settings, ConfigError> {
        Self::from_args_and_env(args, |name| std::env::var(name).ok())
    }

    /// `env` looks up the Deis-era variables that combine into one setting.
    pub fn from_args_and_env(
        args: ServeArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let data_dir = args.data_dir;
        if data_dir.as_os_str().is_empty() {
            return Err(invalid("--data-dir", "must not be empty"));
        }
        let ssh_addr = match args.ssh_addr {
            Some(addr) => parse_addr("--ssh-addr", &addr)?,
            None => {
                let host = env("SSH_HOST_IP").unwrap_or_else(|| "0.0.0.0".into());
                let port = env("SSH_HOST_PORT").unwrap_or_else(|| "2223".into());
                parse_addr("SSH_HOST_IP/SSH_HOST_PORT", &format!("{host}:{port}"))?
            }
        };
        let http_addr = match args.http_addr {
            Some(addr) => parse_addr("--http-addr", &addr)?,
            None => {
                let port = env("HEALTH_SERVER_PORT").unwrap_or_else(|| "8092".into());
                parse_addr("HEALTH_SERVER_PORT", &format!("0.0.0.0:{port}"))?
            }
        };
        let host_keys = if args.host_keys.is_empty() {
            vec![data_dir.join("ssh_host_ed25519_key")]
        } else {
            args.host_keys
        };
        let standalone_key = args.builder_key.clone().filter(|k| !k.trim().is_empty());
        let controller = controller_settings(
            args.controller_url,
            args.builder_key,
            args.builder_key_file.as_deref(),
            &args.controller_timeout,
            args.authorized_keys
                .unwrap_or_else(|| data_dir.join("authorized_keys")),
            &env,
        )?;
        let storage = storage_settings(
            args.storage,
            args.s3_endpoint
                .or_else(|| env("AWS_ENDPOINT_URL_S3"))
                .or_else(|| env("AWS_ENDPOINT_URL")),
            !args.s3_virtual_hosted,
            &data_dir,
        )?;
        let registry = registry_settings(
            args.registry,
            args.registry_username,
            args.registry_password,
            &env,
        )?;
        let build = BuildSettings {
            stack_image: non_empty("--stack-image", args.stack_image)?,
            registry,
            network: non_empty("--build-network", args.build_network)?,
            memory_bytes: parse_bytes("--build-memory", &args.build_memory)?,
            pids_limit: match args.build_pids {
                n if n >= 16 => n,
                _ => return Err(invalid("--build-pids", "must be at least 16")),
            },
            timeout: parse_duration("--build-timeout", &args.build_timeout)?,
            slug_warn_bytes: parse_slug_size("--slug-warn-size", &args.slug_warn_size)?,
            slug_max_bytes: parse_slug_size("--slug-max-size", &args.slug_max_size)?,
            fetch_timeout: parse_duration(
                "--buildpack-fetch-timeout",
                &args.buildpack_fetch_timeout,
            )?,
        };
        let log_format = match args.log_format.as_str() {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "--log-format",
                    format!("{other:?} is neither `human` nor `json`"),
                ))
            }
        };
        let builder_key = match &controller {
            ControllerSettings::Deis { builder_key, .. } => Some(builder_key.clone()),
            ControllerSettings::Standalone { .. } => standalone_key,
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
            log_format,
        })
    }
}

fn controller_settings(
    url: Option<String>,
    key: Option<String>,
    key_file: Option<&Path>,
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
    let builder_key = match (key, key_file) {
        (Some(key), _) => key,
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| {
                invalid(
                    "--builder-key-file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?
            .trim()
            .to_owned(),
        (None, None) => return Err(invalid(
            "--builder-key",
            "a controller URL is set but no builder key (DEIS_BUILDER_KEY or --builder-key-file)",
        )),
    };
    if builder_key.is_empty() {
        return Err(invalid("--builder-key", "is empty"));
    }
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
    let host = host.or_else(|| {
        let host = env("DEIS_REGISTRY_SERVICE_HOST")?;
        let port = env("DEIS_REGISTRY_SERVICE_PORT").unwrap_or_else(|| "5000".into());
        Some(format!("{host}:{port}"))
    });
    let Some(host) = host else {
        return Ok(None);
    };
    let valid = !host.is_empty()
        && !host.contains("://")
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if !valid {
        return Err(invalid("--registry", format!("{host:?} is not HOST:PORT")));
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
        password,
    }))
}

fn storage_settings(
    spec: Option<String>,
    endpoint: Option<String>,
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
        if let Some(endpoint) = &endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(invalid(
                    "--s3-endpoint",
                    format!("{endpoint:?} is not an http(s) URL"),
                ));
            }
        }
        return Ok(StorageSettings::S3 {
            bucket: bucket.to_owned(),
            endpoint,
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

/// `512m`, `2g`, `1048576`.
fn parse_bytes(setting: &'static str, value: &str) -> Result<i64, ConfigError> {
    let (digits, unit) = split_number(value);
    let n: i64 = digits
        .parse()
        .map_err(|_| invalid(setting, format!("{value:?} is not a size like 512m or 2g")))?;
    let factor = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => {
            return Err(invalid(
                setting,
                format!("{value:?} is not a size like 512m or 2g"),
            ))
        }
    };
    match n.checked_mul(factor) {
        Some(bytes) if bytes >= 64 << 20 => Ok(bytes),
        _ => Err(invalid(
            setting,
            format!("{value:?} must be between 64m and a sane maximum"),
        )),
    }
}

/// Slug limits: `300m`, `1g`, `512k` (any size above zero).
fn parse_slug_size(setting: &'static str, value: &str) -> Result<u64, ConfigError> {
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
    match n.checked_mul(factor) {
        Some(bytes) if bytes > 0 => Ok(bytes),
        _ => Err(bad()),
    }
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

    fn settings(args: &[&str], env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut argv = vec!["deis-builder", "serve"];
        argv.extend_from_slice(args);
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        let crate::cli::Command::Serve(args) = cli.command else {
            unreachable!()
        };
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_args_and_env(*args, move |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
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
            (&["--slug-max-size", "lots"][..], "--slug-max-size"),
            (
                &["--buildpack-fetch-timeout", "0"][..],
                "--buildpack-fetch-timeout",
            ),
        ] {
            let err = settings(args, &[]).unwrap_err();
            assert_eq!(err.setting, setting, "{args:?}");
        }
    }
}
