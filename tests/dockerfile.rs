//! Dockerfile apps and image imports, with a real engine and real `docker-registry`s.

mod util;

use std::process::Command;
use std::time::{Duration, Instant};

use deis_controller_double::{ControllerDouble, DoubleUser};
use serde_json::json;
use util::proxy::{Fault, FaultProxy};
use util::registry::Registry;
use util::*;

const USER: &str = "builder";
const PASSWORD: &str = "s3cret-registry";

fn registry_args(registry: &Registry, password: &str) -> Vec<String> {
    vec![
        "--registry".into(),
        registry.host(),
        "--registry-username".into(),
        USER.into(),
        "--registry-password".into(),
        password.into(),
    ]
}

/// Runs `image` without network and returns what it printed.
fn run_image(image: &str) -> String {
    let run = Command::new("docker")
        .args(["run", "--rm", "--network", "none", image])
        .output()
        .unwrap();
    String::from_utf8_lossy(&run.stdout).trim().to_owned()
}

/// Running containers whose command mentions `text` (the engine's intermediate build containers).
fn running_with_command(text: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "--no-trunc", "--format", "{{.ID}} {{.Command}}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains(text))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn any_container_with_command(text: &str) -> bool {
    let out = Command::new("docker")
        .args(["ps", "-a", "--no-trunc", "--format", "{{.Command}}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains(text)
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn dockerfile_app_is_built_pushed_and_released() {
    require_services!();
    let registry = Registry::start(Some((USER, PASSWORD)));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let double = runtime.block_on(ControllerDouble::start("builder-secret"));
    let key = Key::generate("ed25519", "ci");
    let name = unique("docker");
    double.add_user(DoubleUser {
        username: "ci".into(),
        fingerprint: key.fingerprint.clone(),
        apps: vec![name.clone()],
    });
    let builder = Builder::start(BuilderOptions {
        controller: ControllerMode::Deis {
            url: double.url(),
            key: "builder-secret".into(),
        },
        extra_args: registry_args(&registry, PASSWORD),
        ..Default::default()
    });
    let app = App::dockerfile_on_stack();
    let sha = app.commit_file("hold", "hold the build until the test says go\n");

    let mut push = app.push_live(&builder, &name, &key);
    push.wait_for("Step 1/");
    // The step prints the words joined, so this cannot match the step's own header line.
    push.wait_for("waiting for go signal");
    // The build is still running and its lines are already on the developer's screen.
    let building = running_with_command("go signal");
    assert_eq!(building.len(), 1, "expected one running build step");
    let status = Command::new("docker")
        .args(["exec", &building[0], "touch", "/tmp/go"])
        .status()
        .unwrap();
    assert!(status.success());
    let pushed = push.finish();
    let reference = format!("{}/{name}:git-{}", registry.host(), &sha[..8]);
    pushed
        .assert_ok()
        .assert_says("build arg GREETING=unset")
        .assert_says("dockerignore ok")
        .assert_says(&format!("Pushing {reference}"))
        .assert_says(&format!("Done, {name}:v1 deployed"));

    assert_eq!(registry.tags(&name), vec![format!("git-{}", &sha[..8])]);
    let builds = double.builds();
    assert_eq!(builds.len(), 1);
    assert_eq!(builds[0]["image"], json!(reference));
    assert_eq!(builds[0]["dockerfile"], json!("true"));
    assert_eq!(
        builds[0]["procfile"],
        json!({"web": "cat /srv/app/message.txt"})
    );

    // Pulled back from the registry, the image runs and says what the fixture says.
    let _ = Command::new("docker").args(["rmi", &reference]).output();
    let client = tempfile::tempdir().unwrap();
    let pull = registry.docker(client.path(), &["pull", &reference]);
    assert!(
        pull.status.success(),
        "{}",
        String::from_utf8_lossy(&pull.stderr)
    );
    assert_eq!(run_image(&reference), "Hello from dockerfile-web");
    let _ = Command::new("docker").args(["rmi", &reference]).output();
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn a_failing_build_step_rejects_the_push() {
    require_services!();
    let registry = Registry::start(Some((USER, PASSWORD)));
    let (builder, key) = Builder::with_developer_and(BuilderOptions {
        extra_args: registry_args(&registry, PASSWORD),
        ..Default::default()
    });
    let name = unique("dfail");
    let token = unique("failing-step");
    let app = App::dockerfile_on_stack();
    app.commit_file(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo before\nRUN echo {token} && exit 3\nRUN echo never\n",
            stack_image()
        ),
    );
    app.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says(&format!("RUN echo {token} && exit 3"))
        .assert_says("returned a non-zero code: 3")
        .assert_says("Build failed")
        .assert_says("pre-receive hook declined");
    assert!(builder.releases(&name).is_empty());
    assert!(registry.tags(&name).is_empty());
    assert!(
        !any_container_with_command(&token),
        "a build container was left behind"
    );
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn a_missing_base_image_is_named() {
    require_services!();
    let (builder, key) = Builder::with_developer();
    let name = unique("nobase");
    let app = App::dockerfile_on_stack();
    app.commit_file(
        "Dockerfile",
        "FROM deis-builder/does-not-exist:1\nRUN true\n",
    );
    app.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says("base image deis-builder/does-not-exist:1 is not in the Docker engine");
    assert!(builder.releases(&name).is_empty());
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn a_wrong_registry_password_rejects_the_push() {
    require_services!();
    let registry = Registry::start(Some((USER, PASSWORD)));
    let (builder, key) = Builder::with_developer_and(BuilderOptions {
        extra_args: registry_args(&registry, "wrong-password"),
        ..Default::default()
    });
    let name = unique("badauth");
    let pushed = App::dockerfile_on_stack().push(&builder, &name, &key);
    pushed
        .assert_rejected()
        .assert_says("the registry refused the image");
    let lower = pushed.output.to_lowercase();
    assert!(
        lower.contains("unauthorized") || lower.contains("authentication"),
        "{}",
        pushed.output
    );
    assert!(builder.releases(&name).is_empty());
    assert!(registry.tags(&name).is_empty());
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn build_args_reach_the_build_only_when_enabled() {
    require_services!();
    let (builder, key) = Builder::with_developer();
    let app = App::dockerfile_on_stack();

    let plain = unique("noargs");
    write_config(&builder, &plain, json!({"GREETING": "hello"}));
    app.push(&builder, &plain, &key)
        .assert_ok()
        .assert_says("build arg GREETING=unset");

    let with_args = unique("args");
    write_config(
        &builder,
        &with_args,
        json!({"GREETING": "hello", "DEIS_DOCKER_BUILD_ARGS_ENABLED": "1"}),
    );
    app.push(&builder, &with_args, &key)
        .assert_ok()
        .assert_says("build arg GREETING=hello")
        // Without a registry the image stays in the local engine under the app's name.
        .assert_says(&format!("Done, {with_args}:v1 deployed"));
    let local = format!("{with_args}:git-{}", &app.head()[..8]);
    assert_eq!(run_image(&local), "Hello from dockerfile-web");
    for image in [local, format!("{plain}:git-{}", &app.head()[..8])] {
        let _ = Command::new("docker").args(["rmi", &image]).output();
    }
}

fn write_config(builder: &Builder, app: &str, values: serde_json::Value) {
    let dir = builder.data_dir.path().join("apps").join(app);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), values.to_string()).unwrap();
}

/// A tiny image (busybox) living only in `upstream`, not in the local engine.
fn upstream_image(upstream: &Registry, message: &str) -> String {
    let root = tempfile::tempdir().unwrap();
    let change = format!("--change 'CMD [\"/bin/busybox\", \"echo\", \"{message}\"]'");
    publish_upstream(upstream, root.path(), "hello", &change)
}

/// Imports the tree at `root` (with busybox added) as `upstream/<name>:1.0` and pushes it
/// to `upstream` only; returns its reference.
fn publish_upstream(
    upstream: &Registry,
    root: &std::path::Path,
    name: &str,
    change: &str,
) -> String {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let reference = format!("{}/upstream/{name}:1.0", upstream.host());
    let import = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -c . | docker import {change} - {reference}",
            root.display()
        ))
        .output()
        .unwrap();
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    let client = tempfile::tempdir().unwrap();
    let push = upstream.docker(client.path(), &["push", &reference]);
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    let _ = Command::new("docker").args(["rmi", &reference]).output();
    reference
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn images_are_imported_by_cli_and_http() {
    require_services!();
    let ours = Registry::start(Some((USER, PASSWORD)));
    let upstream = Registry::start(None);
    let source = upstream_image(&upstream, "hello from import");
    let mut extra = registry_args(&ours, PASSWORD);
    extra.extend(["--builder-key".to_owned(), "import-key".to_owned()]);
    let builder = Builder::start(BuilderOptions {
        extra_args: extra.clone(),
        ..Default::default()
    });
    let name = unique("imported");

    // The CLI, with the same settings as the server.
    let procfile = builder.data_dir.path().join("Procfile.import");
    std::fs::write(&procfile, "web: /bin/busybox httpd -f -p $PORT\n").unwrap();
    let cli = Command::new(env!("CARGO_BIN_EXE_deis-builder"))
        .args(["pull", &source, "--app", &name, "--procfile"])
        .arg(&procfile)
        .arg("--data-dir")
        .arg(builder.data_dir.path())
        .args(&extra)
        .args(["--stack-image", &stack_image()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(
        stdout.contains(&format!("-----> Pulling {source}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("Done, {name}:v1 deployed")),
        "{stdout}"
    );
    let tags = ours.tags(&name);
    assert_eq!(tags.len(), 1, "{tags:?}");
    assert!(tags[0].starts_with("import-"));
    let reference = format!("{}/{name}:{}", ours.host(), tags[0]);
    let release: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            builder
                .data_dir
                .path()
                .join(format!("apps/{name}/releases/v1.json")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(release["image"], json!(reference));
    assert_eq!(
        release["procfile"],
        json!({"web": "/bin/busybox httpd -f -p $PORT"})
    );

    // The HTTP endpoint, as the controller calls it: same image, same deterministic tag.
    let body = json!({"app": name, "image": source, "user": "ops"}).to_string();
    let (status, reply) = http_request(
        builder.http_port,
        "POST",
        "/v2/hooks/import/",
        "Content-Type: application/json\r\nX-Deis-Builder-Auth: import-key\r\n",
        &body,
    )
    .unwrap();
    assert_eq!(status, 200, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["release"]["version"], json!(2));
    assert_eq!(reply["image"], json!(reference));
    assert!(reply["output"]
        .as_str()
        .unwrap()
        .contains(&format!("Done, {name}:v2 deployed")));

    let _ = Command::new("docker").args(["rmi", &reference]).output();
    let client = tempfile::tempdir().unwrap();
    assert!(ours
        .docker(client.path(), &["pull", &reference])
        .status
        .success());
    assert_eq!(run_image(&reference), "hello from import");
    let _ = Command::new("docker").args(["rmi", &reference]).output();

    // Bad input is refused clearly, by both.
    let bad = Command::new(env!("CARGO_BIN_EXE_deis-builder"))
        .args(["pull", "Not A/Valid::Ref", "--app", &name, "--data-dir"])
        .arg(builder.data_dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid image reference"));
    let (status, reply) = http_request(
        builder.http_port,
        "POST",
        "/v2/hooks/import/",
        "Content-Type: application/json\r\nX-Deis-Builder-Auth: import-key\r\n",
        &json!({"app": name, "image": "UPPER/case"}).to_string(),
    )
    .unwrap();
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains("invalid image reference"));
    let (status, _) = http_request(
        builder.http_port,
        "POST",
        "/v2/hooks/import/",
        "Content-Type: application/json\r\nX-Deis-Builder-Auth: wrong\r\n",
        &body,
    )
    .unwrap();
    assert_eq!(status, 401);
}

/// An image in `upstream` with a layer of `mib` MiB of random bytes (gzip cannot shrink
/// it), so pushing it anywhere takes a while through a throttled link.
fn bulky_upstream_image(upstream: &Registry, mib: usize) -> String {
    let root = tempfile::tempdir().unwrap();
    let mut random = vec![0u8; mib << 20];
    let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut urandom, &mut random).unwrap();
    std::fs::write(root.path().join("random.bin"), random).unwrap();
    publish_upstream(upstream, root.path(), "bulky", "")
}

/// SIGTERM while an import pushes: the import gets the grace period, then its push is
/// stopped, its tags are rolled back and it answers 503 saying so; the builder exits in
/// time (the push to our registry crawls through a throttling proxy).
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn an_import_running_at_sigterm_is_cancelled_within_the_grace_period() {
    require_services!();
    const GRACE_SECS: u64 = 2;
    let ours = Registry::start(None);
    let slow = FaultProxy::start(ours.host().parse().unwrap());
    let slow_host = format!("127.0.0.1:{}", slow.port);
    let upstream = Registry::start(None);
    let source = bulky_upstream_image(&upstream, 8);
    let mut builder = Builder::start(BuilderOptions {
        extra_args: vec![
            "--registry".into(),
            slow_host.clone(),
            "--builder-key".into(),
            "import-key".into(),
            "--shutdown-grace".into(),
            format!("{GRACE_SECS}s"),
        ],
        ..Default::default()
    });
    let name = unique("termimport");
    // 64 KiB/s: the 8 MiB layer would take two minutes.
    slow.set(Fault::Throttle(64 << 10));

    let port = builder.http_port;
    let body = json!({"app": name, "image": source, "user": "ops"}).to_string();
    let import = std::thread::spawn(move || {
        http_request(
            port,
            "POST",
            "/v2/hooks/import/",
            "Content-Type: application/json\r\nX-Deis-Builder-Auth: import-key\r\n",
            &body,
        )
    });
    // Well past the registry checks: the engine is uploading the layer.
    let pushing = || slow.upstream_bytes() > 256 << 10;
    assert!(
        eventually(Duration::from_secs(120), pushing),
        "the import never started pushing:\n{}",
        builder.log()
    );
    let terminated = Instant::now();
    builder.terminate();

    let (status, reply) = import
        .join()
        .unwrap()
        .expect("the import answers before the builder exits");
    assert_eq!(status, 503, "{reply}");
    assert!(
        reply.contains(
            "the builder is restarting: this import was not deployed; try again in a minute"
        ),
        "{reply}"
    );
    let exit = builder.stop().expect("builder exit status");
    let took = terminated.elapsed();
    assert!(exit.success(), "builder exited with {exit}");
    assert!(
        took < Duration::from_secs(GRACE_SECS + 15),
        "the builder took {took:?} to exit"
    );
    assert!(
        took >= Duration::from_secs(GRACE_SECS),
        "the import was cancelled before the grace period was over ({took:?})"
    );

    // Nothing of the import stays: no tag in the registry, none in the engine, no release.
    assert_eq!(ours.tags(&name), Vec::<String>::new());
    let local = Command::new("docker")
        .args(["images", "-q", &format!("{slow_host}/{name}")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&local.stdout).trim(), "");
    assert!(builder.releases(&name).is_empty());
    // Nor later: the engine dropped the push with its caller. Unthrottled, a push still
    // under way would land its tag within a second or two.
    slow.set(Fault::None);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        ours.tags(&name),
        Vec::<String>::new(),
        "the engine finished the push after the import was cancelled"
    );
    let _ = Command::new("docker").args(["rmi", &source]).output();
}

/// The engine's layer cache serves later pushes of an app: a push that changes only a late
/// layer rebuilds only that one, and the `deployed` event splits the time by stage.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn a_second_push_reuses_the_unchanged_layers() {
    require_services!();
    let (builder, key) = Builder::with_developer();
    let name = unique("layers");
    let app = App::from_fixture("static-site");
    // A step of its own, so no earlier build (of any test run) cached it.
    let early = format!("RUN echo {} > /early", unique("early-step"));
    std::fs::write(
        app.dir.path().join("Dockerfile"),
        format!("FROM {}\n{early}\nCOPY late.txt /late.txt\n", stack_image()),
    )
    .unwrap();
    let first_sha = app.commit_file("late.txt", "first\n");
    let first = app.push(&builder, &name, &key);
    first.assert_ok();
    assert!(!first.output.contains("Using cache"), "{}", first.output);

    let second_sha = app.commit_file("late.txt", "second\n");
    let second = app.push(&builder, &name, &key);
    second
        .assert_ok()
        .assert_says(&format!("Done, {name}:v2 deployed"));
    let output = &second.output;
    let early_step = output.find(&early).expect("the early step is listed");
    let late_step = output
        .find("COPY late.txt")
        .expect("the late step is listed");
    assert!(
        output[early_step..late_step].contains("Using cache"),
        "the unchanged step is reused:\n{output}"
    );
    assert!(
        !output[late_step..].contains("Using cache"),
        "the changed step is rebuilt:\n{output}"
    );
    let log = builder.log();
    let deployed = log
        .lines()
        .rfind(|line| line.contains("deployed"))
        .unwrap_or_default();
    for field in [
        "context_ms=",
        "tag_ms=",
        "build_ms=",
        "push_ms=",
        "release_ms=",
    ] {
        assert!(deployed.contains(field), "{field} missing: {deployed}");
    }
    for sha in [first_sha, second_sha] {
        let _ = Command::new("docker")
            .args(["rmi", &format!("{name}:git-{}", &sha[..8])])
            .output();
    }
}
