//! Limits and lifecycle, each through real git and OpenSSH clients against a real builder:
//! the build queue, the connection limit, the login timeout, auth attempts, the push size
//! limit, the lock wait, silent builds under a short idle timeout, and SIGTERM after the
//! grace period.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use util::*;

fn builder_with(args: &[&str]) -> (Builder, Key) {
    Builder::with_developer_and(BuilderOptions {
        extra_args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    })
}

/// A second working copy of `app` with one more commit: a fast-forward of `app`'s push.
fn descendant(app: &App, file: &str) -> App {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", app.dir.path().display()))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let next = App { dir };
    next.commit_file(file, "next\n");
    next
}

/// Reads from `stream` until end-of-file, for at most `limit`; true on end-of-file.
fn sees_eof(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            // Reset counts as dropped too; a timeout does not.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Every regular file below `dir`, as paths relative to it.
fn files_below(dir: &Path) -> Vec<String> {
    let out = Command::new("find")
        .arg(dir)
        .args(["-type", "f"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            l.strip_prefix(&dir.display().to_string())
                .unwrap_or(l)
                .to_owned()
        })
        .collect()
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn builds_over_the_limit_wait_in_line_and_are_told_their_place() {
    require_services!();
    let (builder, key) = builder_with(&["--max-builds", "1"]);
    let app = App::from_fixture("procfile-wait");
    let [a, b, c, d] = ["qa", "qb", "qc", "qd"].map(unique);

    let push_a = app.push_held(&builder, &a, &key);
    let mut push_b = app.push_live(&builder, &b, &key);
    push_b.wait_for("-----> Waiting for a build slot (position 1 in queue)");
    let mut push_c = app.push_live(&builder, &c, &key);
    push_c.wait_for("(position 2 in queue)");
    let mut push_d = app.push_live(&builder, &d, &key);
    push_d.wait_for("(position 3 in queue)");
    // Its container may already exist (created while the push was received), but only
    // the push holding the slot runs one.
    assert_eq!(
        running_containers_of(&b).len(),
        0,
        "a queued push is building"
    );

    // A client that goes away leaves the line; the ones behind it move up.
    push_c.kill();
    push_d.wait_for("(position 2 in queue)");

    // The running build ends: the first in line starts, the next moves up.
    release_waiting_build(&a);
    push_a
        .finish()
        .assert_ok()
        .assert_says(&format!("Done, {a}:v1 deployed"));
    push_b.wait_for("waiting for /tmp/continue");
    push_d.wait_for("(position 1 in queue)");
    release_waiting_build(&b);
    push_d.wait_for("waiting for /tmp/continue");
    release_waiting_build(&d);
    push_b
        .finish()
        .assert_ok()
        .assert_says(&format!("Done, {b}:v1 deployed"));
    push_d
        .finish()
        .assert_ok()
        .assert_says(&format!("Done, {d}:v1 deployed"));
    assert!(
        builder.releases(&c).is_empty(),
        "the push that left was built"
    );
    assert!(containers_of(&c).is_empty());
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn connections_over_the_limit_are_refused_until_one_ends() {
    require_services!();
    let (builder, key) = builder_with(&["--max-connections", "2"]);
    let port = builder.ssh_port;
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            // Read the server's banner: the connection is being served, not queued.
            let mut banner = [0u8; 4];
            stream.read_exact(&mut banner).unwrap();
            assert_eq!(&banner, b"SSH-");
            stream
        })
        .collect();

    let refused = key.ssh(port, &["-v"], &[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("too many connections"), "{stderr}");
    assert!(builder.log().contains("too many connections"));

    held.clear();
    let app = App::from_fixture("static-site");
    let name = unique("conn");
    // The slots free up once the server has seen the two sockets close.
    assert!(eventually(Duration::from_secs(10), || {
        let out = key.ssh(port, &[], &[]);
        String::from_utf8_lossy(&out.stderr).contains("no shell access")
    }));
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn unauthenticated_connections_are_dropped_after_the_login_timeout() {
    require_services!();
    let (builder, key) = builder_with(&["--login-timeout", "2s"]);
    let port = builder.ssh_port;
    // One says nothing at all, one sends its banner and stalls in the handshake.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stalled.write_all(b"SSH-2.0-idler\r\n").unwrap();
    assert!(
        sees_eof(&mut silent, Duration::from_secs(30)),
        "silent connection still open"
    );
    assert!(
        sees_eof(&mut stalled, Duration::from_secs(30)),
        "stalled connection still open"
    );
    assert!(builder.log().contains("not authenticated in time"));

    // An authenticated push outlives the login timeout.
    let app = App::from_fixture("procfile-wait");
    let name = unique("login");
    let push = app.push_held(&builder, &name, &key);
    std::thread::sleep(Duration::from_secs(4));
    release_waiting_build(&name);
    push.finish()
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn too_many_auth_attempts_close_the_connection() {
    require_services!();
    let (builder, key) = builder_with(&["--max-auth-attempts", "3"]);
    let strangers: Vec<Key> = (0..3)
        .map(|i| Key::generate("ed25519", &format!("stranger{i}")))
        .collect();
    let ssh = |keys: &[&Key]| {
        let mut cmd = Command::new("ssh");
        cmd.args(["-p", &builder.ssh_port.to_string()]);
        for k in keys {
            cmd.arg("-i").arg(&k.path);
        }
        cmd.args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "git@127.0.0.1",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap()
    };
    // The good key comes last: the limit is reached before it is tried.
    let mut keys: Vec<&Key> = strangers.iter().collect();
    keys.push(&key);
    let out = ssh(&keys);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("no shell access"), "{stderr}");
    assert!(
        stderr.contains("Too many authentication"),
        "expected the disconnect reason: {stderr}"
    );
    // Under the limit the same key is let in.
    let out = ssh(&[&strangers[0], &key]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no shell access"), "{stderr}");
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn a_push_over_the_size_limit_is_refused_and_nothing_is_stored() {
    require_services!();
    let (builder, key) = builder_with(&["--max-push-size", "256k"]);
    let app = App::from_fixture("static-site");
    let name = unique("big");
    let mut noise = vec![0u8; 2 << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut noise)
        .unwrap();
    std::fs::write(app.dir.path().join("noise.bin"), &noise).unwrap();
    app.git(&["add", "-A"]);
    app.git(&["commit", "-q", "-m", "noise"]);

    app.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says("larger than the limit of 256k (--max-push-size)");
    let refs = app.ls_remote(&builder, &name, &key);
    assert!(
        String::from_utf8_lossy(&refs.stdout).trim().is_empty(),
        "a ref moved: {refs:?}"
    );
    assert!(builder.releases(&name).is_empty());
    let stored = files_below(&builder.data_dir.path().join("storage"));
    assert!(
        !stored.iter().any(|f| f.contains(&name)),
        "objects stored: {stored:?}"
    );
    let objects = builder
        .data_dir
        .path()
        .join("repos")
        .join(format!("{name}.git"))
        .join("objects");
    let kept: Vec<String> = files_below(&objects)
        .into_iter()
        .filter(|f| !f.starts_with("/info/"))
        .collect();
    assert!(kept.is_empty(), "git kept objects of the push: {kept:?}");

    // A push under the limit to the same app goes through.
    let small = App::from_fixture("static-site");
    small
        .push(&builder, &name, &key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn a_second_push_waits_for_the_running_one_then_lands() {
    require_services!();
    let (builder, key) = builder_with(&["--lock-wait", "2m"]);
    let app = App::from_fixture("procfile-wait");
    let name = unique("wait");
    let first = app.push_held(&builder, &name, &key);
    let next = descendant(&app, "NEXT");
    let mut second = next.push_live(&builder, &name, &key);
    second.wait_for(&format!(
        "Another push to {name} is in progress; waiting up to 2m"
    ));
    release_waiting_build(&name);
    first
        .finish()
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
    second.wait_for("waiting for /tmp/continue");
    release_waiting_build(&name);
    second
        .finish()
        .assert_ok()
        .assert_says(&format!("Done, {name}:v2 deployed"));
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn a_second_push_gives_up_after_the_lock_wait() {
    require_services!();
    let (builder, key) = builder_with(&["--lock-wait", "2s"]);
    let app = App::from_fixture("procfile-wait");
    let name = unique("giveup");
    let first = app.push_held(&builder, &name, &key);
    descendant(&app, "NEXT")
        .push(&builder, &name, &key)
        .assert_rejected()
        .assert_says(&format!(
            "Another push to {name} is in progress; waiting up to 2s"
        ))
        .assert_says(&format!(
            "another push to {name} is in progress (waited 2s); try again when it has finished"
        ));
    // The running push was not disturbed.
    release_waiting_build(&name);
    first
        .finish()
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn a_silent_build_outlives_a_short_idle_timeout() {
    require_services!();
    let (builder, key) = builder_with(&["--idle-timeout", "3s"]);
    let app = App::from_fixture("procfile-wait");
    let name = unique("silent");
    // The fixture prints nothing while it waits: only keepalives cross the connection.
    let push = app.push_held(&builder, &name, &key);
    std::thread::sleep(Duration::from_secs(10));
    release_waiting_build(&name);
    push.finish()
        .assert_ok()
        .assert_says("continuing")
        .assert_says(&format!("Done, {name}:v1 deployed"));
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn sigterm_cancels_builds_after_the_grace_period_with_a_message() {
    require_services!();
    let (mut builder, key) = builder_with(&["--shutdown-grace", "3s", "--max-builds", "1"]);
    let app = App::from_fixture("procfile-wait");
    let running = unique("term");
    let queued = unique("termq");
    let push = app.push_held(&builder, &running, &key);
    let mut waiting = app.push_live(&builder, &queued, &key);
    waiting.wait_for("(position 1 in queue)");

    builder.terminate();
    // Queued: refused at once. Running: cancelled when the grace period is over.
    waiting
        .finish()
        .assert_rejected()
        .assert_says("the builder is restarting");
    push.finish()
        .assert_rejected()
        .assert_says("the builder is restarting: this push was not deployed");
    let status = builder.stop().expect("builder exit status");
    assert!(status.success(), "builder exited with {status}");
    assert!(
        eventually(Duration::from_secs(5), || containers_of(&running)
            .is_empty()),
        "the cancelled build's container is still there"
    );
    assert!(builder.releases(&running).is_empty());
    assert!(builder.releases(&queued).is_empty());
}
