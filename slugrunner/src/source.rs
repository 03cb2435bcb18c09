//! Where the slug comes from, and getting its bytes onto local disk (verified when a
//! checksum is expected) before anything is unpacked.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::PathBuf;
use std::time::Duration;

use deis_storage::{ObjectStore, S3Settings, S3Store};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::RunnerError;

const COPY_BUFFER_BYTES: usize = 256 * 1024;
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A parsed `SLUG_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlugSource {
    S3 { bucket: String, key: String },
    Http { url: String },
    File { path: PathBuf },
    Stdin,
}

impl SlugSource {
    /// `s3://bucket/key`, `http://…`, `file://path`, an absolute or `./` path, `-` for stdin,
    /// or a bare object key (which needs `bucket`, from `SLUG_BUCKET`).
    pub fn parse(value: &str, bucket: Option<&str>) -> Result<SlugSource, RunnerError> {
        let bad = |reason: String| RunnerError::BadSetting {
            name: "SLUG_URL",
            reason,
        };
        let value = value.trim();
        if value == "-" {
            return Ok(SlugSource::Stdin);
        }
        if let Some(rest) = value.strip_prefix("s3://") {
            return match rest.split_once('/') {
                Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => {
                    Ok(SlugSource::S3 {
                        bucket: bucket.to_owned(),
                        key: key.to_owned(),
                    })
                }
                _ => Err(bad(format!("{value:?} is not s3://<bucket>/<key>"))),
            };
        }
        if value.starts_with("https://") {
            return Err(bad(
                "https:// is not supported by this runner (it is built without TLS); use s3://<bucket>/<key> (TLS endpoints work there) or http://".to_owned(),
            ));
        }
        if value.starts_with("http://") {
            return Ok(SlugSource::Http {
                url: value.to_owned(),
            });
        }
        if let Some(path) = value.strip_prefix("file://") {
            return Ok(SlugSource::File { path: path.into() });
        }
        if value.starts_with('/') || value.starts_with("./") || value.starts_with("../") {
            return Ok(SlugSource::File { path: value.into() });
        }
        if value.contains("://") {
            return Err(bad(format!(
                "unsupported scheme in {value:?} (use s3://, http://, file://, a path or -)"
            )));
        }
        match bucket.map(str::trim).filter(|bucket| !bucket.is_empty()) {
            Some(bucket) => Ok(SlugSource::S3 {
                bucket: bucket.to_owned(),
                key: value.to_owned(),
            }),
            None => Err(bad(format!(
                "{value:?} looks like an object key, but SLUG_BUCKET (the bucket to read it from) is not set"
            ))),
        }
    }

    /// For messages: no credentials, no query string (presigned URLs carry signatures).
    pub fn describe(&self) -> String {
        match self {
            SlugSource::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
            SlugSource::Http { url } => url.split(['?', '#']).next().unwrap_or(url).to_owned(),
            SlugSource::File { path } => path.display().to_string(),
            SlugSource::Stdin => "standard input".to_owned(),
        }
    }
}

/// S3 connection settings from the usual AWS variables (plus the builder's endpoint name).
pub fn s3_settings_from_env(bucket: &str) -> S3Settings {
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
    };
    let endpoint = env("AWS_ENDPOINT_URL_S3")
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .or_else(|| env("DEIS_BUILDER_S3_ENDPOINT"));
    S3Settings {
        bucket: bucket.to_owned(),
        // S3-compatible services (MinIO, Ceph, moto) want path-style addressing.
        path_style: endpoint.is_some(),
        endpoint,
        region: env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_default(),
        access_key_id: env("AWS_ACCESS_KEY_ID").unwrap_or_default(),
        secret_access_key: env("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
        session_token: env("AWS_SESSION_TOKEN"),
    }
}

/// The slug in an anonymous temporary file, rewound, with its SHA-256.
pub struct Spooled {
    pub file: File,
    pub sha256: String,
    pub bytes: u64,
}

struct Spool {
    file: File,
    hasher: Sha256,
    bytes: u64,
}

impl Spool {
    fn new() -> Result<Spool, RunnerError> {
        Ok(Spool {
            file: tempfile::tempfile().map_err(RunnerError::Spool)?,
            hasher: Sha256::new(),
            bytes: 0,
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<(), RunnerError> {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
        self.file.write_all(data).map_err(RunnerError::Spool)
    }

    fn finish(mut self) -> Result<Spooled, RunnerError> {
        self.file.flush().map_err(RunnerError::Spool)?;
        self.file.rewind().map_err(RunnerError::Spool)?;
        Ok(Spooled {
            file: self.file,
            sha256: hex::encode(self.hasher.finalize()),
            bytes: self.bytes,
        })
    }
}

/// Copies the whole slug from `source` to a temporary file, hashing it on the way.
pub fn spool(source: &SlugSource) -> Result<Spooled, RunnerError> {
    let download = |reason: String| RunnerError::Download {
        from: source.describe(),
        reason,
    };
    match source {
        SlugSource::Stdin => spool_reader(io::stdin().lock(), source),
        SlugSource::File { path } => {
            let file = File::open(path).map_err(|error| download(error.to_string()))?;
            spool_reader(file, source)
        }
        SlugSource::S3 { .. } | SlugSource::Http { .. } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| download(format!("cannot start the I/O runtime: {error}")))?;
            runtime.block_on(spool_remote(source))
        }
    }
}

fn spool_reader(mut reader: impl Read, source: &SlugSource) -> Result<Spooled, RunnerError> {
    let mut spool = Spool::new()?;
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                return Err(RunnerError::Download {
                    from: source.describe(),
                    reason: error.to_string(),
                })
            }
        };
        spool.write(&buffer[..read])?;
    }
    spool.finish()
}

