//! Whole pushes through [`Pipeline`] without Docker: builds run in the in-process executor
//! ([`deis_executor::fake`]), objects go to a local store in a temporary directory, and a
//! recording controller answers (or refuses, or does not answer) the release. Each failure
//! point checks invariant 3: what the developer sees, no release, which objects remain,
//! and no container left behind.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::*;
use crate::push::{Output, Push, PushRunner, Verdict};
use crate::settings::{BuildSettings, EgressSettings, RegistrySettings};
use crate::source::Source;
use deis_controller::{AppConfig, User};
use deis_executor::fake::{FakeBuild, FakeExecutor, FakeImages, FakeRun, Removal};
use deis_storage::{Body, LocalStore, ObjectReader, Version};
use deis_types::names::CommitId;

#[test]
fn deis_key_layout() {
    let keys = Keys::new(&AppName::parse("myapp").unwrap(), "1234abcd");
    assert_eq!(keys.source, "home/myapp:git-1234abcd/tar");
    assert_eq!(keys.slug, "home/myapp:git-1234abcd/push/slug.tgz");
    assert_eq!(keys.procfile, "home/myapp:git-1234abcd/push/Procfile");
    let again = Keys::for_push(&AppName::parse("myapp").unwrap(), "1234abcd", "0f0e");
    assert_eq!(again.slug, "home/myapp:git-1234abcd-0f0e/push/slug.tgz");
    assert_eq!(again.source, "home/myapp:git-1234abcd-0f0e/tar");
}

// ---- the controller ----

/// How the recording controller answers a release.
#[derive(Debug, Clone)]
enum Answer {
    Release,
    /// The controller says no (403).
    Refuse,
    /// No answer within the client's timeout: the release may or may not have been cut.
    Silent,
}

/// A release the controller was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Asked {
    app: String,
    image: String,
    procfile: BTreeMap<String, String>,
    dockerfile: bool,
}

#[derive(Debug)]
struct RecordingController {
    answer: Mutex<Answer>,
    asked: Mutex<Vec<Asked>>,
    /// Versions cut, in order.
    released: Mutex<Vec<u64>>,
}

impl RecordingController {
    fn new(answer: Answer) -> Arc<RecordingController> {
        Arc::new(RecordingController {
            answer: Mutex::new(answer),
            asked: Mutex::new(Vec::new()),
            released: Mutex::new(Vec::new()),
        })
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }

