//! The in-process executor and image store, for pipeline tests: a [`crate::build::Pipeline`]
//! built on them runs whole pushes in milliseconds, without Docker.
//!
//! [`FakeExecutor`] keeps each container's filesystem in memory: the uploaded input archive
//! is unpacked into it, and on start a script the test supplies ([`FakeScript`]) looks at
//! the input and says what the "build" does: the output it writes, the files it leaves
//! (under `/app`, say), its exit code, or that it never ends (until the pipeline's timeout
//! or cancellation removes it). Every container is recorded with how it went away, so a
//! test can assert that nothing was left behind (invariant 4).
//!
//! [`FakeImages`] keeps local and registry tags as sets of references, builds by draining
//! the context, and can be told to fail a build or a push.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::Notify;

use super::{
    BuildContainerSpec, EngineError, Executor, ImageBuild, Images, Job, LineStream, OutputStream,
    RegistryAuth, RegistryTag, TagRemoval,
};
use deis_types::names::ImageRef;
use deis_types::pipe::ByteStream;

/// What a fake build sees when it starts.
#[derive(Debug)]
pub struct FakeRun<'a> {
    pub spec: &'a BuildContainerSpec,
    /// Regular files of the container, by absolute path (`/app/Procfile`): the input
    /// archive, unpacked.
    pub files: &'a BTreeMap<String, Vec<u8>>,
}

impl FakeRun<'_> {
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }
}

/// How a fake build ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeExit {
    Code(i64),
    /// Never: the build runs until it is removed.
    Hang,
}

/// What a fake build does.
#[derive(Debug, Clone)]
pub struct FakeBuild {
    /// Chunks of output, written in order.
    pub output: Vec<Bytes>,
    /// Files the build writes (absolute path, content), mode 0644.
    pub files: Vec<(String, Vec<u8>)>,
    pub exit: FakeExit,
}

impl FakeBuild {
    /// A build that exits 0 having done nothing.
    pub fn success() -> FakeBuild {
        FakeBuild {
            output: Vec::new(),
            files: Vec::new(),
            exit: FakeExit::Code(0),
        }
    }

    /// A build that prints its lines and never ends.
    pub fn hang() -> FakeBuild {
        FakeBuild {
            exit: FakeExit::Hang,
            ..FakeBuild::success()
        }
    }

    /// Adds a line of output (a newline is appended).
    pub fn line(mut self, text: &str) -> FakeBuild {
        self.output.push(Bytes::from(format!("{text}\n")));
        self
    }

    pub fn file(mut self, path: &str, content: impl Into<Vec<u8>>) -> FakeBuild {
        self.files.push((path.to_owned(), content.into()));
        self
    }

    pub fn exit(mut self, code: i64) -> FakeBuild {
        self.exit = FakeExit::Code(code);
        self
    }
}

/// The test's stand-in for the buildpacks: called once per started container.
pub type FakeScript = Arc<dyn Fn(&FakeRun<'_>) -> FakeBuild + Send + Sync>;

/// How a container went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// [`Job::remove`] was called.
    Removed,
    /// The job was dropped without it (cancellation, an error path): the Docker
    /// implementation removes such a container in the background.
    Dropped,
}

/// One container the fake created.
#[derive(Debug, Clone)]
pub struct ContainerRecord {
    pub id: String,
    pub spec: BuildContainerSpec,
    pub started: bool,
    pub removed: Option<Removal>,
}

#[derive(Debug, Default)]
struct ExecutorState {
    containers: Vec<ContainerRecord>,
    unreachable: bool,
}

/// The in-process [`Executor`]. Cheap to clone; clones share their records.
#[derive(Clone)]
pub struct FakeExecutor {
    script: FakeScript,
    state: Arc<Mutex<ExecutorState>>,
    started: Arc<Notify>,
}

