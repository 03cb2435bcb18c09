//! Faults, one test each, through real git + OpenSSH clients: every fault rejects the push
//! with a message saying what went wrong, and leaves no release, no container, no lock (the
//! next push works) and no half-written object under a current key.
//!
//! Killing the client during the build is `tests/ssh.rs::killing_the_client_mid_build_cleans_up`.

mod util;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use deis_controller_double::{ControllerDouble, DoubleUser};
use serde_json::{json, Value};
use util::proxy::{Fault, FaultProxy};
use util::registry::Registry;
use util::*;

const BUILDER_KEY: &str = "faults-builder-key";

// ------------------------------------------------------------------------------ helpers

/// Object keys (relative to the store) the local store holds for `app`, sorted.
fn local_keys(builder: &Builder, app: &str) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, keys: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, keys);
            } else {
                keys.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let root = builder.data_dir.path().join("storage");
    let mut keys = Vec::new();
    walk(&root, &root.join("home"), &mut keys);
    keys.retain(|k| {
        k.starts_with(&format!("home/{app}:")) || k.starts_with(&format!("home/{app}/"))
    });
    keys.sort();
    keys
}

/// Uploads in progress (or abandoned) in the local store.
fn local_temp_files(builder: &Builder) -> Vec<String> {
    std::fs::read_dir(builder.data_dir.path().join("storage/.tmp"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn release_record(builder: &Builder, app: &str, version: u64) -> Value {
    let path = builder
        .data_dir
        .path()
        .join(format!("apps/{app}/releases/v{version}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn deis_builder(double: &ControllerDouble, extra_args: Vec<String>) -> Builder {
    Builder::start(BuilderOptions {
        controller: ControllerMode::Deis {
            url: double.url(),
            key: BUILDER_KEY.into(),
        },
        extra_args,
        ..Default::default()
    })
}

/// A controller double that knows `key` as user `dev`, owner of `apps`.
fn double_for(runtime: &tokio::runtime::Runtime, key: &Key, apps: &[&str]) -> ControllerDouble {
    let double = runtime.block_on(ControllerDouble::start(BUILDER_KEY));
    double.add_user(DoubleUser {
        username: "dev".into(),
        fingerprint: key.fingerprint.clone(),
        apps: apps.iter().map(|a| a.to_string()).collect(),
    });
    double
}

/// A builder storing in `bucket` of the test S3 server, reached through a fault proxy.
fn builder_on_s3_through_proxy(bucket: &str) -> (FaultProxy, Builder, Key) {
    let proxy = FaultProxy::for_url(&s3_endpoint());
    let (builder, key) = Builder::with_developer_and(BuilderOptions {
        extra_args: vec![
            "--storage".into(),
            format!("s3://{bucket}"),
            "--s3-endpoint".into(),
            proxy.url(),
        ],
        ..Default::default()
    });
    (proxy, builder, key)
}

/// The big-slug fixture with `kib` KiB of incompressible data in its slug.
fn big_app(kib: u64) -> App {
    let app = App::from_fixture("big-slug");
    app.commit_file("size-kib", &format!("{kib}\n"));
    app
}

/// `git push <url> master` through `port` (a proxy in front of the builder), in its own
/// process group so the test can kill git and ssh together.
fn push_through(app: &App, url: &str, key: &Key, port: u16) -> Child {
    Command::new("git")
        .current_dir(app.dir.path())
        .args(["push", url, "master"])
        .env("GIT_SSH_COMMAND", key.ssh_command(port))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", app.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap()
}

fn kill_group(child: &mut Child) {
    let pgid = libc::pid_t::try_from(child.id()).unwrap();
    assert!(pgid > 1);
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// The builder's refs for `app`, read in its repository on disk.
fn builder_refs(builder: &Builder, app: &str) -> String {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(builder.data_dir.path().join(format!("repos/{app}.git")))
        .args(["for-each-ref", "--format=%(refname) %(objectname)"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn healthz(builder: &Builder) -> u16 {
    http_get(builder.http_port, "/healthz")
        .map(|(status, _)| status)
        .unwrap_or(0)
}

// ------------------------------------------------------------------------------ storage

/// S3 refuses every connection: the push is refused naming the endpoint (the app's lease
/// cannot be taken, so nothing starts), and nothing stays.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn s3_unreachable_rejects_the_push() {
    require_services!();
    let bucket = unique("s3down");
    let (proxy, builder, key) = builder_on_s3_through_proxy(&bucket);
    let app = App::from_fixture("static-site");
    let name = unique("s3down");
    // On S3 the standalone controller's users live in the bucket: a login before the
    // outage lets the builder keep the copy it read.
    let listed = app.ls_remote(&builder, &name, &key);
    assert!(
        !String::from_utf8_lossy(&listed.stderr).contains("Permission denied"),
        "{listed:?}"
    );

    proxy.set(Fault::Refuse);
    app.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says(&format!(
            "cannot take {name}'s lease in the shared store, so nothing was started"
        ))
        .assert_says(&format!("s3://{bucket} at {}", proxy.url()));
    assert!(builder.releases(&name).is_empty());
    assert!(containers_of(&name).is_empty());
    assert_eq!(builder_refs(&builder, &name), "", "the ref must not move");

    proxy.set(Fault::None);
    let s3 = S3::connect();
    let of_the_app = |keys: Vec<String>| -> Vec<String> {
        keys.into_iter().filter(|k| k.contains(&name)).collect()
    };
    assert_eq!(of_the_app(s3.keys(&bucket)), Vec::<String>::new());
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
}

/// S3 cuts every connection that carries more than 4 MiB: small requests pass, the slug's
/// 8 MiB parts never do. The multipart upload is aborted and nothing is published.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn s3_failing_mid_upload_aborts_the_multipart_upload() {
    require_services!();
    let bucket = unique("s3cut");
    let (proxy, builder, key) = builder_on_s3_through_proxy(&bucket);
    let app = big_app(12 * 1024);
    let name = unique("s3cut");
    let sha8 = app.head()[..8].to_owned();
    let s3 = S3::connect();

    proxy.set(Fault::CutAfter(4 << 20));
    app.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says(&format!(
            " !     Build failed: put \"home/{name}:git-{sha8}/push/slug.tgz\""
        ))
        .assert_says("pre-receive hook declined");
    assert!(proxy.cuts() >= 1, "the fault never triggered");
    assert_eq!(
        s3.pending_uploads(&bucket),
        Vec::<String>::new(),
        "the multipart upload was not aborted"
    );
    let keys = s3.keys(&bucket);
    assert!(
        !keys.iter().any(|k| k.starts_with(&format!("home/{name}:"))),
        "objects of the failed push stayed: {keys:?}"
    );
    assert!(builder.releases(&name).is_empty());
    assert!(eventually(Duration::from_secs(10), || containers_of(&name).is_empty()));

    proxy.set(Fault::None);
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
    let keys = s3.keys(&bucket);
    assert!(keys.contains(&format!("home/{name}:git-{sha8}/push/slug.tgz")));
}

/// Unmounts (and removes) a tmpfs when dropped, even when the test fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The data dir is a 48 MiB tmpfs and the slug is 64 MiB: the upload fails with ENOSPC,
/// the temp file goes, the builder stays healthy and a small push works at once.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn disk_full_in_the_data_dir() {
    require_services!();
    let dir = tempfile::tempdir().unwrap();
    let mounted = Mounted(dir.path().to_owned());
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        mount.status.success(),
        "mount tmpfs: {}",
        String::from_utf8_lossy(&mount.stderr)
    );
    let builder = Builder::start_in(BuilderOptions::default(), dir);
    let key = Key::generate("ed25519", "dev");
    builder.authorize(&key);
    let app = big_app(64 * 1024);
    let name = unique("full");

    app.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says(" !     Build failed:")
        .assert_says("No space left on device")
        .assert_says("pre-receive hook declined");
    assert_eq!(local_keys(&builder, &name), Vec::<String>::new());
    assert_eq!(local_temp_files(&builder), Vec::<String>::new());
    assert!(builder.releases(&name).is_empty());
    assert!(eventually(Duration::from_secs(10), || containers_of(&name).is_empty()));
    assert_eq!(healthz(&builder), 200);

    app.commit_file("size-kib", "64\n");
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
    drop(builder);
    drop(mounted);
}

// ------------------------------------------------------------------------------ controller

/// The controller goes away in the middle of a push (connections to it are cut): the config
/// read is retried once, the release POST never; an unanswered release keeps its complete
/// objects (the controller may have cut it) and the next push uses keys of its own.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn controller_down_mid_push() {
    require_services!();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let key = Key::generate("ed25519", "dev");
    let name = unique("ctldown");
    let double = double_for(&runtime, &key, &[&name]);
    let proxy = FaultProxy::for_url(&double.url());
    let builder = Builder::start(BuilderOptions {
        controller: ControllerMode::Deis {
            url: proxy.url(),
            key: BUILDER_KEY.into(),
        },
        ..Default::default()
    });
    let app = App::from_fixture("static-site");
    let sha8 = app.head()[..8].to_owned();

    proxy.set(Fault::CutOn("/v2/hooks/config/".into()));
    app.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says(&format!(
            " !     Build failed: controller unreachable at {}",
            proxy.url()
        ));
    assert_eq!(proxy.cuts(), 2, "the config read is tried exactly twice");
    assert_eq!(local_keys(&builder, &name), Vec::<String>::new());

    proxy.set(Fault::CutOn("/v2/hooks/build/".into()));
    app.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says("remote: Launching App...")
        .assert_says(&format!(
            " !     Build failed: controller unreachable at {}",
            proxy.url()
        ));
    assert_eq!(proxy.cuts(), 3, "the release POST must not be repeated");
    assert!(double.builds().is_empty());
    // Outcome unknown: the objects stay, complete, where a release would point. The push
    // was rejected, so its commit never landed and has no source tarball.
    let first = format!("home/{name}:git-{sha8}");
    assert_eq!(
        local_keys(&builder, &name),
        vec![
            format!("{first}/push/Procfile"),
            format!("{first}/push/slug.tgz"),
        ]
    );
    slug_entries(&builder.storage_path(&format!("{first}/push/slug.tgz")));
    assert!(containers_of(&name).is_empty());

    proxy.set(Fault::None);
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
    let image = double.builds()[0]["image"].as_str().unwrap().to_owned();
    assert!(
        image.starts_with(&format!("home/{name}:git-{sha8}-")) && image.ends_with("/push/slug.tgz"),
        "the retry must not reuse the kept objects' keys: {image}"
    );
    assert!(builder.storage_path(&image).exists());
}

/// A controller that does not answer the release within `--controller-timeout`: the push is
/// rejected naming the limit, the POST is not repeated, and when the controller cuts the
/// release after all, its objects are there, complete and never overwritten.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn controller_slow_release_times_out() {
    require_services!();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let key = Key::generate("ed25519", "dev");
    let name = unique("ctlslow");
    let double = double_for(&runtime, &key, &[&name]);
    let builder = deis_builder(&double, vec!["--controller-timeout".into(), "2s".into()]);
    let app = App::from_fixture("static-site");
    let sha8 = app.head()[..8].to_owned();

    double.delay_builds(Duration::from_secs(5));
    app.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says(" !     Build failed: controller unreachable at")
        .assert_says("no answer within 2s");
    let build_posts = || {
        double
            .requests()
            .iter()
            .filter(|r| r.path == "/v2/hooks/build/")
            .count()
    };
    assert_eq!(build_posts(), 1, "the release POST must not be repeated");
    // The controller finishes its work later: a release, pointing at complete objects.
    assert!(eventually(Duration::from_secs(20), || double
        .builds()
        .len()
        == 1));
    let slug_key = format!("home/{name}:git-{sha8}/push/slug.tgz");
    assert_eq!(double.builds()[0]["image"], json!(slug_key));
    let slug = builder.storage_path(&slug_key);
    slug_entries(&slug);
    let released = sha256_file(&slug);

    // Pushing the same commit again never touches what release v1 points to.
    double.delay_builds(Duration::ZERO);
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v2 deployed"));
    let second = double.builds()[1]["image"].as_str().unwrap().to_owned();
    assert_ne!(second, slug_key);
    assert_eq!(sha256_file(&slug), released, "release v1's slug changed");
    assert!(containers_of(&name).is_empty());
}

/// A controller answering 5xx to the release: rejected with the SDK's words, the POST is not
/// repeated, and the push's objects are deleted (a 5xx is an answer: nothing was released).
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn controller_5xx_on_release() {
    require_services!();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let key = Key::generate("ed25519", "dev");
    let name = unique("ctl5xx");
    let double = double_for(&runtime, &key, &[&name]);
    let builder = deis_builder(&double, Vec::new());
    let app = App::from_fixture("static-site");

    double.fail_builds_with(500, json!({"detail": "database is locked"}));
    app.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says(" !     Build failed: Internal Server Error")
        .assert_says("pre-receive hook declined");
    let build_posts = double
        .requests()
        .iter()
        .filter(|r| r.path == "/v2/hooks/build/")
        .count();
    assert_eq!(build_posts, 1, "the release POST must not be repeated");
    assert_eq!(local_keys(&builder, &name), Vec::<String>::new());
    assert!(double.builds().is_empty());
    assert!(containers_of(&name).is_empty());

    double.clear_build_failure();
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
}

// ------------------------------------------------------------------------------ client

/// A push whose client is killed while its 4 MiB pack crawls through a throttling proxy.
struct KilledUpload {
    builder: Builder,
    key: Key,
    app: App,
    name: String,
}

fn kill_client_during_pack_upload(prefix: &str) -> KilledUpload {
    let (builder, key) = Builder::with_developer();
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", builder.ssh_port).parse().unwrap());
    let app = App::from_fixture("static-site");
    let mut noise = vec![0u8; 4 << 20];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut noise))
        .unwrap();
    std::fs::write(app.dir.path().join("noise.bin"), &noise).unwrap();
    app.git(&["add", "-A"]);
    app.git(&["commit", "-q", "-m", "noise"]);
    let name = unique(prefix);

    proxy.set(Fault::Throttle(256 * 1024));
    let url = format!("ssh://git@127.0.0.1:{}/{name}.git", proxy.port);
    let mut git = push_through(&app, &url, &key, proxy.port);
    assert!(
        eventually(Duration::from_secs(60), || proxy.upstream_bytes() > 1 << 20),
        "the pack never started flowing"
    );
    kill_group(&mut git);
    KilledUpload {
        builder,
        key,
        app,
        name,
    }
}

/// The client vanishes while its pack is still being sent: no ref, no object, no release,
/// no container, and the next push works.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn client_gone_during_pack_upload() {
    require_services!();
    let KilledUpload {
        builder,
        key,
        app,
        name,
    } = kill_client_during_pack_upload("gonepack");
    assert!(eventually(Duration::from_secs(10), || builder_refs(
        &builder, &name
    )
    .is_empty()));
    assert_eq!(local_keys(&builder, &name), Vec::<String>::new());
    assert!(builder.releases(&name).is_empty());
    // The build container created while the pack arrived goes when the builder sees the
    // client gone, which it may not have yet.
    assert!(eventually(Duration::from_secs(10), || containers_of(&name).is_empty()));

    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
}