    fn released(&self) -> Vec<u64> {
        self.released.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Controller for RecordingController {
    async fn user_for_key(&self, fingerprint: &str) -> Result<User, ControllerError> {
        Err(ControllerError::UnknownKey {
            fingerprint: fingerprint.to_owned(),
        })
    }

    async fn app_config(&self, _user: &str, _app: &AppName) -> Result<AppConfig, ControllerError> {
        Ok(AppConfig::default())
    }

    async fn release(&self, request: &ReleaseRequest<'_>) -> Result<u64, ControllerError> {
        self.asked.lock().unwrap().push(Asked {
            app: request.app.to_string(),
            image: request.artifact.reference().to_owned(),
            procfile: request.procfile.clone(),
            dockerfile: request.artifact.is_image(),
        });
        let answer = self.answer.lock().unwrap().clone();
        match answer {
            Answer::Release => {
                let mut released = self.released.lock().unwrap();
                let version = released.len() as u64 + 1;
                released.push(version);
                Ok(version)
            }
            Answer::Refuse => Err(ControllerError::Forbidden),
            Answer::Silent => Err(ControllerError::Timeout {
                url: "http://controller.test".into(),
                timeout: Duration::from_secs(30),
            }),
        }
    }

    async fn check(&self) -> Result<(), ControllerError> {
        Ok(())
    }

    fn describe(&self) -> String {
        "recording controller".into()
    }
}

// ---- storage ----

/// The local store, but puts of keys ending in `fail_suffix` fail (after reading the
/// body, as a dropped connection would).
#[derive(Debug)]
struct FailingStore {
    inner: LocalStore,
    fail_suffix: Option<&'static str>,
}

#[async_trait::async_trait]
impl ObjectStore for FailingStore {
    async fn put(&self, key: &str, body: Body<'_>) -> Result<u64, StorageError> {
        match self.fail_suffix {
            Some(suffix) if key.ends_with(suffix) => {
                tokio::io::copy(body, &mut tokio::io::sink()).await.ok();
                Err(StorageError::Local {
                    operation: "put",
                    target: format!("{key:?} in the test store"),
                    cause: io::Error::other("the disk is on fire"),
                })
            }
            _ => self.inner.put(key, body).await,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<ObjectReader>, StorageError> {
        self.inner.get(key).await
    }

    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        self.inner.exists(key).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }

    async fn read_record(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>, StorageError> {
        self.inner.read_record(key).await
    }

    async fn create_record(&self, key: &str, data: &[u8]) -> Result<Version, StorageError> {
        self.inner.create_record(key, data).await
    }

    async fn replace_record(
        &self,
        key: &str,
        data: &[u8],
        expected: &Version,
    ) -> Result<Version, StorageError> {
        self.inner.replace_record(key, data, expected).await
    }

    async fn check(&self) -> Result<(), StorageError> {
        self.inner.check().await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Every object key in the local store.
fn objects(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, keys: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name() == Some(std::ffi::OsStr::new(deis_storage::LOCAL_TEMP_DIR)) {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, keys);
            } else {
                let key = path.strip_prefix(root).unwrap();
                keys.insert(key.to_string_lossy().into_owned());
            }
        }
    }
    let mut keys = BTreeSet::new();
    walk(root, root, &mut keys);
    keys
}

// ---- the world of one test ----

const APP: &str = "web";
const PUSH_ID: &str = "0f0e0d0c";

/// A build as the built-in buildpacks would do it: a compiled file in `/app`, something in
/// CACHE_DIR, a few lines of output.
fn compiles(_run: &FakeRun<'_>) -> FakeBuild {
    FakeBuild::success()
        .line("-----> Go app detected")
        .line("       compiling")
        .file("/app/bin/server", b"\x7fELF pretend".to_vec())
        .file("/build/cache/go/mod.cache", b"modules".to_vec())
}

/// [`compiles`], also showing what the driver would read from `/build/push.env`.
fn compiles_showing_push_env(run: &FakeRun<'_>) -> FakeBuild {
    let push_env = String::from_utf8_lossy(run.file("/build/push.env").unwrap_or_default())
        .trim()
        .replace('\n', " ");
    compiles(run).line(&format!("       push.env: {push_env}"))
}

/// Bytes gzip cannot shrink, so a slug of them is about as large as they are.
fn incompressible(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

struct World {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    store_root: PathBuf,
    commit: CommitId,
    executor: FakeExecutor,
    images: FakeImages,
    controller: Arc<RecordingController>,
    pipeline: Pipeline,
    /// What the pushes carry as their hold on the app.
    hold: Option<Arc<dyn crate::push::Hold>>,
}

/// What a push left: its verdict and what the developer saw.
struct Pushed {
    verdict: Verdict,
    output: String,
}

fn git(repo: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.name=Dev", "-c", "user.email=dev@example.com"])
        .args(args)
        .current_dir(repo)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", repo)
        .output()
        .expect("git runs");
    assert!(output.status.success(), "git {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

impl World {
    /// An app repository with one commit of `files`, and a pipeline on the fakes.
    async fn new(
        files: &[(&str, &str)],
        script: impl Fn(&FakeRun<'_>) -> FakeBuild + Send + Sync + 'static,
        answer: Answer,
        fail_put: Option<&'static str>,
        tune: impl FnOnce(&mut BuildSettings),
    ) -> World {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("app");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q"]);
        for (name, content) in files {
            let path = repo.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "first"]);
        let commit = CommitId::parse(&git(&repo, &["rev-parse", "HEAD"])).unwrap();

        let store_root = dir.path().join("objects");
        let store = FailingStore {
            inner: LocalStore::open(store_root.clone()).await.unwrap(),
            fail_suffix: fail_put,
        };
        let executor = FakeExecutor::new(script);
        let images = FakeImages::new();
        let controller = RecordingController::new(answer);
        let mut settings = BuildSettings {
            stack_image: "deis/stack:test".into(),
            registry: None,
            network: "none".into(),
            share_files: false,
            memory_bytes: 1 << 30,
            pids_limit: 512,
            timeout: Duration::from_secs(30),
            slug_warn_bytes: 64 << 20,
            slug_max_bytes: 64 << 20,
            fetch_timeout: Duration::from_secs(5),
            buildpack_max_bytes: 64 << 20,
            work_dir: dir.path().join("tmp"),
            stack_name: None,
            egress: EgressSettings::default(),
            cnb_driver: None,
        };
        tune(&mut settings);
        let pipeline = Pipeline {
            controller: controller.clone(),
            store: Arc::new(store),
            executor: Arc::new(executor.clone()),
            images: Arc::new(images.clone()),
            settings,
            stack: Stack::for_imports_only(),
            warm: Default::default(),
            archives: Default::default(),
        };
        World {
            _dir: dir,
            repo,
            store_root,
            commit,
            executor,
            images,
            controller,
            pipeline,
            hold: None,
        }
    }

    fn push(&self) -> Push {
        Push {
            id: PUSH_ID.into(),
            app: AppName::parse(APP).unwrap(),
            user: "dev".into(),
            commit: self.commit.clone(),
            source: Source::new(self.repo.join(".git"), Vec::new()),
            receive_started: Instant::now(),
            hold: self.hold.clone(),
        }
    }

    /// Runs one push to its verdict; `cancel` fires when `until` completes.
    async fn run_until(&self, until: impl std::future::Future<Output = ()>) -> Pushed {
        let (out, mut rx) = Output::channel(16);
        let collector = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(chunk) = rx.recv().await {
                seen.extend_from_slice(&chunk);
            }
            String::from_utf8_lossy(&seen).into_owned()
        });
        let cancel = CancellationToken::new();
        let verdict = tokio::select! {
            verdict = self.pipeline.run(self.push(), out, cancel.clone()) => verdict,
            () = async { until.await; cancel.cancel(); std::future::pending().await } => {
                unreachable!()
            }
        };
        // As the front door does once git is done: what the push left for after its
        // answer (the source tarball) runs now.
        self.pipeline.forget(PUSH_ID).await;
        assert!(self.pipeline.archives.wait(Duration::from_secs(10)).await);
        let output = collector.await.unwrap();
        Pushed { verdict, output }
    }

    async fn run(&self) -> Pushed {
        self.run_until(std::future::pending()).await
    }

    fn objects(&self) -> BTreeSet<String> {
        objects(&self.store_root)
    }

    fn keys(&self) -> Keys {
        Keys::new(&AppName::parse(APP).unwrap(), self.commit.short())
    }

    /// Every object a successful buildpack push of this commit leaves.
    fn all_objects(&self) -> BTreeSet<String> {
        let keys = self.keys();
        let mut all = cache_objects();
        all.extend([keys.source, keys.slug, keys.procfile]);
        all
    }

    /// Invariant 4: every container the push created is gone.
    fn assert_no_container_left(&self) {
        assert!(
            self.executor.leftovers().is_empty(),
            "containers left: {:?}",
            self.executor.containers()
        );
    }
}

/// The per-app cache survives a failed push by design (invariant 3's one exception).
fn cache_objects() -> BTreeSet<String> {
    let keys = cache::CacheKeys::new(&AppName::parse(APP).unwrap());
    BTreeSet::from([keys.archive, keys.hash])
}

const SOURCE: &[(&str, &str)] = &[
    ("main.go", "package main\n"),
    ("Procfile", "web: bin/server\n"),
];

fn unchanged(_: &mut BuildSettings) {}

fn assert_shows(output: &str, expected: &str) {
    assert!(
        output.contains(expected),
        "expected {expected:?} in the output:\n{output}"
    );
}

// ---- buildpack pushes ----

#[tokio::test]
async fn a_successful_push_stores_its_objects_and_is_released() {
    let world = World::new(
        SOURCE,
        compiles_showing_push_env,
        Answer::Release,
        None,
        unchanged,
    )
    .await;
    let pushed = world.run().await;

    assert_eq!(pushed.verdict, Verdict::Accept, "{}", pushed.output);
    for line in [
        "-----> Go app detected\n",
        "       compiling\n",
        "-----> Discovering process types\n",
        "       Procfile declares types -> web\n",
        "Build complete.\n",
        "Launching App...\n",
        "Done, web:v1 deployed\n",
    ] {
        assert_shows(&pushed.output, line);
    }
    assert_eq!(world.controller.released(), [1]);
    let keys = world.keys();
    assert_eq!(
        world.controller.asked(),
        [Asked {
            app: APP.into(),
            image: keys.slug.clone(),
            procfile: BTreeMap::from([("web".into(), "bin/server".into())]),
            dockerfile: false,
        }]
    );
    assert_eq!(world.objects(), world.all_objects());

    // The build container got the push's input and labels, and is gone.
    let containers = world.executor.containers();
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].removed, Some(Removal::Removed));
    assert_eq!(containers[0].spec.app, APP);
    assert_eq!(containers[0].spec.push_id, PUSH_ID);
    // What only the push knows reaches the driver in a file, not in the container's
    // environment, so the container can be created while the push is received.
    assert_shows(
        &pushed.output,
        &format!(
            "       push.env: SOURCE_VERSION={} BUILDPACK_SELECTION=detect\n",
            world.commit
        ),
    );
    assert!(!containers[0]
        .spec
        .env
        .iter()
        .any(|var| var.starts_with("SOURCE_VERSION=")));
    world.assert_no_container_left();

    // The slug holds the source and what the build wrote.
    let slug = std::fs::read(world.store_root.join(&keys.slug)).unwrap();
    let mut names = BTreeSet::new();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(slug.as_slice()));
    for entry in archive.entries().unwrap() {
        names.insert(entry.unwrap().path().unwrap().display().to_string());
    }
    for name in ["./main.go", "./Procfile", "./bin/server"] {
        assert!(names.contains(name), "{name} not in the slug: {names:?}");
    }
}

#[tokio::test]
async fn a_failed_compile_leaves_nothing() {
    let world = World::new(
        SOURCE,
        |_: &FakeRun<'_>| {
            FakeBuild::success()
                .line("-----> Go app detected")
                .line("go: cannot find main module")
                .file("/build/cache/partial", b"x".to_vec())
                .exit(1)
        },
        Answer::Release,
        None,
        unchanged,
    )
    .await;
    let pushed = world.run().await;

