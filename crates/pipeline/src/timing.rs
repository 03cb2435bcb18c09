//! How long each stage of a push took. Logged once per deployed push (the `deployed` event)
//! so operators can see where a slow push spent its time; `benches/bench.py` reads it.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The stages of a push, in order. Buildpack builds: prepare … upload; pack and upload overlap (the slug streams
/// into storage while it is packed): `Pack` ends when the packer wrote its last byte,
/// `Upload` is what the upload needed beyond that, plus the Procfile. Dockerfile builds:
/// context, tag, build, push. Imports: pull, tag, push.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stage {
    /// App config from the controller, and the choice of object keys.
    Config,
    /// `.slugignore`, buildpack fetches, cache restore.
    Prepare,
    /// Creating the container, copying the input in, starting it.
    Container,
    /// The buildpacks running, until the container exits.
    Compile,
    /// Saving the build cache.
    Cache,
    Pack,
    Upload,
    /// Removing the build container.
    Cleanup,
    /// The controller's release call.
    Release,
    /// Dockerfile builds: `.dockerignore`, Procfile, submodules, build args.
    Context,
    /// Choosing the image tag (does `git-<sha8>` exist?) and tagging an import.
    Tag,
    /// The engine building the image.
    Build,
    /// The image into the registry.
    Push,
    /// Imports: the image from its registry.
    Pull,
}

const STAGES: usize = 14;

/// Durations per stage; a stage measured twice adds up.
#[derive(Debug, Default)]
pub(crate) struct StageTimes {
    spent: Mutex<[Duration; STAGES]>,
}

impl StageTimes {
    pub fn add(&self, stage: Stage, took: Duration) {
        self.spent.lock().unwrap_or_else(PoisonError::into_inner)[stage as usize] += took;
    }

    /// Runs `work` and adds its duration to `stage`.
    pub async fn time<T>(&self, stage: Stage, work: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let result = work.await;
        self.add(stage, started.elapsed());
        result
    }

    pub fn millis(&self, stage: Stage) -> u64 {
        millis(self.spent.lock().unwrap_or_else(PoisonError::into_inner)[stage as usize])
    }
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_add_up() {
        let times = StageTimes::default();
        times.add(Stage::Upload, Duration::from_millis(5));
        times.add(Stage::Upload, Duration::from_millis(7));
        assert_eq!(times.millis(Stage::Upload), 12);
        assert_eq!(times.millis(Stage::Pack), 0);
    }
}