impl fmt::Debug for FakeExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeExecutor")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeExecutor {
    pub fn new(script: impl Fn(&FakeRun<'_>) -> FakeBuild + Send + Sync + 'static) -> Self {
        FakeExecutor {
            script: Arc::new(script),
            state: Arc::default(),
            started: Arc::new(Notify::new()),
        }
    }

    /// Every container created so far, in order.
    pub fn containers(&self) -> Vec<ContainerRecord> {
        locked(&self.state).containers.clone()
    }

    /// Ids of the containers that still exist.
    pub fn leftovers(&self) -> Vec<String> {
        locked(&self.state)
            .containers
            .iter()
            .filter(|c| c.removed.is_none())
            .map(|c| c.id.clone())
            .collect()
    }

    /// Makes [`Executor::ping`] fail, as when the engine went away.
    pub fn set_unreachable(&self, unreachable: bool) {
        locked(&self.state).unreachable = unreachable;
    }

    /// Returns once a container has been started (any, since the executor was made).
    pub async fn until_started(&self) {
        loop {
            let notified = self.started.notified();
            if locked(&self.state).containers.iter().any(|c| c.started) {
                return;
            }
            notified.await;
        }
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut ContainerRecord)) {
        if let Some(record) = locked(&self.state)
            .containers
            .iter_mut()
            .find(|c| c.id == id)
        {
            change(record);
        }
    }
}

#[async_trait::async_trait]
impl Executor for FakeExecutor {
    async fn create(&self, spec: &BuildContainerSpec) -> Result<Box<dyn Job>, EngineError> {
        let id = {
            let mut state = locked(&self.state);
            let id = format!("fake-{}", state.containers.len() + 1);
            state.containers.push(ContainerRecord {
                id: id.clone(),
                spec: spec.clone(),
                started: false,
                removed: None,
            });
            id
        };
        Ok(Box::new(FakeJob {
            id,
            spec: spec.clone(),
            executor: self.clone(),
            fs: Mutex::new(Fs::default()),
            run: Mutex::new(None),
            removed: false,
        }))
    }

    async fn ping(&self) -> Result<(), EngineError> {
        if locked(&self.state).unreachable {
            return Err(EngineError::Connect(
                "the fake engine is unreachable".into(),
            ));
        }
        Ok(())
    }
}

/// A container's filesystem: directories and regular files by absolute path.
#[derive(Debug, Default)]
struct Fs {
    dirs: BTreeSet<String>,
    files: BTreeMap<String, (u32, Vec<u8>)>,
}