    assert_eq!(pushed.verdict, Verdict::Reject);
    assert_shows(&pushed.output, "go: cannot find main module\n");
    assert_shows(
        &pushed.output,
        " !     Build failed: the build exited with status 1\n",
    );
    assert!(!pushed.output.contains("Build complete."));
    assert!(world.controller.asked().is_empty());
    // Not even the cache: it is saved only after a successful compile.
    assert_eq!(world.objects(), BTreeSet::new());
    assert_eq!(
        world.executor.containers()[0].removed,
        Some(Removal::Removed)
    );
    world.assert_no_container_left();
}

#[tokio::test]
async fn no_matching_buildpack_is_said_so() {
    let world = World::new(
        SOURCE,
        |_: &FakeRun<'_>| FakeBuild::success().exit(2),
        Answer::Release,
        None,
        unchanged,
    )
    .await;
    let pushed = world.run().await;
    assert_eq!(pushed.verdict, Verdict::Reject);
    assert_shows(
        &pushed.output,
        "Build failed: no buildpack matched this app\n",
    );
    assert_eq!(world.objects(), BTreeSet::new());
    world.assert_no_container_left();
}

#[tokio::test]
async fn a_build_over_its_time_is_stopped_and_leaves_nothing() {
    let world = World::new(
        SOURCE,
        |_: &FakeRun<'_>| FakeBuild::hang().line("-----> installing forever"),
        Answer::Release,
        None,
        |settings| settings.timeout = Duration::from_millis(300),
    )
    .await;
    let started = Instant::now();
    let pushed = world.run().await;

    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(pushed.verdict, Verdict::Reject);
    assert_shows(&pushed.output, "-----> installing forever\n");
    assert_shows(
        &pushed.output,
        " !     Build failed: the build took longer than 300ms and was stopped\n",
    );
    assert!(world.controller.asked().is_empty());
    assert_eq!(world.objects(), BTreeSet::new());
    assert_eq!(
        world.executor.containers()[0].removed,
        Some(Removal::Removed)
    );
    world.assert_no_container_left();
}