/// Git's quarantine of the dead push (the partial pack) must go too.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn client_gone_during_pack_upload_leaves_no_quarantine() {
    require_services!();
    let killed = kill_client_during_pack_upload("quarantine");
    let objects = killed
        .builder
        .data_dir
        .path()
        .join(format!("repos/{}.git/objects", killed.name));
    let leftovers = || -> Vec<String> {
        std::fs::read_dir(&objects)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with("tmp_objdir"))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(20), || leftovers().is_empty()),
        "git's quarantine of the dead push stayed: {:?}",
        leftovers()
    );
}

/// The client vanishes while the controller cuts the release. By design the release call is
/// not raced against cancellation (the controller may release whether or not we wait), so
/// the release completes and keeps its objects; nothing is half-done, and the next push of
/// the same commit gets keys of its own.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn client_gone_during_the_release() {
    require_services!();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let key = Key::generate("ed25519", "dev");
    let name = unique("gonerel");
    let double = double_for(&runtime, &key, &[&name]);
    let builder = deis_builder(&double, Vec::new());
    let app = App::from_fixture("static-site");
    let sha8 = app.head()[..8].to_owned();

    double.delay_builds(Duration::from_secs(4));
    let mut push = app.push_live(&builder, &name, &key);
    push.wait_for("Launching App...");
    push.kill();
    assert!(
        eventually(Duration::from_secs(30), || double.builds().len() == 1),
        "the release was not cut"
    );
    let slug_key = format!("home/{name}:git-{sha8}/push/slug.tgz");
    assert_eq!(double.builds()[0]["image"], json!(slug_key));
    assert!(
        eventually(Duration::from_secs(10), || builder
            .log()
            .contains("deployed")),
        "the builder did not finish the release"
    );
    let slug = builder.storage_path(&slug_key);
    slug_entries(&slug);
    assert!(containers_of(&name).is_empty());

    double.delay_builds(Duration::ZERO);
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v2 deployed"));
    assert!(builder.storage_path(&slug_key).exists());
    assert_ne!(double.builds()[1]["image"], json!(slug_key));
}