impl Fs {
    fn add_dir(&mut self, path: &str) {
        let mut parent = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            parent.push('/');
            parent.push_str(part);
            self.dirs.insert(parent.clone());
        }
    }

    fn add_file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        if let Some((dir, _)) = path.rsplit_once('/') {
            self.add_dir(dir);
        }
        self.files.insert(path.to_owned(), (mode, data));
    }

    /// Unpacks a tar archive at `/` (directories and regular files; links are skipped).
    fn unpack(&mut self, archive: &[u8]) -> io::Result<()> {
        let mut tar = tar::Archive::new(archive);
        for entry in tar.entries()? {
            let mut entry = entry?;
            let raw = entry.path()?.to_string_lossy().into_owned();
            let path = absolute(&raw);
            match entry.header().entry_type() {
                tar::EntryType::Directory => self.add_dir(&path),
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mode = entry.header().mode()? & 0o7777;
                    let mut data = Vec::new();
                    io::Read::read_to_end(&mut entry, &mut data)?;
                    self.add_file(&path, mode, data);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A tar of `path` as the engine makes it: entries named after its last component.
    fn archive(&self, path: &str) -> io::Result<Vec<u8>> {
        let root = absolute(path).trim_end_matches('/').to_owned();
        let name = root.rsplit('/').next().unwrap_or_default().to_owned();
        let under = |p: &str| p == root || p.starts_with(&format!("{root}/"));
        let renamed = |p: &str| format!("{name}{}", &p[root.len()..]);
        let mut tar = tar::Builder::new(Vec::new());
        let mut any = false;
        for dir in self.dirs.iter().filter(|d| under(d)) {
            any = true;
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, format!("{}/", renamed(dir)), io::empty())?;
        }
        for (file, (mode, data)) in self.files.iter().filter(|(f, _)| under(f)) {
            any = true;
            let mut header = tar::Header::new_gnu();
            header.set_mode(*mode);
            header.set_size(data.len() as u64);
            tar.append_data(&mut header, renamed(file), data.as_slice())?;
        }
        if !any {
            // What the engine answers for a path the container does not have.
            return Err(io::Error::other(format!(
                "copying the build output: 404 Could not find the file {path} in container"
            )));
        }
        tar.into_inner()
    }
}

fn absolute(path: &str) -> String {
    let trimmed = path.trim_start_matches("./").trim_start_matches('/');
    format!("/{}", trimmed.trim_end_matches('/'))
}

/// What a started fake build does, decided at start.
#[derive(Debug, Clone)]
struct Running {
    output: Vec<Bytes>,
    exit: FakeExit,
}

#[derive(Debug)]
struct FakeJob {
    id: String,
    spec: BuildContainerSpec,
    executor: FakeExecutor,
    fs: Mutex<Fs>,
    run: Mutex<Option<Running>>,
    removed: bool,
}

impl FakeJob {
    fn not_started(&self, action: &'static str) -> EngineError {
        EngineError::Api {
            action,
            message: format!("container {} is not running", self.id),
        }
    }
}

#[async_trait::async_trait]
impl Job for FakeJob {
    fn id(&self) -> &str {
        &self.id
    }

    async fn upload(&self, tar: ByteStream) -> Result<(), EngineError> {
        let failed = |e: io::Error| EngineError::Api {
            action: "copying the build input into the container",
            message: e.to_string(),
        };
        let chunks: Vec<Bytes> = tar.try_collect().await.map_err(failed)?;
        locked(&self.fs).unpack(&chunks.concat()).map_err(failed)
    }

    async fn start(&self) -> Result<(), EngineError> {
        let build = {
            let mut fs = locked(&self.fs);
            let files: BTreeMap<String, Vec<u8>> = fs
                .files
                .iter()
                .map(|(path, (_, data))| (path.clone(), data.clone()))
                .collect();
            let build = (self.executor.script)(&FakeRun {
                spec: &self.spec,
                files: &files,
            });
            for (path, data) in &build.files {
                fs.add_file(&absolute(path), 0o644, data.clone());
            }
            build
        };
        *locked(&self.run) = Some(Running {
            output: build.output,
            exit: build.exit,
        });
        self.executor.update(&self.id, |c| c.started = true);
        self.executor.started.notify_waiters();
        Ok(())
    }

    fn output(&self) -> OutputStream {
        let Some(running) = locked(&self.run).clone() else {
            return Box::pin(futures_util::stream::empty());
        };
        let written = futures_util::stream::iter(running.output.into_iter().map(Ok));
        match running.exit {
            FakeExit::Code(_) => Box::pin(written),
            // The engine's log stream stays open while the container runs.
            FakeExit::Hang => Box::pin(written.chain(futures_util::stream::pending())),
        }
    }

    async fn wait(&self) -> Result<i64, EngineError> {
        let exit = locked(&self.run).as_ref().map(|r| r.exit);
        match exit {
            None => Err(self.not_started("waiting for the build")),
            Some(FakeExit::Code(code)) => Ok(code),
            Some(FakeExit::Hang) => std::future::pending().await,
        }
    }

    fn download(&self, path: &str) -> ByteStream {
        let archive = locked(&self.fs).archive(path);
        Box::pin(futures_util::stream::once(async move {
            archive.map(Bytes::from)
        }))
    }

    async fn remove(mut self: Box<Self>) -> Result<(), EngineError> {
        self.removed = true;
        self.executor
            .update(&self.id, |c| c.removed = Some(Removal::Removed));
        Ok(())
    }
}

impl Drop for FakeJob {
    fn drop(&mut self) {
        if !self.removed {
            self.executor
                .update(&self.id, |c| c.removed = Some(Removal::Dropped));
        }
    }
}

#[derive(Debug, Default)]
struct ImagesState {
    /// References in the local engine (`repository:tag`).
    local: BTreeSet<String>,
    /// References in the registry (`host/name:tag`).
    registry: BTreeSet<String>,
    /// The error the next builds fail with.
    build_error: Option<String>,
    /// The next builds never end (until their stream is dropped).
    build_hangs: bool,
    /// The error the next pushes fail with.
    push_error: Option<String>,
    unreachable: bool,
}

/// The in-process [`Images`]. Cheap to clone; clones share their state.
#[derive(Debug, Clone, Default)]
pub struct FakeImages {
    state: Arc<Mutex<ImagesState>>,
}

impl FakeImages {
    pub fn new() -> FakeImages {
        FakeImages::default()
    }

    /// Tags in the local engine.
    pub fn local(&self) -> BTreeSet<String> {
        locked(&self.state).local.clone()
    }

    /// Tags in the registry.
    pub fn registry(&self) -> BTreeSet<String> {
        locked(&self.state).registry.clone()
    }

    /// An image that is there already (a base image, an earlier push's tag).
    pub fn add_local(&self, reference: &str) {
        locked(&self.state).local.insert(reference.to_owned());
    }

    pub fn fail_builds(&self, error: Option<&str>) {
        locked(&self.state).build_error = error.map(str::to_owned);
    }

    pub fn hang_builds(&self, hang: bool) {
        locked(&self.state).build_hangs = hang;
    }

    pub fn fail_pushes(&self, error: Option<&str>) {
        locked(&self.state).push_error = error.map(str::to_owned);
    }

    pub fn set_unreachable(&self, unreachable: bool) {
        locked(&self.state).unreachable = unreachable;
    }
}

fn lines(items: Vec<Result<String, EngineError>>) -> LineStream {
    Box::pin(futures_util::stream::iter(items))
}

#[async_trait::async_trait]
impl Images for FakeImages {
    fn build(&self, context: ByteStream, spec: &ImageBuild) -> LineStream {
        let state = self.state.clone();
        let tag = spec.tag.clone();
        let build = async move {
            // Reads the whole context, as the engine does, so its producer finishes.
            let read: Result<Vec<Bytes>, io::Error> = context.try_collect().await;
            let mut state = locked(&state);
            let steps = match (read, state.build_error.clone()) {
                (Err(error), _) => vec![Err(EngineError::BuildFailed(error.to_string()))],
                (Ok(_), _) if state.build_hangs => {
                    let step = Ok("Step 1/1 : RUN sleep infinity\n".to_owned());
                    return futures_util::stream::iter(vec![step])
                        .chain(futures_util::stream::pending())
                        .boxed();
                }
                (Ok(_), Some(error)) => {
                    vec![
                        Ok("Step 1/1 : RUN false\n".to_owned()),
                        Err(EngineError::BuildFailed(error)),
                    ]
                }
                (Ok(_), None) => {
                    state.local.insert(tag.clone());
                    vec![Ok(format!("Successfully tagged {tag}\n"))]
                }
            };
            futures_util::stream::iter(steps).boxed()
        };
        Box::pin(futures_util::stream::once(build).flatten())
    }

    fn push(&self, repository: &str, tag: &str, _auth: Option<&RegistryAuth>) -> LineStream {
        let mut state = locked(&self.state);
        let reference = format!("{repository}:{tag}");
        if let Some(error) = state.push_error.clone() {
            return lines(vec![Err(EngineError::Registry(error))]);
        }
        if !state.local.contains(&reference) {
            return lines(vec![Err(EngineError::Registry(format!(
                "no such image: {reference}"
            )))]);
        }
        state.registry.insert(reference);
        lines(vec![Ok(format!("{tag}: Pushed"))])
    }

    fn pull(&self, image: &ImageRef, _auth: Option<&RegistryAuth>) -> LineStream {
        let reference = match &image.digest {
            Some(digest) => format!("{}@{digest}", image.repository),
            None => format!("{}:{}", image.repository, image.pull_tag()),
        };
        locked(&self.state).local.insert(reference);
        lines(vec![Ok("Pull complete".to_owned())])
    }

    async fn tag(&self, image: &str, repository: &str, tag: &str) -> Result<(), EngineError> {
        let mut state = locked(&self.state);
        if !state.local.contains(image) {
            return Err(EngineError::Api {
                action: "tagging the image",
                message: format!("No such image: {image}"),
            });
        }
        state.local.insert(format!("{repository}:{tag}"));
        Ok(())
    }

    async fn image_id(&self, image: &str) -> Result<String, EngineError> {
        if !locked(&self.state).local.contains(image) {
            return Err(EngineError::Api {
                action: "inspecting the image",
                message: format!("No such image: {image}"),
            });
        }
        // Content ids are per image; the name stands in for the content here.
        let digest = <sha2::Sha256 as sha2::Digest>::digest(image.as_bytes());
        Ok(format!("sha256:{}", hex::encode(digest)))
    }

    async fn remove(&self, image: &str) -> Result<(), EngineError> {
        locked(&self.state).local.remove(image);
        Ok(())
    }

    async fn registry_digest(
        &self,
        repository: &str,
        tag: &str,
        _auth: Option<&RegistryAuth>,
    ) -> Result<Option<String>, EngineError> {
        let reference = format!("{repository}:{tag}");
        Ok(locked(&self.state)
            .registry
            .contains(&reference)
            .then(|| format!("sha256:{}", hex::encode(reference.as_bytes()))))
    }

    async fn delete_registry_tag(&self, tag: &RegistryTag) -> Result<TagRemoval, EngineError> {
        let reference = format!("{}/{}:{}", tag.host, tag.name, tag.tag);
        Ok(if locked(&self.state).registry.remove(&reference) {
            TagRemoval::Deleted
        } else {
            TagRemoval::Absent
        })
    }

    async fn ping(&self) -> Result<(), EngineError> {
        if locked(&self.state).unreachable {
            return Err(EngineError::Connect(
                "the fake engine is unreachable".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fake_container_round_trips_files_like_the_engine() {
        let executor = FakeExecutor::new(|run| {
            let source = run.file("/app/in.txt").unwrap_or_default().to_vec();
            FakeBuild::success()
                .line("compiling")
                .file("/app/out.txt", [source.as_slice(), b"!"].concat())
        });
        let spec = BuildContainerSpec {
            image: "stack".into(),
            cmd: vec![],
            env: vec![],
            user: "1000:1000".into(),
            network: "none".into(),
            memory_bytes: 0,
            pids_limit: 0,
            app: "web".into(),
            push_id: "p1".into(),
            files_dir: None,
        };
        let job = executor.create(&spec).await.unwrap();
        let mut input = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(2);
        input
            .append_data(&mut header, "app/in.txt", &b"hi"[..])
            .unwrap();
        let input = Bytes::from(input.into_inner().unwrap());
        job.upload(Box::pin(futures_util::stream::iter([Ok(input)])))
            .await
            .unwrap();
        job.start().await.unwrap();
        let output: Vec<Bytes> = job.output().try_collect().await.unwrap();
        assert_eq!(output.concat(), b"compiling\n");
        assert_eq!(job.wait().await.unwrap(), 0);

        let archive: Vec<Bytes> = job.download("/app").try_collect().await.unwrap();
        let archive = archive.concat();
        let mut names = Vec::new();
        for entry in tar::Archive::new(archive.as_slice()).entries().unwrap() {
            names.push(entry.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(names, ["app/", "app/in.txt", "app/out.txt"]);
        assert!(job
            .download("/nowhere")
            .try_collect::<Vec<_>>()
            .await
            .is_err());

        assert_eq!(executor.leftovers(), ["fake-1"]);
        job.remove().await.unwrap();
        assert!(executor.leftovers().is_empty());
        assert_eq!(executor.containers()[0].removed, Some(Removal::Removed));
    }
}