#[tokio::test]
async fn a_push_whose_client_went_away_is_cancelled_and_leaves_nothing() {
    let world = World::new(
        SOURCE,
        |_: &FakeRun<'_>| FakeBuild::hang().line("-----> installing"),
        Answer::Release,
        None,
        unchanged,
    )
    .await;
    let executor = world.executor.clone();
    let pushed = world
        .run_until(async move { executor.until_started().await })
        .await;

    assert_eq!(pushed.verdict, Verdict::Reject);
    // The client is gone: nothing more is written for it.
    assert!(!pushed.output.contains("Build failed"), "{}", pushed.output);
    assert!(world.controller.asked().is_empty());
    assert_eq!(world.objects(), BTreeSet::new());
    // Dropped with the cancelled build: the Docker job removes it in the background.
    assert_eq!(
        world.executor.containers()[0].removed,
        Some(Removal::Dropped)
    );
    world.assert_no_container_left();
}

#[tokio::test]
async fn a_slug_over_the_limit_is_not_stored() {
    let world = World::new(
        SOURCE,
        |run: &FakeRun<'_>| compiles(run).file("/app/assets/blob", incompressible(96 << 10)),
        Answer::Release,
        None,
        |settings| settings.slug_max_bytes = 16 << 10,
    )
    .await;
    let pushed = world.run().await;

    assert_eq!(pushed.verdict, Verdict::Reject);
    assert_shows(&pushed.output, " !     Build failed: the compiled slug is ");
    assert_shows(&pushed.output, ", over the limit of 16.0K\n");
    assert!(world.controller.asked().is_empty());
    // The compile succeeded, so the cache was saved; nothing else stays.
    assert_eq!(world.objects(), cache_objects());
    world.assert_no_container_left();
}

