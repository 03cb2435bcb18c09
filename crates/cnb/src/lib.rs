//! Cloud Native Buildpacks, the buildpack side of the Buildpack API (0.8 to 0.11), run
//! natively inside our build container instead of by the CNB lifecycle:
//!
//! - the in-container driver (`deis-cnb build`, a static binary the builder copies into
//!   the build container): [`detect`] over order groups with build-plan resolution, then
//!   [`build`] with layers, layer environments and the cache, ending in a slug tree where
//!   the launch layers live under the app directory;
//! - [`launch`]: the metadata the driver leaves in the slug and the launch environment
//!   (layer `env/`, `env.launch/`, `exec.d`) the slug runner applies before it execs a
//!   process.
//!
//! Every file a buildpack hands us is checked; a bad one is an [`Error::File`] that names
//! the file and the problem.

pub mod api;
pub mod build;
pub mod descriptor;
pub mod detect;
pub mod env;
pub mod files;
pub mod launch;
pub mod platform;

use std::path::{Path, PathBuf};

/// Where, under the app directory, the driver keeps the layers and the launch metadata:
/// the slug is rooted at the app directory, so paths a buildpack wrote into a layer are
/// the same when the slug runs.
pub const CNB_DIR: &str = ".cnb";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file a buildpack (or the app) provided is malformed or not allowed.
    #[error("{}: {problem}", path.display())]
    File { path: PathBuf, problem: String },
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A buildpack's executable failed or could not run.
    #[error("{0}")]
    Buildpack(String),
    /// No order group passed detection.
    #[error("no buildpack group passed detection")]
    NoGroup,
}

impl Error {
    pub fn file(path: &Path, problem: impl Into<String>) -> Error {
        Error::File {
            path: path.to_owned(),
            problem: problem.into(),
        }
    }

    pub fn io(path: &Path, error: std::io::Error) -> Error {
        Error::Io {
            path: path.to_owned(),
            error,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