async fn spool_remote(source: &SlugSource) -> Result<Spooled, RunnerError> {
    let download = |reason: String| RunnerError::Download {
        from: source.describe(),
        reason,
    };
    let mut spool = Spool::new()?;
    match source {
        SlugSource::S3 { bucket, key } => {
            let store = S3Store::connect(s3_settings_from_env(bucket))
                .await
                .map_err(|error| download(error.to_string()))?;
            let mut object = store
                .get(key)
                .await
                .map_err(|error| download(error.to_string()))?
                .ok_or_else(|| RunnerError::NotFound {
                    from: source.describe(),
                })?;
            let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
            loop {
                let read = object
                    .read(&mut buffer)
                    .await
                    .map_err(|error| download(error.to_string()))?;
                if read == 0 {
                    break;
                }
                spool.write(&buffer[..read])?;
            }
        }
        SlugSource::Http { url } => {
            let client = reqwest::Client::builder()
                .connect_timeout(HTTP_CONNECT_TIMEOUT)
                .read_timeout(HTTP_READ_TIMEOUT)
                .build()
                .map_err(|error| download(error.to_string()))?;
            let mut response = client
                .get(url)
                .send()
                .await
                .map_err(|error| download(error.without_url().to_string()))?;
            let status = response.status();
            if status == reqwest::StatusCode::NOT_FOUND {
                return Err(RunnerError::NotFound {
                    from: source.describe(),
                });
            }
            if !status.is_success() {
                return Err(download(format!("the server answered HTTP {status}")));
            }
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|error| download(error.without_url().to_string()))?
            {
                spool.write(&chunk)?;
            }
        }
        SlugSource::File { .. } | SlugSource::Stdin => {
            return Err(download("not a remote source".to_owned()));
        }
    }
    spool.finish()
}

/// Checks an expected SHA-256 setting: 64 hex digits, returned lowercase.
pub fn parse_expected_sha256(value: &str) -> Result<String, RunnerError> {
    let value = value.trim().to_ascii_lowercase();
    if value.len() == 64 && value.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        Ok(value)
    } else {
        Err(RunnerError::BadSetting {
            name: "SLUG_SHA256",
            reason: format!("{value:?} is not a SHA-256 (64 hexadecimal digits)"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_recognised() {
        let s3 = |bucket: &str, key: &str| SlugSource::S3 {
            bucket: bucket.into(),
            key: key.into(),
        };
        assert_eq!(
            SlugSource::parse("s3://b/home/a:git-1/push/slug.tgz", None).unwrap(),
            s3("b", "home/a:git-1/push/slug.tgz")
        );
        assert_eq!(
            SlugSource::parse("home/a/push/slug.tgz", Some("bkt")).unwrap(),
            s3("bkt", "home/a/push/slug.tgz")
        );
        assert_eq!(SlugSource::parse("-", None).unwrap(), SlugSource::Stdin);
        assert_eq!(
            SlugSource::parse("/tmp/slug.tgz", None).unwrap(),
            SlugSource::File {
                path: "/tmp/slug.tgz".into()
            }
        );
        assert_eq!(
            SlugSource::parse("file:///s.tgz", None).unwrap(),
            SlugSource::File {
                path: "/s.tgz".into()
            }
        );
        assert_eq!(
            SlugSource::parse("http://h:1/s.tgz?sig=x", None)
                .unwrap()
                .describe(),
            "http://h:1/s.tgz"
        );
        for refused in [
            "s3://bucket",
            "s3:///key",
            "https://h/s.tgz",
            "ftp://h/s",
            "key",
        ] {
            let error = SlugSource::parse(refused, None).unwrap_err();
            assert!(matches!(error, RunnerError::BadSetting { .. }), "{refused}");
        }
    }

    #[test]
    fn expected_sha256_must_be_hex() {
        let good = "AB".repeat(32);
        assert_eq!(parse_expected_sha256(&good).unwrap(), "ab".repeat(32));
        assert!(parse_expected_sha256("abc").is_err());
        assert!(parse_expected_sha256(&"g".repeat(64)).is_err());
    }
}