#[tokio::test]
async fn a_failed_upload_rolls_back_what_was_stored() {
    let world = World::new(
        SOURCE,
        compiles,
        Answer::Release,
        Some("/push/slug.tgz"),
        unchanged,
    )
    .await;
    let pushed = world.run().await;

    assert_eq!(pushed.verdict, Verdict::Reject);
    assert_shows(&pushed.output, " !     Build failed: put ");
    assert_shows(&pushed.output, "the disk is on fire\n");
    assert!(world.controller.asked().is_empty());
    // Nothing of the push is left: the source tarball is only stored for deployed pushes.
    assert_eq!(world.objects(), cache_objects());
    world.assert_no_container_left();
}

#[tokio::test]
async fn a_refused_release_rolls_back_the_objects() {
    let world = World::new(SOURCE, compiles, Answer::Refuse, None, unchanged).await;
    let pushed = world.run().await;

    assert_eq!(pushed.verdict, Verdict::Reject);
    assert_shows(&pushed.output, "Launching App...\n");
    assert_shows(
        &pushed.output,
        " !     Build failed: You do not have permission to perform this action.\n",
    );
    assert_eq!(world.controller.asked().len(), 1);
    assert!(world.controller.released().is_empty());
    assert_eq!(world.objects(), cache_objects());
    world.assert_no_container_left();
}

/// A builder that lost the app (replicas: its lease) never asks for the release.
#[derive(Debug)]
struct LostHold;

