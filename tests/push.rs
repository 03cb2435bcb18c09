//! A developer's `git push`, end to end: real git + OpenSSH client, real builder process,
//! real Docker engine, real S3 server.

mod util;

use std::time::Duration;

use deis_controller_double::{ControllerDouble, DoubleUser};
use serde_json::json;
use util::*;

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn buildpack_app_is_built_stored_in_s3_and_released() {
    require_services!();
    let bucket = unique("bkt");
    let (builder, key) = Builder::with_developer_and(BuilderOptions {
        storage: Storage::S3 {
            bucket: bucket.clone(),
        },
        ..Default::default()
    });
    let app = App::from_fixture("python-web");
    let name = unique("py");

    let first = app.push(&builder, &name, &key);
    first
        .assert_ok()
        .assert_says("remote: -----> Python app detected")
        .assert_says("remote:        Using Python")
        .assert_says("Procfile declares types -> web, worker")
        .assert_says(
            "remote:  !     Warning: .slugignore line 5: negation (\"!keep.log\") is not supported",
        )
        .assert_says("remote: Build complete.")
        .assert_says("remote: Launching App...")
        .assert_says(&format!("remote: Done, {name}:v1 deployed"));
    assert!(
        !first.output.contains(".slugignore: .slugignore"),
        "{}",
        first.output
    );
    let sha8 = app.head()[..8].to_owned();

    let s3 = S3::connect();
    let base = format!("home/{name}:git-{sha8}");
    let keys = s3.keys(&bucket);
    for expected in [
        format!("{base}/push/slug.tgz"),
        format!("{base}/push/Procfile"),
    ] {
        assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
    }
    // The source tarball is written once the push is over, a moment later.
    let source_key = format!("{base}/tar");
    assert!(
        eventually(Duration::from_secs(20), || s3
            .keys(&bucket)
            .contains(&source_key)),
        "{source_key} never stored: {:?}",
        s3.keys(&bucket)
    );
    let scratch = tempfile::tempdir().unwrap();
    let slug = s3.download(&bucket, &format!("{base}/push/slug.tgz"), scratch.path());
    let entries = slug_entries(&slug);
    for present in [
        "./app.py",
        "./Procfile",
        "./lib/util.py",
        "./lib/docs/keep.md",
        "./.profile.d/python.sh",
    ] {
        assert!(
            entries.iter().any(|e| e == present),
            "{present} missing from slug: {entries:?}"
        );
    }
    for absent in ["docs/guide.md", "debug.log", ".git/", ".slugignore"] {
        assert!(
            !entries.iter().any(|e| e.ends_with(absent)),
            "{absent} must not be in the slug: {entries:?}"
        );
    }
    let procfile = s3.download(&bucket, &format!("{base}/push/Procfile"), scratch.path());
    let procfile = std::fs::read_to_string(procfile).unwrap();
    assert!(procfile.contains("web: python3 app.py"), "{procfile}");
    let source = s3.download(&bucket, &format!("{base}/tar"), scratch.path());
    let out = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&source)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("app.py"));

    // A second push is the next release.
    app.commit_file("VERSION", "2\n");
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v2 deployed"));

    // The same commit pushed to another app gives a byte-identical slug.
    let twin = unique("twin");
    app.push(&builder, &twin, &key)
        .assert_ok()
        .assert_says(&format!("Done, {twin}:v1 deployed"));
    let sha8 = app.head()[..8].to_owned();
    let a = s3.download(
        &bucket,
        &format!("home/{name}:git-{sha8}/push/slug.tgz"),
        scratch.path(),
    );
    let b = s3.download(
        &bucket,
        &format!("home/{twin}:git-{sha8}/push/slug.tgz"),
        scratch.path(),
    );
    assert_eq!(
        sha256_file(&a),
        sha256_file(&b),
        "slugs of the same commit differ"
    );
    assert!(
        containers_of(&name).is_empty() && containers_of(&twin).is_empty(),
        "build containers left behind"
    );
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn build_output_arrives_while_the_build_runs() {
    require_services!();
    let (builder, key) = Builder::with_developer();
    let app = App::from_fixture("procfile-wait");
    let name = unique("live");

    let mut push = app.push_live(&builder, &name, &key);
    push.wait_for("-----> Procfile app detected");
    push.wait_for("waiting for /tmp/continue");
    // The build is still running (held by the fixture) and the client already has its lines.
    let running = containers_of(&name);
    assert_eq!(
        running.len(),
        1,
        "expected exactly one running build container"
    );
    release_waiting_build(&name);
    let pushed = push.finish();
    pushed
        .assert_ok()
        .assert_says("continuing")
        .assert_says(&format!("Done, {name}:v1 deployed"));
    assert!(eventually(Duration::from_secs(5), || containers_of(&name).is_empty()));
    assert_eq!(builder.releases(&name), vec!["v1.json"]);
    assert!(builder
        .storage_path(&format!(
            "home/{name}:git-{}/push/slug.tgz",
            &app.head()[..8]
        ))
        .is_file());
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn second_buildpack_and_bad_apps() {
    require_services!();
    let (builder, key) = Builder::with_developer();

    let name = unique("static");
    App::from_fixture("static-site")
        .push(&builder, &name, &key)
        .assert_ok()
        .assert_says("-----> Static HTML app detected")
        .assert_says("Default types for buildpack -> web")
        .assert_says(&format!("Done, {name}:v1 deployed"));

    let name = unique("nomatch");
    let app = App::from_fixture("no-match");
    app.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says("-----> Unable to select a buildpack")
        .assert_says("pre-receive hook declined");
    assert!(builder.releases(&name).is_empty());

    let name = unique("badproc");
    App::from_fixture("bad-procfile")
        .push(&builder, &name, &key)
        .assert_rejected()
        .assert_says("Procfile line")
        .assert_says("duplicate");
    assert!(builder.releases(&name).is_empty());
    let sha8 = &app.head()[..8];
    assert!(!builder
        .storage_path(&format!("home/{name}:git-{sha8}/push/slug.tgz"))
        .exists());
    assert!(containers_of(&name).is_empty());
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn failing_compile_rejects_the_push_and_leaves_nothing() {
    require_services!();
    let bucket = unique("bkt");
    let (builder, key) = Builder::with_developer_and(BuilderOptions {
        storage: Storage::S3 {
            bucket: bucket.clone(),
        },
        ..Default::default()
    });
    let app = App::from_fixture("failing");
    let name = unique("fail");

    app.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says("SyntaxError")
        .assert_says("Build failed")
        .assert_says("[remote rejected] master -> master (pre-receive hook declined)");
    let refs = app.ls_remote(&builder, &name, &key);
    assert!(refs.status.success());
    assert!(
        String::from_utf8_lossy(&refs.stdout).trim().is_empty(),
        "ref moved: {:?}",
        refs
    );
    assert!(builder.releases(&name).is_empty(), "a release was cut");
    // The app's lease record (released) is all that stays: it is no artifact.
    let keys = S3::connect().keys(&bucket);
    assert!(
        !keys
            .iter()
            .any(|k| k.contains(&name) && !k.starts_with("builder/leases/")),
        "objects left behind: {keys:?}"
    );
    assert!(containers_of(&name).is_empty(), "container left behind");
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn deis_controller_gets_the_v2_wire_format() {
    require_services!();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let double = runtime.block_on(ControllerDouble::start("builder-secret"));
    let key = Key::generate("rsa", "ignored-comment");
    let name = unique("deis");
    double.add_user(DoubleUser {
        username: "alice".into(),
        fingerprint: key.fingerprint.clone(),
        apps: vec![name.clone()],
    });
    double.set_config(&name, json!({"GREETING": "hello", "PORT": 5000}));
    let bucket = unique("bkt");
    let builder = Builder::start(BuilderOptions {
        storage: Storage::S3 {
            bucket: bucket.clone(),
        },
        controller: ControllerMode::Deis {
            url: double.url(),
            key: "builder-secret".into(),
        },
        ..Default::default()
    });
    let app = App::from_fixture("python-web");
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says(&format!("Done, {name}:v1 deployed"));
    let sha = app.head();

    let requests = double.requests();
    let key_lookup = requests
        .iter()
        .find(|r| r.path == format!("/v2/hooks/key/{}", key.fingerprint))
        .expect("key lookup");
    assert_eq!(key_lookup.method, "GET");
    let config = requests
        .iter()
        .find(|r| r.path == "/v2/hooks/config/")
        .expect("config call");
    assert_eq!(
        config.body,
        json!({"receive_user": "alice", "receive_repo": name})
    );
    for request in &requests {
        assert_eq!(
            request
                .headers
                .get("x-deis-builder-auth")
                .map(String::as_str),
            Some("builder-secret")
        );
        assert_eq!(
            request.headers.get("user-agent").map(String::as_str),
            Some("deis-builder")
        );
    }
    let builds = double.builds();
    assert_eq!(builds.len(), 1);
    assert_eq!(
        builds[0],
        json!({
            "receive_user": "alice",
            "receive_repo": name,
            "sha": &sha[..8],
            "image": format!("home/{name}:git-{}/push/slug.tgz", &sha[..8]),
            "procfile": {"web": "python3 app.py", "worker": "python3 -c 'print(\"worker ran\")'"},
            "dockerfile": "",
        })
    );

    // A 403 from the controller reaches the developer and rejects the push.
    double.fail_builds_with(
        403,
        json!({"detail": "You do not have permission to perform this action."}),
    );
    let sha = app.commit_file("CHANGE", "x\n");
    app.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says("You do not have permission to perform this action.");
    let keys = S3::connect().keys(&bucket);
    assert!(
        !keys.iter().any(|k| k.contains(&sha[..8])),
        "objects of the rejected push left: {keys:?}"
    );

    // A user without the app is refused before anything runs.
    let other = unique("other");
    app.push(&builder, &other, &key)
        .assert_rejected()
        .assert_says(&format!("has no access to app {other}"));
}
