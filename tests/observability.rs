//! What an operator watches: `/metrics`, `/healthz` and `/readiness`, JSON logs with the
//! push span, and the start-up sweep after the builder and its push processes were killed.
//! Everything through real git + OpenSSH clients, a real Docker engine and real S3.

mod util;

use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deis_controller_double::{ControllerDouble, DoubleUser};
use serde_json::Value;
use util::*;

fn metrics(builder: &Builder) -> String {
    let (status, body) = http_get(builder.http_port, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of one series (`name` or `name{labels}`) in Prometheus text.
#[track_caller]
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

fn pushes(text: &str, result: &str) -> f64 {
    sample(
        text,
        &format!("deis_builder_pushes_total{{result=\"{result}\"}}"),
    )
}

fn builds(text: &str, kind: &str) -> f64 {
    sample(
        text,
        &format!("deis_builder_build_duration_seconds_count{{kind=\"{kind}\"}}"),
    )
}

/// Size of the pack git sends for everything reachable from HEAD (what a first push sends).
fn pack_size(app: &App) -> u64 {
    let dir = app.dir.path();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("git rev-list --objects HEAD | git pack-objects --stdout -q | wc -c")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// `n` bytes that do not compress, so sizes on the wire and in the slug are predictable.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut data = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    data
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn metrics_count_pushes_builds_bytes_and_auth_failures() {
    require_services!();
    // One build slot, so a second build has to queue.
    let (builder, key) = Builder::with_developer_and(BuilderOptions {
        extra_args: vec!["--max-builds".into(), "1".into()],
        ..Default::default()
    });
    let before = metrics(&builder);
    for result in ["success", "failed", "rejected", "cancelled"] {
        assert_eq!(pushes(&before, result), 0.0, "{result}");
    }
    assert_eq!(
        sample(&before, "deis_builder_ssh_received_bytes_total"),
        0.0
    );
    assert!(before.contains("# TYPE deis_builder_build_duration_seconds histogram"));

    // A successful push carrying 256 KiB that does not compress.
    let app = App::from_fixture("python-web");
    std::fs::write(app.dir.path().join("blob.bin"), random_bytes(256 * 1024)).unwrap();
    app.git(&["add", "-A"]);
    app.git(&["commit", "-q", "-m", "blob"]);
    let pack = pack_size(&app);
    let name = unique("metrics");
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
    let sha8 = &app.head()[..8];
    let slug = builder.storage_path(&format!("home/{name}:git-{sha8}/push/slug.tgz"));
    let slug_size = std::fs::metadata(&slug).unwrap().len();
    assert!(slug_size > 256 * 1024, "slug of {slug_size} bytes");

    let after_success = metrics(&builder);
    assert_eq!(pushes(&after_success, "success"), 1.0);
    assert_eq!(pushes(&after_success, "failed"), 0.0);
    assert_eq!(builds(&after_success, "buildpack"), 1.0);
    assert_eq!(
        sample(
            &after_success,
            "deis_builder_build_duration_seconds_bucket{kind=\"buildpack\",le=\"+Inf\"}"
        ),
        1.0
    );
    assert!(
        sample(
            &after_success,
            "deis_builder_build_duration_seconds_sum{kind=\"buildpack\"}"
        ) > 0.0
    );
    assert_eq!(builds(&after_success, "dockerfile"), 0.0);
    assert_eq!(
        sample(&after_success, "deis_builder_slug_bytes_total"),
        slug_size as f64
    );
    // The pack plus git's ref negotiation, a few hundred bytes.
    let received = sample(&after_success, "deis_builder_ssh_received_bytes_total");
    assert!(
        received > (256 * 1024) as f64 && (received - pack as f64).abs() < (16 * 1024) as f64,
        "received {received} bytes for a pack of {pack}"
    );
    assert_eq!(sample(&after_success, "deis_builder_builds_active"), 0.0);

    // A failing compile.
    let failing = App::from_fixture("failing");
    failing
        .push(&builder, &unique("metrics-fail"), &key)
        .assert_rejected()
        .assert_says("Build failed");
    // A branch that does not deploy: refused before any build.
    app.push_ref(&builder, &name, &key, "HEAD:refs/heads/feature")
        .assert_rejected();
    // A key nobody authorised.
    let stranger = Key::generate("ed25519", "stranger");
    let refused = stranger.ssh(builder.ssh_port, &[], &["git-upload-pack", "'x.git'"]);
    assert!(!refused.status.success());

    let after = metrics(&builder);
    assert_eq!(pushes(&after, "success"), 1.0);
    assert_eq!(pushes(&after, "failed"), 1.0);
    assert_eq!(pushes(&after, "rejected"), 1.0);
    assert_eq!(pushes(&after, "cancelled"), 0.0);
    assert_eq!(
        builds(&after, "buildpack"),
        2.0,
        "the failed build is timed too"
    );
    assert_eq!(
        sample(&after, "deis_builder_slug_bytes_total"),
        slug_size as f64,
        "a failed build stores no slug"
    );
    assert_eq!(sample(&after, "deis_builder_auth_failures_total"), 1.0);
    assert!(sample(&after, "deis_builder_ssh_received_bytes_total") > received);

    // Gauges: one build held open in the only slot, a second push waiting for it.
    let held = App::from_fixture("procfile-wait");
    let (first_app, second_app) = (unique("held-a"), unique("held-b"));
    let first = held.push_held(&builder, &first_app, &key);
    let mut second = held.push_live(&builder, &second_app, &key);
    let gauge = |name: &str| sample(&metrics(&builder), name);
    assert!(
        eventually(Duration::from_secs(60), || gauge(
            "deis_builder_builds_queued"
        ) == 1.0),
        "the second push never queued:\n{}",
        metrics(&builder)
    );
    assert_eq!(gauge("deis_builder_builds_active"), 1.0);
    release_waiting_build(&first_app);
    first.finish().assert_ok();
    second.wait_for("waiting for /tmp/continue");
    assert_eq!(gauge("deis_builder_builds_active"), 1.0);
    assert_eq!(gauge("deis_builder_builds_queued"), 0.0);
    release_waiting_build(&second_app);
    second.finish().assert_ok();
    let done = metrics(&builder);
    assert_eq!(sample(&done, "deis_builder_builds_active"), 0.0);
    assert_eq!(sample(&done, "deis_builder_builds_queued"), 0.0);
    assert_eq!(pushes(&done, "success"), 3.0);
    assert_eq!(builds(&done, "buildpack"), 4.0);
}

/// A TCP forwarder to `target` that can be cut (listener and live connections) and restored
/// on the same port: storage that goes away and comes back, as seen from the builder.
struct Cuttable {
    port: u16,
    target: String,
    running: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Cuttable {
    fn start(target: &str) -> Cuttable {
        let port = free_port();
        let proxy = Cuttable {
            port,
            target: target.to_owned(),
            running: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        proxy.restore();
        proxy
    }

    fn restore(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        self.running.store(true, Ordering::SeqCst);
        let (running, conns, target) = (
            self.running.clone(),
            self.conns.clone(),
            self.target.clone(),
        );
        std::thread::spawn(move || {
            while running.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let mut list = conns.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
    }

    /// Stops accepting and breaks every open connection (the SDK pools them).
    fn cut(&self) {
        self.running.store(false, Ordering::SeqCst);
        for conn in self.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
        // The accept loop notices within its poll interval and drops the listener.
        std::thread::sleep(Duration::from_millis(200));
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn health(builder: &Builder, path: &str) -> (u16, Value) {
    let (status, body) = http_get(builder.http_port, path).expect("health request");
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, json)
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn health_names_the_storage_when_s3_is_unreachable() {
    require_services!();
    let s3 = s3_endpoint();
    let proxy = Cuttable::start(s3.trim_start_matches("http://"));
    let builder = Builder::start(BuilderOptions {
        extra_args: vec![
            "--storage".into(),
            format!("s3://{}", unique("health")),
            "--s3-endpoint".into(),
            proxy.endpoint(),
        ],
        ..Default::default()
    });

    for path in ["/healthz", "/readiness"] {
        let (status, body) = health(&builder, path);
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["status"], "ok", "{body}");
        for check in ["ssh", "storage", "engine"] {
            assert_eq!(body["checks"][check], "ok", "{path}: {body}");
        }
    }

    proxy.cut();
    let (status, body) = health(&builder, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "error", "{body}");
    let storage = body["checks"]["storage"].as_str().unwrap_or_default();
    assert!(storage.starts_with("error: "), "{body}");
    assert!(storage.contains(&proxy.endpoint()), "{body}");
    assert_eq!(body["checks"]["ssh"], "ok", "{body}");
    assert_eq!(body["checks"]["engine"], "ok", "{body}");
    let (status, body) = health(&builder, "/readiness");
    assert_eq!(status, 503, "{body}");

    proxy.restore();
    assert!(
        eventually(Duration::from_secs(20), || health(&builder, "/healthz").0
            == 200),
        "healthy again once storage is back: {}",
        health(&builder, "/healthz").1
    );
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn readiness_names_the_controller_when_it_is_down() {
    require_services!();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let double = runtime.block_on(ControllerDouble::start("builder-secret"));
    let builder = Builder::start(BuilderOptions {
        controller: ControllerMode::Deis {
            url: double.url(),
            key: "builder-secret".into(),
        },
        ..Default::default()
    });
    assert_eq!(health(&builder, "/readiness").0, 200);
    double.set_healthz_status(500);
    let (status, body) = health(&builder, "/readiness");
    assert_eq!(status, 503, "{body}");
    assert!(
        body["checks"]["controller"]
            .as_str()
            .is_some_and(|c| c.starts_with("error: ")),
        "{body}"
    );
    // Liveness does not depend on the controller.
    let (status, body) = health(&builder, "/healthz");
    assert_eq!(status, 200, "{body}");
    assert!(body["checks"].get("controller").is_none(), "{body}");
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn json_logs_carry_the_connection_and_push_spans() {
    require_services!();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let double = runtime.block_on(ControllerDouble::start("builder-secret"));
    let key = Key::generate("ed25519", "ignored");
    let name = unique("jsonlog");
    double.add_user(DoubleUser {
        username: "carol".into(),
        fingerprint: key.fingerprint.clone(),
        apps: vec![name.clone()],
    });
    let builder = Builder::start(BuilderOptions {
        controller: ControllerMode::Deis {
            url: double.url(),
            key: "builder-secret".into(),
        },
        extra_args: vec!["--log-format".into(), "json".into()],
        ..Default::default()
    });
    let app = App::from_fixture("python-web");
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
    let sha8 = app.head()[..8].to_owned();

    let log = builder.log();
    let events: Vec<Value> = log
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let event: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
            assert!(event.is_object(), "{line}");
            event
        })
        .collect();
    assert!(!events.is_empty());

    let deployed = events
        .iter()
        .find(|e| e["fields"]["message"] == "deployed")
        .unwrap_or_else(|| panic!("no `deployed` event in:\n{log}"));
    let span = &deployed["span"];
    assert_eq!(span["name"], "push", "{deployed}");
    assert_eq!(span["app"], name.as_str(), "{deployed}");
    assert_eq!(span["user"], "carol", "{deployed}");
    assert_eq!(span["sha"], sha8.as_str(), "{deployed}");
    let push_id = span["push_id"].as_str().unwrap_or_default();
    assert!(
        push_id.len() >= 8 && push_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{deployed}"
    );
    // Every event of this push carries the same id, the build's own ones included.
    let of_this_push = events
        .iter()
        .filter(|e| e["span"]["push_id"] == push_id)
        .count();
    assert!(of_this_push >= 2, "{log}");

    // The connection's span names the peer and, once the key is accepted, the user.
    let authenticated = events
        .iter()
        .find(|e| e["fields"]["message"] == "authenticated")
        .unwrap_or_else(|| panic!("no `authenticated` event in:\n{log}"));
    let connection = &authenticated["span"];
    assert_eq!(connection["name"], "ssh", "{authenticated}");
    assert!(
        connection["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{authenticated}"
    );
    let git_started = events
        .iter()
        .find(|e| e["fields"]["message"] == "started" && e["span"]["name"] == "git")
        .unwrap_or_else(|| panic!("no git `started` event in:\n{log}"));
    let ssh_span = git_started["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|s| s["name"] == "ssh"))
        .unwrap_or_else(|| panic!("git span outside the connection span: {git_started}"));
    assert_eq!(ssh_span["user"], "carol", "{git_started}");
    // The git span learns the push id, tying the connection to the build's events.
    let git_finished = events
        .iter()
        .find(|e| e["fields"]["message"] == "finished" && e["span"]["name"] == "git")
        .unwrap_or_else(|| panic!("no git `finished` event in:\n{log}"));
    assert_eq!(git_finished["span"]["push_id"], push_id, "{git_finished}");
}

/// The instance id the builder derives from its data dir (its label on containers and images).
fn instance_id(data_dir: &std::path::Path) -> String {
    use sha2::Digest;
    let canonical = data_dir.canonicalize().unwrap();
    let digest = sha2::Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..6])
}

/// Process ids of every descendant of `pid`, from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((child, ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.remove(0);
    found
}

fn signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).unwrap();
    assert!(pid > 1);
    unsafe {
        libc::kill(pid, signal);
    }
}

fn entries_starting(dir: &std::path::Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|read| {
            read.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Beside `a_crashed_builder_sweeps_its_leftovers_on_restart` (tests/ssh.rs), which kills the
/// builder alone: here its git and hook processes die with it, as when a whole container or
/// machine goes down, so git cannot clean its quarantine either.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn a_killed_builder_and_its_push_processes_leave_nothing_after_restart() {
    require_services!();
    let (mut builder, key) = Builder::with_developer();
    let data = builder.data_dir.path().to_owned();
    let app = App::from_fixture("procfile-wait");
    let name = unique("killed");
    let repo = data.join("repos").join(format!("{name}.git"));

    let push = app.push_held(&builder, &name, &key);
    let pid = builder.pid().unwrap();
    // Freeze the builder first so it cannot react, then kill its whole tree.
    signal(pid, libc::SIGSTOP);
    let children = descendants(pid);
    assert!(!children.is_empty(), "git receive-pack should be running");
    for child in &children {
        signal(*child, libc::SIGKILL);
    }
    signal(pid, libc::SIGKILL);
    push.finish().assert_rejected();

    // What the crash left (so this test can fail): the container, git's quarantine and
    // the push's workspace. Add a stale ref lock and a labelled untagged image too.
    assert_eq!(containers_of(&name).len(), 1);
    let quarantine = entries_starting(&repo.join("objects"), "tmp_objdir-incoming-");
    assert_eq!(quarantine.len(), 1, "git's quarantine dir: {quarantine:?}");
    let workspaces = entries_starting(&data.join("tmp"), "push-");
    assert_eq!(workspaces.len(), 1, "the push workspace: {workspaces:?}");
    std::fs::write(repo.join("refs/heads/master.lock"), "").unwrap();
    let instance = instance_id(&data);
    let image = std::process::Command::new("docker")
        .args(["build", "-q", "--label"])
        .arg(format!("io.deis.builder.instance={instance}"))
        .args(["--label", &format!("test={name}"), "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            let dockerfile = format!("FROM {}\nLABEL leftover={name}\n", stack_image());
            child
                .stdin
                .take()
                .unwrap()
                .write_all(dockerfile.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        image.status.success(),
        "docker build of the leftover image failed"
    );
    let image = String::from_utf8_lossy(&image.stdout).trim().to_owned();

    builder.crash_and_restart();

    assert!(containers_of(&name).is_empty(), "container not swept");
    assert!(
        entries_starting(&repo.join("objects"), "tmp_objdir-incoming-").is_empty(),
        "quarantine not swept"
    );
    assert!(entries_starting(&data.join("tmp"), "push-").is_empty());
    assert!(!repo.join("refs/heads/master.lock").exists());
    let inspect = std::process::Command::new("docker")
        .args(["image", "inspect", &image])
        .output()
        .unwrap();
    assert!(!inspect.status.success(), "image {image} not swept");
    let log = builder.log();
    for line in [
        "kind=\"containers\" count=1",
        "kind=\"images\" count=1",
        "kind=\"git quarantine dirs\" count=1",
        "kind=\"git lock files\" count=1",
        "kind=\"push workspaces\" count=1",
    ] {
        assert!(log.contains(line), "no {line:?} in the log:\n{log}");
    }
    let text = metrics(&builder);
    assert_eq!(sample(&text, "deis_builder_containers_swept_total"), 1.0);
    assert_eq!(sample(&text, "deis_builder_images_swept_total"), 1.0);

    // The app takes pushes again; the old lock file would have made git refuse the ref.
    let again = app.push_held(&builder, &name, &key);
    release_waiting_build(&name);
    again
        .finish()
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
}