#[async_trait::async_trait]
impl crate::push::Hold for LostHold {
    async fn confirm(&self) -> Result<(), String> {
        Err("another builder took web over".to_owned())
    }
}

#[tokio::test]
async fn a_push_that_lost_its_hold_on_the_app_is_not_released_and_leaves_nothing() {
    let mut world = World::new(SOURCE, compiles, Answer::Release, None, unchanged).await;
    world.hold = Some(Arc::new(LostHold));
    let pushed = world.run().await;

    assert_eq!(pushed.verdict, Verdict::Reject);
    assert_shows(
        &pushed.output,
        " !     Build failed: stopped before the release, nothing was deployed: another builder took web over\n",
    );
    assert!(!pushed.output.contains("Launching App"));
    assert!(world.controller.asked().is_empty());
    assert_eq!(world.objects(), cache_objects());
    world.assert_no_container_left();
}

#[tokio::test]
async fn an_unanswered_release_keeps_the_objects_it_may_point_to() {
    let world = World::new(SOURCE, compiles, Answer::Silent, None, unchanged).await;
    let pushed = world.run().await;

    assert_eq!(pushed.verdict, Verdict::Reject);
    assert_shows(
        &pushed.output,
        " !     Build failed: controller unreachable at http://controller.test: no answer within 30s\n",
    );
    assert_eq!(world.controller.asked().len(), 1);
    assert!(world.controller.released().is_empty());
    // The controller may have cut the release: what it would point to stays. The push
    // was rejected, so its commit never landed and no source tarball is written.
    let mut kept = world.all_objects();
    kept.remove(&world.keys().source);
    assert_eq!(world.objects(), kept);
    world.assert_no_container_left();
}

#[tokio::test]
async fn a_failed_second_push_of_a_commit_leaves_the_first_alone() {
    let world = World::new(SOURCE, compiles, Answer::Release, None, unchanged).await;
    assert_eq!(world.run().await.verdict, Verdict::Accept);
    let first = world.objects();
    let first_slug = std::fs::read(world.store_root.join(world.keys().slug)).unwrap();

    world.controller.answer(Answer::Refuse);
    let pushed = world.run().await;

    assert_eq!(pushed.verdict, Verdict::Reject);
    // The second push wrote under its own keys (write-once) and removed only those.
    let asked = world.controller.asked();
    assert_eq!(asked.len(), 2);
    assert_eq!(
        asked[1].image,
        Keys::for_push(&AppName::parse(APP).unwrap(), world.commit.short(), PUSH_ID).slug
    );
    assert_eq!(world.objects(), first);
    let slug = std::fs::read(world.store_root.join(world.keys().slug)).unwrap();
    assert_eq!(slug, first_slug);
    world.assert_no_container_left();
}

#[tokio::test]
async fn a_build_killed_with_its_engine_is_an_outage() {
    let world = World::new(
        SOURCE,
        |_: &FakeRun<'_>| FakeBuild::success().exit(137),
        Answer::Release,
        None,
        unchanged,
    )
    .await;
    world.executor.set_unreachable(true);
    let pushed = world.run().await;

    assert_eq!(pushed.verdict, Verdict::Reject);
    assert_shows(
        &pushed.output,
        " !     Build failed: cannot reach the Docker engine: the engine stopped during the \
         build, which was killed (exit status 137)\n",
    );
    assert_eq!(world.objects(), BTreeSet::new());
    world.assert_no_container_left();

    // With the engine there, the same exit is the build's own failure.
    world.executor.set_unreachable(false);
    let pushed = world.run().await;
    assert_shows(
        &pushed.output,
        "Build failed: the build exited with status 137\n",
    );
}

// ---- Dockerfile pushes ----

const DOCKERFILE_APP: &[(&str, &str)] = &[
    ("Dockerfile", "FROM scratch\nCOPY . /app\n"),
    ("Procfile", "web: /app/server\n"),
    ("server", "pretend\n"),
];