// ------------------------------------------------------------------------------ engine

/// A Docker engine of this test alone (its own socket, data root and exec root, started by
/// `scripts/lib.sh`'s ensure_docker), so stopping it cannot disturb any other test. Stopped
/// and removed when dropped, whatever the test did.
struct PrivateEngine {
    state: tempfile::TempDir,
}

impl PrivateEngine {
    fn start() -> PrivateEngine {
        let engine = PrivateEngine {
            state: tempfile::tempdir().unwrap(),
        };
        engine.ensure();
        let load = engine.bash(&format!(
            "set -o pipefail; DOCKER_HOST= docker save {image} | docker load -q",
            image = stack_image()
        ));
        assert!(load.status.success(), "loading the stack image: {load:?}");
        engine
    }

    fn host(&self) -> String {
        format!("unix://{}", self.state.path().join("docker.sock").display())
    }

    fn bash(&self, script: &str) -> Output {
        Command::new("bash")
            .args(["-c", script])
            .env("DOCKER_HOST", self.host())
            .env("DEIS_STATE_DIR", self.state.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Starts the engine (again) the way the set-up scripts do.
    fn ensure(&self) {
        let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib.sh");
        let out = self.bash(&format!("source '{}' && ensure_docker", lib.display()));
        assert!(
            out.status.success(),
            "ensure_docker: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pid(&self) -> Option<libc::pid_t> {
        std::fs::read_to_string(self.state.path().join("dockerd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGTERM to this dockerd (one pid) and wait for it to exit.
    fn stop(&self) {
        let Some(pid) = self.pid().filter(|pid| *pid > 1) else {
            return;
        };
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let gone = eventually(Duration::from_secs(60), || unsafe {
            libc::kill(pid, 0) != 0
        });
        assert!(gone, "dockerd {pid} did not stop");
    }

    fn containers_of(&self, app: &str) -> Vec<String> {
        let out = self.bash(&format!(
            "docker ps -aq --filter label=io.deis.builder.app={app}"
        ));
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    fn release_waiting_build(&self, app: &str) {
        for id in self.containers_of(app) {
            let out = self.bash(&format!("docker exec {id} touch /tmp/continue"));
            assert!(out.status.success(), "{out:?}");
        }
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        if let Some(pid) = self.pid().filter(|pid| *pid > 1) {
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            eventually(Duration::from_secs(60), || unsafe {
                libc::kill(pid, 0) != 0
            });
        }
        // ensure_docker's exec root for a private socket (see scripts/lib.sh).
        let socket = self.state.path().join("docker.sock");
        self.bash(&format!(
            "rm -rf \"/run/deis-builder-docker-$(printf '%s' '{}' | md5sum | cut -c1-8)\"",
            socket.display()
        ));
    }
}

/// The engine stops under a running build and comes back: the push is rejected saying so,
/// nothing is stored, the build container is removed once the engine answers again, and
/// the next push works.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn docker_engine_stopped_during_a_build() {
    require_services!();
    let engine = PrivateEngine::start();
    let (builder, key) = Builder::with_developer_and(BuilderOptions {
        envs: vec![("DOCKER_HOST".into(), engine.host())],
        ..Default::default()
    });
    let app = App::from_fixture("procfile-wait");
    let name = unique("engine");

    let mut push = app.push_live(&builder, &name, &key);
    push.wait_for("waiting for /tmp/continue");
    assert_eq!(engine.containers_of(&name).len(), 1);
    engine.stop();
    push.finish()
        .assert_rejected()
        .assert_says(" !     Build failed:")
        .assert_says("Docker engine")
        .assert_says("pre-receive hook declined");
    assert_eq!(local_keys(&builder, &name), Vec::<String>::new());
    assert!(builder.releases(&name).is_empty());

    engine.ensure();
    assert!(
        eventually(Duration::from_secs(60), || engine
            .containers_of(&name)
            .is_empty()),
        "the build container stayed after the engine came back"
    );
    assert!(eventually(Duration::from_secs(20), || healthz(&builder) == 200));

    let mut again = app.push_live(&builder, &name, &key);
    again.wait_for("waiting for /tmp/continue");
    engine.release_waiting_build(&name);
    again
        .finish()
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
    assert!(eventually(Duration::from_secs(10), || engine
        .containers_of(&name)
        .is_empty()));
}

// ------------------------------------------------------------------------------ write-once

/// Re-pushing a deployed commit (here: a rollback by force-push) stores its objects under
/// keys of its own; what the live release points to is never rewritten, not even by a
/// re-push that fails half-way.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn repushing_a_deployed_commit_never_overwrites_its_objects() {
    require_services!();
    let (builder, key) = Builder::with_developer();
    let app = App::from_fixture("static-site");
    let name = unique("again");
    let first = app.head();
    let sha8 = first[..8].to_owned();

    app.push(&builder, &name, &key).assert_ok();
    let base = format!("home/{name}:git-{sha8}");
    assert_eq!(
        release_record(&builder, &name, 1)["image"],
        json!(format!("{base}/push/slug.tgz"))
    );
    let slug = builder.storage_path(&format!("{base}/push/slug.tgz"));
    let v1_slug = (
        sha256_file(&slug),
        std::fs::metadata(&slug).unwrap().modified().unwrap(),
    );
    app.commit_file("index.html", "<h1>v2</h1>\n");
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v2 deployed"));

    // Roll back to the first commit by pushing it again.
    app.push_ref(&builder, &name, &key, &format!("+{first}:master"))
        .assert_ok()
        .assert_says(&format!("Done, {name}:v3 deployed"));
    let v3 = release_record(&builder, &name, 3)["image"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        v3.starts_with(&format!("{base}-")) && v3.ends_with("/push/slug.tgz"),
        "the re-push must use keys of its own: {v3}"
    );
    assert!(builder.storage_path(&v3).exists());
    let now = (
        sha256_file(&slug),
        std::fs::metadata(&slug).unwrap().modified().unwrap(),
    );
    assert_eq!(now, v1_slug, "release v1's slug was rewritten");

    // A re-push that fails removes only what it wrote.
    app.commit_file("index.html", "<h1>v4</h1>\n");
    app.push(&builder, &name, &key).assert_ok();
    let v4_source = format!("home/{name}:git-{}/tar", &app.head()[..8]);
    assert!(eventually(Duration::from_secs(20), || builder
        .storage_path(&v4_source)
        .exists()));
    let before = local_keys(&builder, &name);
    set_app_config(
        &builder,
        &name,
        &[("BUILDPACK_URL", "http://127.0.0.1:1/missing.tgz")],
    );
    app.push_ref(&builder, &name, &key, &format!("+{first}:master"))
        .assert_rejected()
        .assert_says("Build failed");
    assert_eq!(local_keys(&builder, &name), before);
    assert_eq!(
        (
            sha256_file(&slug),
            std::fs::metadata(&slug).unwrap().modified().unwrap()
        ),
        v1_slug
    );
    assert_eq!(builder.releases(&name).len(), 4);
}

// ------------------------------------------------------------------------------ images

fn local_image_exists(reference: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", reference])
        .output()
        .unwrap()
        .status
        .success()
}

/// A Dockerfile build whose release is refused leaves neither a registry tag nor a local
/// tag; a re-push of a released commit gets a tag of its own and never moves `git-<sha8>`.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn dockerfile_release_failure_rolls_back_tags_and_tags_are_write_once() {
    require_services!();
    let registry = Registry::start(Some(("builder", "s3cret-registry")));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let key = Key::generate("ed25519", "dev");
    let name = unique("dtag");
    let _images = LocalImages(format!("{}/{name}", registry.host()));
    let double = double_for(&runtime, &key, &[&name]);
    let builder = deis_builder(
        &double,
        vec![
            "--registry".into(),
            registry.host(),
            "--registry-username".into(),
            "builder".into(),
            "--registry-password".into(),
            "s3cret-registry".into(),
        ],
    );
    let app = App::dockerfile_on_stack();
    let first = app.head();
    let tag = format!("git-{}", &first[..8]);
    let reference = format!("{}/{name}:{tag}", registry.host());

    double.fail_builds_with(409, json!({"detail": "release refused by policy"}));
    app.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says(&format!("Pushing {reference}"))
        .assert_says(" !     Build failed: release refused by policy");
    assert_eq!(registry.tags(&name), Vec::<String>::new());
    assert!(!local_image_exists(&reference), "the local tag stayed");

    double.clear_build_failure();
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
    assert_eq!(double.builds()[0]["image"], json!(reference));
    // The manifest a tag names, as the registry serves it.
    let manifest = |tag: &str| {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode("builder:s3cret-registry");
        let headers = format!(
            "Authorization: Basic {auth}\r\nAccept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json\r\n"
        );
        let path = format!("/v2/{name}/manifests/{tag}");
        let (status, body) = http_request(registry.port, "GET", &path, &headers, "").unwrap();
        assert_eq!(status, 200, "{body}");
        body
    };
    let released = manifest(&tag);

    app.commit_file("message.txt", "Hello again\n");
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v2 deployed"));
    app.push_ref(&builder, &name, &key, &format!("+{first}:master"))
        .assert_ok()
        .assert_says(&format!("Done, {name}:v3 deployed"));
    let v3 = double.builds()[2]["image"].as_str().unwrap().to_owned();
    assert!(
        v3.starts_with(&format!("{reference}-")),
        "the re-push must get a tag of its own: {v3}"
    );
    let tags = registry.tags(&name);
    assert!(tags.contains(&tag), "{tags:?}");
    assert_eq!(tags.len(), 3, "{tags:?}");
    assert_eq!(manifest(&tag), released, "{tag} was moved");
    assert_eq!(double.builds().len(), 3);

    // A failed re-push gets a tag of its own (its image differs: it carries its push's
    // label); its rollback deletes that tag's manifest and nothing the live tags name.
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v4 deployed"));
    double.fail_builds_with(409, json!({"detail": "release refused by policy"}));
    app.push_ref(&builder, &name, &key, &format!("+{first}:master"))
        .assert_rejected()
        .assert_says(" !     Build failed: release refused by policy");
    assert_eq!(manifest(&tag), released, "the rollback deleted {tag}");
    let v3_tag = v3.rsplit(':').next().unwrap();
    manifest(v3_tag); // still served (asserts 200)
    let tags = registry.tags(&name);
    assert_eq!(tags.len(), 4, "only the failed push's tag goes: {tags:?}");
    assert!(tags.iter().any(|t| t == v3_tag), "{tags:?}");
    assert_eq!(double.builds().len(), 4);
}

/// A tiny image (busybox) living only in `upstream`, not in the local engine.
fn upstream_image(upstream: &Registry) -> String {
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    std::fs::write(root.path().join("id"), unique("image")).unwrap();
    let reference = format!("{}/upstream/faults:1.0", upstream.host());
    let import = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -c . | docker import --change 'CMD [\"/bin/busybox\", \"true\"]' - {reference}",
            root.path().display()
        ))
        .output()
        .unwrap();
    assert!(import.status.success(), "{import:?}");
    let client = tempfile::tempdir().unwrap();
    let push = upstream.docker(client.path(), &["push", &reference]);
    assert!(push.status.success(), "{push:?}");
    let _ = Command::new("docker").args(["rmi", &reference]).output();
    reference
}

/// An import whose release is refused leaves no tag, in the registry or locally; the next
/// import of the same image is released under the same tag.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn import_release_failure_rolls_back_its_tags() {
    require_services!();
    let ours = Registry::start(None);
    let upstream = Registry::start(None);
    let source = upstream_image(&upstream);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let key = Key::generate("ed25519", "dev");
    let name = unique("imp");
    // The import pulls the source into the engine and tags it into ours.
    let _pulled = LocalImages(format!("{}/upstream/faults", upstream.host()));
    let _imported = LocalImages(format!("{}/{name}", ours.host()));
    let double = double_for(&runtime, &key, &[&name]);
    let builder = deis_builder(&double, vec!["--registry".into(), ours.host()]);
    let import = || {
        http_request(
            builder.http_port,
            "POST",
            "/v2/hooks/import/",
            &format!("Content-Type: application/json\r\nX-Deis-Builder-Auth: {BUILDER_KEY}\r\n"),
            &json!({"app": name, "image": source, "user": "dev"}).to_string(),
        )
        .unwrap()
    };
    let local_tags = || {
        let out = Command::new("docker")
            .args(["images", "-q", &format!("{}/{name}", ours.host())])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };

    double.fail_builds_with(409, json!({"detail": "release refused by policy"}));
    let (status, reply) = import();
    assert_eq!(status, 409, "{reply}");
    assert!(reply.contains("release refused by policy"), "{reply}");
    assert_eq!(ours.tags(&name), Vec::<String>::new());
    assert_eq!(local_tags(), "", "the local tag stayed");

    double.clear_build_failure();
    let (status, reply) = import();
    assert_eq!(status, 200, "{reply}");
    let tags = ours.tags(&name);
    assert_eq!(tags.len(), 1, "{tags:?}");
    assert_eq!(
        double.builds()[0]["image"],
        json!(format!("{}/{name}:{}", ours.host(), tags[0]))
    );
}

/// The engine stops under a running Dockerfile build: rejected, no tag, no release, nothing
/// left in the engine once it is back, and the next push works.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn docker_engine_stopped_during_a_dockerfile_build() {
    require_services!();
    let engine = PrivateEngine::start();
    let (builder, key) = Builder::with_developer_and(BuilderOptions {
        envs: vec![("DOCKER_HOST".into(), engine.host())],
        ..Default::default()
    });
    let app = App::dockerfile_on_stack();
    let first = app.commit_file("hold", "hold the build until the test says go\n");
    let name = unique("dengine");
    let containers = || {
        let out = engine.bash("docker ps -aq");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };

    let mut push = app.push_live(&builder, &name, &key);
    push.wait_for("waiting for go signal");
    engine.stop();
    push.finish()
        .assert_rejected()
        .assert_says(" !     Build failed:")
        .assert_says("Docker engine")
        .assert_says("pre-receive hook declined");
    assert!(builder.releases(&name).is_empty());
    assert_eq!(local_keys(&builder, &name), Vec::<String>::new());

    engine.ensure();
    let tagged = engine.bash(&format!("docker image inspect {name}:git-{}", &first[..8]));
    assert!(!tagged.status.success(), "the image was tagged");
    assert!(
        eventually(Duration::from_secs(30), || containers().is_empty()),
        "containers left in the engine: {}",
        containers()
    );

    app.git(&["rm", "-q", "hold"]);
    app.git(&["commit", "-q", "-m", "no hold"]);
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
}
