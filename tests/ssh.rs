//! The SSH front door, driven with the real OpenSSH client.

mod util;

use std::time::Duration;

use util::*;

const BUILDER_KEY: &str = "sigterm-test-builder-key";

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn unknown_keys_are_denied() {
    require_services!();
    let builder = Builder::start(BuilderOptions::default());
    let stranger = Key::generate("ed25519", "stranger");
    let out = stranger.ssh(builder.ssh_port, &[], &["git-receive-pack '/app.git'"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Permission denied (publickey)"), "{stderr}");
}

/// OpenSSH's own account of one login attempt (`ssh -v`) with `key`.
fn verbose_login(builder: &Builder, key: &Key) -> (bool, String) {
    let out = key.ssh(
        builder.ssh_port,
        &["-v"],
        &["git-upload-pack '/nothing.git'"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (stderr.contains("Authenticated to"), stderr)
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn unknown_keys_are_refused_when_offered() {
    require_services!();
    let builder = Builder::start(BuilderOptions::default());
    // A passphrase-protected key: were it accepted at the offer, OpenSSH would need the
    // passphrase to sign, and in batch mode it would say it cannot read one.
    let stranger = Key::generate_with_passphrase("ed25519", "stranger", "a passphrase");
    let (authenticated, stderr) = verbose_login(&builder, &stranger);
    assert!(!authenticated, "{stderr}");
    assert!(stderr.contains("Offering public key"), "{stderr}");
    assert!(!stderr.contains("Server accepts key"), "{stderr}");
    assert!(!stderr.to_lowercase().contains("passphrase"), "{stderr}");
    assert!(stderr.contains("Permission denied (publickey)"), "{stderr}");
    let (_, metrics) = http_get(builder.http_port, "/metrics").unwrap();
    assert!(
        metrics.contains("deis_builder_auth_failures_total 1"),
        "one refusal, counted once: {metrics}"
    );

    // An authorized key is accepted at the offer and then logs in.
    let developer = Key::generate("ed25519", "dev");
    builder.authorize(&developer);
    let (authenticated, stderr) = verbose_login(&builder, &developer);
    assert!(stderr.contains("Server accepts key"), "{stderr}");
    assert!(authenticated, "{stderr}");
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn authorized_keys_options_are_read_like_sshd() {
    require_services!();
    let builder = Builder::start(BuilderOptions::default());
    let app = App::from_fixture("static-site");
    let name = unique("opts");
    let write_keys = |lines: &[String]| {
        std::fs::write(
            builder.data_dir.path().join("authorized_keys"),
            lines.join("\n") + "\n",
        )
        .unwrap();
    };
    let restricted = Key::generate("ed25519", "restricted");
    let environed = Key::generate("ed25519", "environed");
    let commanded = Key::generate("ed25519", "commanded");
    let elsewhere = Key::generate("ed25519", "elsewhere");
    let expired = Key::generate("ed25519", "expired");
    let authority = Key::generate("ed25519", "authority");
    write_keys(&[
        format!(
            "no-pty,no-port-forwarding,restrict,from=\"127.0.0.0/8,::1\" {}",
            restricted.public_line
        ),
        format!(
            "environment=\"GREETING=\\\"hi, quoted\\\"\",no-agent-forwarding {}",
            environed.public_line
        ),
        // A key disabled the sshd way must stay disabled.
        format!("command=\"/bin/false\" {}", commanded.public_line),
        format!("from=\"192.0.2.*\" {}", elsewhere.public_line),
        format!("expiry-time=\"20200101\" {}", expired.public_line),
        format!("cert-authority {}", authority.public_line),
    ]);
    // Options the builder implies or ignores do not stop a push.
    app.push(&builder, &name, &restricted)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
    app.commit_file("VERSION", "2\n");
    app.push(&builder, &name, &environed)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v2 deployed"));
    assert!(
        builder.log().contains("authorized_keys options ignored"),
        "the ignored environment= is logged:\n{}",
        builder.log()
    );
    // from= and expiry-time= are honoured; command= and cert-authority lines are skipped.
    for (key, what) in [
        (&commanded, "command="),
        (&elsewhere, "from="),
        (&expired, "expiry-time="),
        (&authority, "cert-authority"),
    ] {
        let (authenticated, stderr) = verbose_login(&builder, key);
        assert!(!authenticated, "{what}: {stderr}");
        assert!(!stderr.contains("Server accepts key"), "{what}: {stderr}");
    }
    assert!(
        builder.log().contains("SSH certificates are not supported"),
        "{}",
        builder.log()
    );
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn every_client_key_type_works() {
    require_services!();
    let builder = Builder::start(BuilderOptions::default());
    let name = unique("keys");
    let app = App::from_fixture("static-site");
    let ed25519 = Key::generate("ed25519", "ed");
    builder.authorize(&ed25519);
    app.push(&builder, &name, &ed25519).assert_ok();
    for kind in ["rsa", "ecdsa"] {
        let key = Key::generate(kind, kind);
        builder.authorize(&key);
        let refs = app.ls_remote(&builder, &name, &key);
        assert!(
            refs.status.success(),
            "{kind}: {}",
            String::from_utf8_lossy(&refs.stderr)
        );
        assert!(
            String::from_utf8_lossy(&refs.stdout).contains(&app.head()),
            "{kind}"
        );
    }
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn hostile_exec_requests_are_refused_and_create_nothing() {
    require_services!();
    let builder = Builder::start(BuilderOptions::default());
    let key = Key::generate("ed25519", "mallory");
    builder.authorize(&key);
    let long = format!("git-receive-pack '{}.git'", "a".repeat(64));
    let huge = format!("git-receive-pack '{}'", "b".repeat(2000));
    let commands = [
        "ls",
        "id",
        "/bin/sh -c id",
        "bash",
        "git-receive-pack",
        "git-receive-pack '../../etc.git'",
        "git-receive-pack '/../x.git'",
        "git-receive-pack 'a/b.git'",
        "git-receive-pack 'app.git'; touch /tmp/pwned",
        "git-receive-pack 'app.git' && id",
        "git-receive-pack '$(id).git'",
        "git-receive-pack '`id`.git'",
        "git-receive-pack 'app.git",
        "git-receive-pack ''",
        "git-receive-pack 'App.git'",
        "git-receive-pack 'my_app.git'",
        "git-receive-pack '-app.git'",
        "git-receive-pack 'a--b.git'",
        "git-upload-archive 'app.git'",
        "git-receive-pack\t'app.git'",
        "scp -t /tmp",
        "rsync --server . /",
        &long,
        &huge,
    ];
    for command in commands {
        let out = key.ssh(builder.ssh_port, &[], &[command]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command:?} succeeded");
        assert!(
            stderr.contains("deis-builder:"),
            "{command:?}: unclear message {stderr:?}"
        );
    }
    // An interactive shell, a subsystem and port forwarding are refused too.
    let shell = key.ssh(builder.ssh_port, &["-T"], &[]);
    assert!(!shell.status.success());
    assert!(String::from_utf8_lossy(&shell.stderr).contains("no shell access"));
    let sftp = key.ssh(builder.ssh_port, &["-s"], &["sftp"]);
    assert!(!sftp.status.success());
    assert!(String::from_utf8_lossy(&sftp.stderr).contains("not available"));
    let forward = key.ssh(
        builder.ssh_port,
        &["-W", &format!("127.0.0.1:{}", builder.http_port)],
        &[],
    );
    assert!(!forward.status.success());

    assert!(
        !builder.data_dir.path().join("repos").exists(),
        "a hostile request created a repository"
    );
    assert!(!std::path::Path::new("/tmp/pwned").exists());
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn only_master_or_main_deploys() {
    require_services!();
    let (builder, key) = Builder::with_developer();
    let app = App::from_fixture("static-site");
    let name = unique("refs");
    app.push_ref(&builder, &name, &key, "master:feature")
        .assert_rejected()
        .assert_says("git push deis HEAD:master");
    app.git(&["tag", "v1"]);
    app.push_ref(&builder, &name, &key, "v1")
        .assert_rejected()
        .assert_says("git push deis HEAD:master");
    app.push_ref(&builder, &name, &key, "master:main")
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
    app.push_ref(&builder, &name, &key, ":main")
        .assert_rejected()
        .assert_says("deleting main is not allowed here")
        .assert_says(
            "To deploy another commit instead, run: git push --force deis <commit>:master",
        );
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn concurrent_pushes() {
    require_services!();
    let (builder, key) = Builder::with_developer();
    let first = unique("busy");
    let second = unique("other");
    let app = App::from_fixture("procfile-wait");

    let push_a = app.push_held(&builder, &first, &key);
    // Same app while a push runs: it waits (the lock wait, 5 minutes by default), says so,
    // and lands after the running one. `tests/limits.rs` covers giving up.
    app.commit_file("NEXT", "next\n");
    let mut clash = app.push_live(&builder, &first, &key);
    clash.wait_for(&format!(
        "Another push to {first} is in progress; waiting up to 5m"
    ));
    // Another app builds at the same time.
    let push_b = app.push_held(&builder, &second, &key);
    assert_eq!(containers_of(&first).len(), 1);
    assert_eq!(containers_of(&second).len(), 1);
    release_waiting_build(&first);
    release_waiting_build(&second);
    push_a
        .finish()
        .assert_ok()
        .assert_says(&format!("Done, {first}:v1 deployed"));
    push_b
        .finish()
        .assert_ok()
        .assert_says(&format!("Done, {second}:v1 deployed"));
    clash.wait_for("waiting for /tmp/continue");
    release_waiting_build(&first);
    clash
        .finish()
        .assert_ok()
        .assert_says(&format!("Done, {first}:v2 deployed"));
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn killing_the_client_mid_build_cleans_up() {
    require_services!();
    let (builder, key) = Builder::with_developer();
    let app = App::from_fixture("procfile-wait");
    let name = unique("gone");

    let push = app.push_held(&builder, &name, &key);
    assert_eq!(containers_of(&name).len(), 1);
    push.kill();
    assert!(
        eventually(Duration::from_secs(5), || containers_of(&name).is_empty()),
        "build container still there 5 s after the client vanished"
    );
    assert!(builder.releases(&name).is_empty());

    // The lock is free: the next push runs and succeeds.
    let again = app.push_held(&builder, &name, &key);
    release_waiting_build(&name);
    again
        .finish()
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn a_crashed_builder_sweeps_its_leftovers_on_restart() {
    require_services!();
    let (mut builder, key) = Builder::with_developer();
    let app = App::from_fixture("procfile-wait");
    let name = unique("crash");

    let push = app.push_held(&builder, &name, &key);
    builder.crash_and_restart();
    push.finish().assert_rejected();
    assert!(
        containers_of(&name).is_empty(),
        "the restart did not sweep the build container"
    );
    assert!(builder
        .log()
        .contains("removed containers left by a previous run"));

    let again = app.push_held(&builder, &name, &key);
    release_waiting_build(&name);
    again
        .finish()
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn operator_host_keys_are_served() {
    require_services!();
    let keys = tempfile::tempdir().unwrap();
    let host_key = keys.path().join("host_key");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&host_key)
        .status()
        .unwrap();
    assert!(made.success());
    let builder = Builder::start(BuilderOptions {
        extra_args: vec!["--host-key".into(), host_key.display().to_string()],
        ..Default::default()
    });
    let scanned = std::process::Command::new("ssh-keyscan")
        .args([
            "-t",
            "ed25519",
            "-p",
            &builder.ssh_port.to_string(),
            "127.0.0.1",
        ])
        .output()
        .unwrap();
    let served = String::from_utf8_lossy(&scanned.stdout);
    let expected = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
    let expected_blob = expected.split_whitespace().nth(1).unwrap();
    assert!(
        served.contains(expected_blob),
        "served {served:?}, expected {expected_blob}"
    );
    assert!(!builder
        .data_dir
        .path()
        .join("ssh_host_ed25519_key")
        .exists());
}

/// README: `scripts/run.sh` serves SSH on 2222, a plain `deis-builder serve` on 2223.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn plain_serve_listens_on_the_port_the_readme_names() {
    require_services!();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains("a plain `deis-builder serve` listens on\n`0.0.0.0:2223`"));
    let run_sh =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/run.sh")).unwrap();
    assert!(run_sh.contains("ssh_addr=${DEIS_SSH_ADDR:-0.0.0.0:2222}"));
    // Port 2223 may be taken on a shared machine: the effective settings show the choice.
    let data_dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deis-builder"))
        .args(["serve", "--data-dir"])
        .arg(data_dir.path())
        .args([
            "--http-addr",
            "127.0.0.1:1",
            "--stack-image",
            "none/such:image",
        ])
        .env_remove("DEIS_BUILDER_SSH_ADDR")
        .env_remove("SSH_HOST_IP")
        .env_remove("SSH_HOST_PORT")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0.0.0.0:2223"), "{stderr}");
}

#[test]
fn invalid_settings_stop_start_up_with_one_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deis-builder"))
        .args([
            "serve",
            "--data-dir",
            "/nonexistent",
            "--ssh-addr",
            "not-an-address",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--ssh-addr"), "{stderr}");
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn sigterm_lets_a_running_push_finish() {
    require_services!();
    let (mut builder, key) = Builder::with_developer_and(BuilderOptions {
        extra_args: vec!["--builder-key".into(), BUILDER_KEY.into()],
        ..Default::default()
    });
    let app = App::from_fixture("procfile-wait");
    let name = unique("graceful");

    let push = app.push_held(&builder, &name, &key);
    builder.terminate();
    // New connections are refused at once; the running push is not cut.
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", builder.ssh_port)).is_err()
    }));
    // HTTP stays up through the drain: health says why it is down, metrics still answer,
    // new imports are refused.
    for path in ["/healthz", "/readiness"] {
        let (status, body) =
            http_get(builder.http_port, path).expect("HTTP answers while draining");
        assert_eq!(status, 503, "{path}: {body}");
        assert!(
            body.contains(r#""ssh":"error: shutting down""#),
            "{path}: {body}"
        );
    }
    let (status, metrics) =
        http_get(builder.http_port, "/metrics").expect("metrics while draining");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("deis_builder_builds_active 1"),
        "{metrics}"
    );
    let import = format!(r#"{{"app":"{name}","image":"busybox:latest"}}"#);
    let (status, body) = http_request(
        builder.http_port,
        "POST",
        "/v2/hooks/import/",
        &format!("X-Deis-Builder-Auth: {BUILDER_KEY}\r\nContent-Type: application/json\r\n"),
        &import,
    )
    .expect("import answer while draining");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("the builder is restarting"), "{body}");
    release_waiting_build(&name);
    push.finish()
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
    let status = builder.stop().expect("builder exit status");
    assert!(status.success(), "builder exited with {status}");
    assert!(containers_of(&name).is_empty());
}