fn no_container(_: &FakeRun<'_>) -> FakeBuild {
    panic!("a Dockerfile push runs no build container")
}

fn with_registry(settings: &mut BuildSettings) {
    settings.registry = Some(RegistrySettings {
        host: "registry.test:5000".into(),
        username: None,
        password: None,
    });
}

#[tokio::test]
async fn a_dockerfile_push_is_built_pushed_and_released() {
    let world = World::new(
        DOCKERFILE_APP,
        no_container,
        Answer::Release,
        None,
        with_registry,
    )
    .await;
    let pushed = world.run().await;

    assert_eq!(pushed.verdict, Verdict::Accept, "{}", pushed.output);
    let reference = format!("registry.test:5000/{APP}:git-{}", world.commit.short());
    assert_shows(
        &pushed.output,
        &format!("-----> Building Docker image {reference}\n"),
    );
    assert_shows(&pushed.output, &format!("-----> Pushing {reference}\n"));
    assert_shows(&pushed.output, "Done, web:v1 deployed\n");
    assert_eq!(world.controller.asked()[0].image, reference);
    assert!(world.controller.asked()[0].dockerfile);
    assert_eq!(world.images.local(), BTreeSet::from([reference.clone()]));
    assert_eq!(world.images.registry(), BTreeSet::from([reference]));
    // The source tarball is stored beside the image.
    assert_eq!(world.objects(), BTreeSet::from([world.keys().source]));
}

#[tokio::test]
async fn a_failed_dockerfile_build_leaves_no_tag() {
    let world = World::new(
        DOCKERFILE_APP,
        no_container,
        Answer::Release,
        None,
        with_registry,
    )
    .await;
    world.images.fail_builds(Some(
        "The command '/bin/sh -c false' returned a non-zero code: 1",
    ));
    let pushed = world.run().await;

    assert_eq!(pushed.verdict, Verdict::Reject);
    assert_shows(
        &pushed.output,
        " !     Build failed: the Docker build failed: The command '/bin/sh -c false' \
         returned a non-zero code: 1\n",
    );
    assert!(world.controller.asked().is_empty());
    assert_eq!(world.images.local(), BTreeSet::new());
    assert_eq!(world.images.registry(), BTreeSet::new());
    assert_eq!(world.objects(), BTreeSet::new());
}

#[tokio::test]
async fn a_refused_push_to_the_registry_leaves_no_tag() {
    let world = World::new(
        DOCKERFILE_APP,
        no_container,
        Answer::Release,
        None,
        with_registry,
    )
    .await;
    world
        .images
        .fail_pushes(Some("unauthorized: authentication required"));
    let pushed = world.run().await;

    assert_eq!(pushed.verdict, Verdict::Reject);
    assert_shows(
        &pushed.output,
        " !     Build failed: the registry refused the image: unauthorized: authentication required\n",
    );
    assert_eq!(world.images.local(), BTreeSet::new());
    assert_eq!(world.images.registry(), BTreeSet::new());
    assert_eq!(world.objects(), BTreeSet::new());
}

#[tokio::test]
async fn a_refused_dockerfile_release_removes_local_and_registry_tags() {
    let world = World::new(
        DOCKERFILE_APP,
        no_container,
        Answer::Refuse,
        None,
        with_registry,
    )
    .await;
    let pushed = world.run().await;

    assert_eq!(pushed.verdict, Verdict::Reject);
    assert_shows(
        &pushed.output,
        "Build failed: You do not have permission to perform this action.\n",
    );
    assert_eq!(world.images.local(), BTreeSet::new());
    assert_eq!(world.images.registry(), BTreeSet::new());
    assert_eq!(world.objects(), BTreeSet::new());
}

#[tokio::test]
async fn an_unanswered_dockerfile_release_keeps_its_tags() {
    let world = World::new(
        DOCKERFILE_APP,
        no_container,
        Answer::Silent,
        None,
        with_registry,
    )
    .await;
    let pushed = world.run().await;

    assert_eq!(pushed.verdict, Verdict::Reject);
    let reference = format!("registry.test:5000/{APP}:git-{}", world.commit.short());
    assert_eq!(world.images.local(), BTreeSet::from([reference.clone()]));
    assert_eq!(world.images.registry(), BTreeSet::from([reference]));
    // Rejected: the commit never landed, so there is no source tarball either.
    assert!(world.objects().is_empty());
}

