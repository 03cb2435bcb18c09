//! slugrunner: the entrypoint of the runner image. Fetches the slug named by `SLUG_URL`
//! (verified against `SLUG_SHA256` when set), unpacks it safely into `/app`, then execs
//! the requested process type (or command) through `bash -c` with the app's profile
//! scripts sourced.
//!
//! Settings (environment):
//!   SLUG_URL      s3://bucket/key, a bare key (with SLUG_BUCKET), http://…, file://path,
//!                 a path, or `-` for stdin. Unset: run what is already in /app.
//!   SLUG_BUCKET   bucket for bare keys
//!   SLUG_SHA256   expected SHA-256 of the slug, checked before anything is unpacked
//!   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
//!   AWS_ENDPOINT_URL (or DEIS_BUILDER_S3_ENDPOINT)  for S3 sources
//!   PORT          passed to the app (default 5000)
//!   SLUGRUNNER_LOG  log filter (default info)

mod launch;
mod source;

use std::ffi::OsString;
use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use deis_slug::{self as slug, ProcfileError, ReleaseError, UnpackError, UnpackOptions};

use crate::launch::{Invocation, Launch};
use crate::source::SlugSource;

/// Where the app lives and runs.
const APP_DIR: &str = "/app";

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("{0}")]
    Usage(String),
    #[error("no slug to run: set SLUG_URL (s3://<bucket>/<key>, an object key with SLUG_BUCKET, http://…, a file path, or - for stdin), or provide a populated {}", app_dir.display())]
    NoSource { app_dir: PathBuf },
    #[error("bad {name}: {reason}")]
    BadSetting { name: &'static str, reason: String },
    #[error("downloading the slug from {from} failed: {reason}")]
    Download { from: String, reason: String },
    #[error("the slug {from} does not exist")]
    NotFound { from: String },
    #[error("writing the slug to a temporary file failed: {0}")]
    Spool(std::io::Error),
    #[error("checksum mismatch: SLUG_SHA256 is {expected} but the slug's SHA-256 is {actual}; refusing to run it")]
    ChecksumMismatch { expected: String, actual: String },
    #[error("cannot unpack the slug: {0}")]
    Unpack(UnpackError),
    #[error("cannot read {}: {reason}", path.display())]
    Metadata { path: PathBuf, reason: String },
    #[error("{0}")]
    Procfile(ProcfileError),
    #[error(".release: {0}")]
    Release(ReleaseError),
    #[error("cannot start bash: {0}")]
    Exec(std::io::Error),
    #[error("cannot prepare the launch environment: {0}")]
    Cnb(deis_cnb::Error),
}

impl RunnerError {
    fn exit_code(&self) -> u8 {
        match self {
            RunnerError::Usage(_) => 2,
            // Like a shell that cannot run a command.
            RunnerError::Exec(_) => 127,
            _ => 1,
        }
    }
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUGRUNNER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
    let error = run(std::env::args_os().skip(1).collect());
    eprintln!("slugrunner: error: {error}");
    ExitCode::from(error.exit_code())
}

/// Returns only on failure: on success the process has become the app.
fn run(args: Vec<OsString>) -> RunnerError {
    let app_dir = Path::new(APP_DIR);
    let invocation = match Invocation::parse(args) {
        Ok(invocation) => invocation,
        Err(error) => return error,
    };
    if let Err(error) = prepare_app(app_dir) {
        return error;
    }
    let cnb = match deis_cnb::launch::read(app_dir) {
        Ok(cnb) => cnb,
        Err(error) => return RunnerError::Cnb(error),
    };
    match launch::resolve(app_dir, invocation, cnb.as_ref()) {
        Ok(launch) => {
            match &launch {
                Launch::Line { name, line } => tracing::info!("starting {name}: {line}"),
                Launch::Program(args) => tracing::info!("starting {args:?}"),
                Launch::Process { name, argv, .. } => tracing::info!("starting {name}: {argv:?}"),
                Launch::NotAType { program, .. } => {
                    tracing::info!(
                        "{program:?} is no process type of the slug: starting it as a command"
                    )
                }
            }
            launch::exec(app_dir, &launch, cnb.as_ref())
        }
        Err(error) => error,
    }
}

fn setting(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// Puts the slug into `app_dir`, or checks that it is already populated.
fn prepare_app(app_dir: &Path) -> Result<(), RunnerError> {
    let expected = setting("SLUG_SHA256")
        .map(|value| source::parse_expected_sha256(&value))
        .transpose()?;
    let Some(url) = setting("SLUG_URL") else {
        if directory_has_entries(app_dir) {
            if expected.is_some() {
                return Err(RunnerError::BadSetting {
                    name: "SLUG_SHA256",
                    reason: "set, but there is no SLUG_URL to verify".to_owned(),
                });
            }
            tracing::info!(
                "no SLUG_URL: running the app already in {}",
                app_dir.display()
            );
            return Ok(());
        }
        return Err(RunnerError::NoSource {
            app_dir: app_dir.to_owned(),
        });
    };
    let source = SlugSource::parse(&url, setting("SLUG_BUCKET").as_deref())?;
    tracing::info!("fetching the slug from {}", source.describe());
    let slug_file = match (&source, &expected) {
        // A local file without a checksum is read in place.
        (SlugSource::File { path }, None) => {
            File::open(path).map_err(|error| RunnerError::Download {
                from: source.describe(),
                reason: error.to_string(),
            })?
        }
        _ => {
            let spooled = source::spool(&source)?;
            if let Some(expected) = &expected {
                if *expected != spooled.sha256 {
                    return Err(RunnerError::ChecksumMismatch {
                        expected: expected.clone(),
                        actual: spooled.sha256,
                    });
                }
                tracing::info!(
                    "slug checksum verified ({} bytes, sha256 {expected})",
                    spooled.bytes
                );
            }
            spooled.file
        }
    };
    let options = UnpackOptions {
        app_path: app_dir.display().to_string(),
        ..UnpackOptions::default()
    };
    let summary = slug::unpack_slug(std::io::BufReader::new(slug_file), app_dir, &options)
        .map_err(RunnerError::Unpack)?;
    tracing::info!(
        "unpacked {} entries ({} bytes of files) into {}",
        summary.entries,
        summary.bytes,
        app_dir.display()
    );
    Ok(())
}

fn directory_has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false)
}