#[tokio::test]
async fn a_dockerfile_build_over_its_time_leaves_no_tag() {
    let world = World::new(
        DOCKERFILE_APP,
        no_container,
        Answer::Release,
        None,
        |settings| {
            with_registry(settings);
            settings.timeout = Duration::from_millis(300);
        },
    )
    .await;
    world.images.hang_builds(true);
    let pushed = world.run().await;
    assert_eq!(pushed.verdict, Verdict::Reject);
    assert_shows(&pushed.output, "Step 1/1 : RUN sleep infinity\n");
    assert_shows(
        &pushed.output,
        " !     Build failed: the build took longer than 300ms and was stopped\n",
    );
    assert!(world.controller.asked().is_empty());
    assert_eq!(world.images.local(), BTreeSet::new());
    assert_eq!(world.objects(), BTreeSet::new());
}

// ---- imports ----

fn import_request() -> ImportRequest {
    ImportRequest {
        app: AppName::parse(APP).unwrap(),
        image: deis_types::names::ImageRef::parse("example.com/team/api:1.2").unwrap(),
        user: "admin".into(),
        process_types: deis_slug::ProcessTypes::default(),
        source_credentials: None,
    }
}

async fn import(world: &World) -> Result<Imported, BuildError> {
    let (out, mut rx) = Output::channel(16);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let imported = world
        .pipeline
        .import(&import_request(), None, &out, &CancellationToken::new())
        .await;
    drop(out);
    drain.await.unwrap();
    imported
}

#[tokio::test]
async fn imports_roll_back_a_refused_release_and_keep_an_unanswered_one() {
    let world = World::new(SOURCE, no_container, Answer::Refuse, None, with_registry).await;
    let pulled = "example.com/team/api:1.2".to_owned();

    let error = import(&world).await.unwrap_err();
    assert_eq!(error.failure(), Failure::Refused);
    assert_eq!(world.images.local(), BTreeSet::from([pulled.clone()]));
    assert_eq!(world.images.registry(), BTreeSet::new());

    world.controller.answer(Answer::Silent);
    let error = import(&world).await.unwrap_err();
    assert_eq!(error.failure(), Failure::Outage);
    let tagged = world.images.registry();
    assert_eq!(tagged.len(), 1, "{tagged:?}");
    assert!(world.images.local().is_superset(&tagged));

    world.controller.answer(Answer::Release);
    let imported = import(&world).await.unwrap();
    assert_eq!(imported.version, 1);
    assert!(tagged.contains(&imported.image));
}

// ---- classification ----

#[test]
fn failures_are_classified_once() {
    let cases = [
        (
            BuildError::Controller(ControllerError::Timeout {
                url: "u".into(),
                timeout: Duration::from_secs(1),
            }),
            Failure::Outage,
        ),
        (
            BuildError::Controller(ControllerError::Forbidden),
            Failure::Refused,
        ),
        (
            BuildError::Controller(ControllerError::InternalServerError),
            Failure::Refused,
        ),
        (BuildError::EngineLost("gone".into()), Failure::Outage),
        (
            BuildError::Engine(EngineError::Connect("gone".into())),
            Failure::Outage,
        ),
        (BuildError::Cancelled, Failure::Outage),
        (
            BuildError::Engine(EngineError::Registry("no".into())),
            Failure::Refused,
        ),
        (
            BuildError::Engine(EngineError::Pull("not found".into())),
            Failure::Invalid,
        ),
        (BuildError::BuildFailed(1), Failure::Invalid),
        (
            BuildError::Timeout(Duration::from_secs(1)),
            Failure::Invalid,
        ),
    ];
    for (error, failure) in cases {
        assert_eq!(error.failure(), failure, "{error}");
    }
}
