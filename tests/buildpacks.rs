//! Buildpack compatibility and the build cache, through real git+ssh pushes: the cache,
//! BUILDPACK_URL (git refs and tarballs, served from a local HTTP server), `.buildpacks`,
//! hooks and ENV_DIR, SSH_KEY redaction, the compile timeout and slug size limits.

mod util;

use std::process::Command;
use std::time::{Duration, Instant};

use util::*;

fn position(output: &str, text: &str) -> usize {
    output
        .find(text)
        .unwrap_or_else(|| panic!("expected {text:?} in:\n{output}"))
}

#[track_caller]
fn assert_in_order(output: &str, texts: &[&str]) {
    let positions: Vec<usize> = texts.iter().map(|t| position(output, t)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "expected {texts:?} in this order in:\n{output}"
    );
}

fn purge_cache(builder: &Builder, app: &str, storage_args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_deis-builder"))
        .arg("purge-cache")
        .arg(app)
        .arg("--data-dir")
        .arg(builder.data_dir.path())
        .args(storage_args)
        .env_remove("DEIS_CONTROLLER_SERVICE_HOST")
        .output()
        .unwrap()
}

/// Acceptance 1: fill, reuse, corruption, purge and DEIS_DISABLE_CACHE.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn build_cache_is_reused_discarded_when_corrupt_purged_and_disabled() {
    require_services!();
    let server = StaticServer::start();
    server.publish_buildpack_repo("slow-cache", "slow-cache");
    let (builder, key) = Builder::with_developer();
    let app = App::from_fixture("cached-deps");
    let name = unique("cache");
    let buildpack = server.url("slow-cache.git");
    set_app_config(
        &builder,
        &name,
        &[("BUILDPACK_URL", &buildpack), ("DEP_ROUNDS", "1000000")],
    );
    let cache_object = builder.storage_path(&format!("home/{name}/cache/cache.tgz"));

    let started = Instant::now();
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says("remote: -----> Fetching custom buildpack")
        .assert_says("remote: -----> Building dependencies")
        .assert_says("remote: -----> Cache saved");
    let first = started.elapsed();
    assert!(cache_object.is_file(), "the first push must fill the cache");

    app.commit_file("VERSION", "2\n");
    let started = Instant::now();
    let second = app.push(&builder, &name, &key);
    second
        .assert_ok()
        .assert_says("remote: -----> Restoring cache")
        .assert_says("remote: -----> Using cached dependencies")
        .assert_says("remote:        cache hit: alpha beta gamma")
        .assert_says("remote: -----> Cache unchanged");
    assert!(!second.output.contains("Building dependencies"));
    eprintln!(
        "first push {:.1}s, second push {:.1}s (cache reused)",
        first.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    // A corrupted cache object is discarded with a warning; the build goes on.
    std::fs::write(&cache_object, b"definitely not a gzip'd tar").unwrap();
    app.commit_file("VERSION", "3\n");
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says("remote:  !     Warning: the build cache was unreadable")
        .assert_says("remote: -----> Building dependencies")
        .assert_says("remote: -----> Cache saved");

    // The purge command deletes it (same settings as serve).
    let purged = purge_cache(&builder, &name, &[]);
    assert!(
        purged.status.success(),
        "purge-cache failed: {}",
        String::from_utf8_lossy(&purged.stderr)
    );
    assert!(!cache_object.exists(), "purge-cache must delete the cache");
    let said = String::from_utf8_lossy(&purged.stdout);
    assert!(
        said.contains(&format!("Build cache of {name} purged")),
        "{said}"
    );
    // Nothing left to purge: it says so, and a mistyped data dir is not created.
    let again = purge_cache(&builder, &name, &[]);
    assert!(again.status.success());
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(
        said.contains(&format!("No build cache for {name}")),
        "{said}"
    );
    let typo = builder.data_dir.path().join("typo-dir");
    let mistyped = Command::new(env!("CARGO_BIN_EXE_deis-builder"))
        .args(["purge-cache", &name, "--data-dir"])
        .arg(&typo)
        .env_remove("DEIS_CONTROLLER_SERVICE_HOST")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&mistyped.stdout);
    assert!(
        said.contains(&format!(
            "No build cache for {name}: there is no local storage at"
        )),
        "{said}{}",
        String::from_utf8_lossy(&mistyped.stderr)
    );
    assert!(!typo.exists(), "purge-cache created {}", typo.display());
    app.commit_file("VERSION", "4\n");
    let after_purge = app.push(&builder, &name, &key);
    after_purge
        .assert_ok()
        .assert_says("remote: -----> Building dependencies");
    assert!(!after_purge.output.contains("Restoring cache"));
    assert!(cache_object.is_file());

    // DEIS_DISABLE_CACHE deletes the cache and builds without one.
    set_app_config(
        &builder,
        &name,
        &[
            ("BUILDPACK_URL", &buildpack),
            ("DEP_ROUNDS", "1000000"),
            ("DEIS_DISABLE_CACHE", "1"),
        ],
    );
    app.commit_file("VERSION", "5\n");
    let disabled = app.push(&builder, &name, &key);
    disabled
        .assert_ok()
        .assert_says("remote: -----> Cache disabled by DEIS_DISABLE_CACHE")
        .assert_says("remote: -----> Building dependencies");
    assert!(!disabled.output.contains("Cache saved"));
    assert!(
        !cache_object.exists(),
        "DEIS_DISABLE_CACHE must delete the cache"
    );
}

/// The purge command works against S3 too.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn purge_cache_deletes_the_cache_from_s3() {
    require_services!();
    let server = StaticServer::start();
    server.publish_buildpack_repo("slow-cache", "slow-cache");
    let bucket = unique("cache");
    let (builder, key) = Builder::with_developer_and(BuilderOptions {
        storage: Storage::S3 {
            bucket: bucket.clone(),
        },
        ..Default::default()
    });
    let app = App::from_fixture("cached-deps");
    let name = unique("s3cache");
    set_app_config(
        &builder,
        &name,
        &[
            ("BUILDPACK_URL", &server.url("slow-cache.git")),
            ("DEP_ROUNDS", "1000"),
        ],
    );
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says("remote: -----> Cache saved");
    let s3 = S3::connect();
    let cache_keys = [
        format!("home/{name}/cache/cache.tgz"),
        format!("home/{name}/cache/cache.sha256"),
    ];
    let keys = s3.keys(&bucket);
    for expected in &cache_keys {
        assert!(keys.contains(expected), "{expected} missing from {keys:?}");
    }
    let purged = purge_cache(
        &builder,
        &name,
        &[
            "--storage".into(),
            format!("s3://{bucket}"),
            "--s3-endpoint".into(),
            s3_endpoint(),
        ],
    );
    assert!(
        purged.status.success(),
        "purge-cache failed: {}",
        String::from_utf8_lossy(&purged.stderr)
    );
    let keys = s3.keys(&bucket);
    for gone in &cache_keys {
        assert!(!keys.contains(gone), "{gone} still in {keys:?}");
    }
    assert!(
        keys.iter().any(|k| k.ends_with("/push/slug.tgz")),
        "purge must leave slugs alone: {keys:?}"
    );
}

/// Acceptance 2: BUILDPACK_URL with a branch, a tag, a commit and a tarball; bad URL and ref.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn buildpack_url_selects_branches_tags_commits_and_tarballs() {
    require_services!();
    let server = StaticServer::start();
    let repo = server.publish_buildpack_repo("versioned", "versioned");
    repo.git(&["tag", "v1"]);
    repo.git(&["branch", "feature"]);
    repo.write("VERSION", "main-2\n");
    let second = repo.commit("main 2");
    repo.write("VERSION", "main-3\n");
    repo.commit("main 3");
    repo.git(&["checkout", "-q", "feature"]);
    repo.write("VERSION", "feature-1\n");
    repo.commit("feature 1");
    repo.git(&["checkout", "-q", "main"]);
    repo.publish();
    server.publish_buildpack_tarball("versioned-tarball", "versioned");

    let (builder, key) = Builder::with_developer();
    let app = App::from_fixture("multi");
    let name = unique("bpurl");
    let git_url = server.url("versioned.git");
    let cases = [
        (git_url.clone(), "main-3"),
        (format!("{git_url}#feature"), "feature-1"),
        (format!("{git_url}#v1"), "main-1"),
        (format!("{git_url}#{second}"), "main-2"),
        (format!("{git_url}#{}", &second[..10]), "main-2"),
        (server.url("versioned-tarball.tgz"), "main-1"),
    ];
    for (round, (url, version)) in cases.iter().enumerate() {
        set_app_config(&builder, &name, &[("BUILDPACK_URL", url)]);
        app.commit_file("ROUND", &format!("{round}\n"));
        app.push(&builder, &name, &key)
            .assert_ok()
            .assert_says("remote: -----> Fetching custom buildpack")
            .assert_says(&format!("remote:        {url}"))
            .assert_says("remote: -----> Versioned app detected")
            .assert_says(&format!("remote: -----> Buildpack version {version} "))
            .assert_says("Default types for buildpack -> web");
    }

    let failures = [
        (
            format!("{git_url}#no-such-branch"),
            "has no branch, tag or commit \"no-such-branch\"",
        ),
        (server.url("missing.git"), "cannot fetch buildpack"),
        (server.url("missing.tgz"), "cannot fetch buildpack"),
        ("file:///etc".to_owned(), "invalid buildpack URL"),
    ];
    for (round, (url, message)) in failures.iter().enumerate() {
        set_app_config(&builder, &name, &[("BUILDPACK_URL", url)]);
        app.commit_file("ROUND", &format!("bad {round}\n"));
        app.push(&builder, &name, &key)
            .assert_rejected()
            .assert_says(" !     Build failed: ")
            .assert_says(message);
    }
    assert_eq!(builder.releases(&name).len(), cases.len());
}

/// Bytes of the regular files under `dir` (links not followed).
fn tree_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => tree_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// A small gzip that unpacks past `--buildpack-max-size` is stopped while it unpacks: the
/// push is rejected naming the URL and the limit, and none of it stays in the data dir.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn an_oversized_buildpack_tarball_is_refused_without_filling_the_disk() {
    require_services!();
    const LIMIT_MIB: u64 = 8;
    // 32 MiB of zeros in 1 MiB files: a tarball of a few dozen KiB.
    let staging = tempfile::tempdir().unwrap();
    let root = staging.path().join("zeros-1.0");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::write(root.join("bin/compile"), "#!/bin/sh\n").unwrap();
    for i in 0..32 {
        std::fs::write(root.join(format!("zeros-{i:02}")), vec![0u8; 1 << 20]).unwrap();
    }
    let server = StaticServer::start();
    let tarball = server.root.path().join("zeros.tgz");
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(staging.path())
        .arg("zeros-1.0")
        .status()
        .unwrap();
    assert!(status.success());
    let compressed = std::fs::metadata(&tarball).unwrap().len();
    assert!(compressed < 1 << 20, "the tarball is {compressed} bytes");

    let (builder, key) = Builder::with_developer_and(BuilderOptions {
        extra_args: vec!["--buildpack-max-size".into(), format!("{LIMIT_MIB}m")],
        ..Default::default()
    });
    let app = App::from_fixture("multi");
    let name = unique("bigbp");
    let url = server.url("zeros.tgz");
    set_app_config(&builder, &name, &[("BUILDPACK_URL", &url)]);
    let before = tree_bytes(builder.data_dir.path());
    app.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says("remote: -----> Fetching custom buildpack")
        .assert_says(&format!(
            " !     Build failed: buildpack {url} was refused: it unpacks to more than \
             {LIMIT_MIB}.0M, the limit (--buildpack-max-size)"
        ));
    assert!(builder.releases(&name).is_empty());

    // The push's workspace (download, partial unpack) is gone, and the data dir did not
    // grow by more than the push's log lines and git's bookkeeping.
    let work = builder.data_dir.path().join("tmp");
    let empty = || match std::fs::read_dir(&work) {
        Ok(mut entries) => entries.next().is_none(),
        Err(_) => true,
    };
    assert!(
        eventually(Duration::from_secs(10), empty),
        "a push workspace stayed in DATA_DIR/tmp"
    );
    let after = tree_bytes(builder.data_dir.path());
    assert!(
        after < before + (1 << 20),
        "the data dir grew from {before} to {after} bytes"
    );
}

/// Acceptance 3: three buildpacks from `.buildpacks`, run in order.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn buildpacks_file_runs_each_buildpack_in_order() {
    require_services!();
    let server = StaticServer::start();
    server.publish_buildpack_repo("tool", "multi-tool");
    server.publish_buildpack_repo("user", "multi-user");
    server.publish_buildpack_tarball("release", "multi-release");
    let (builder, key) = Builder::with_developer();
    let app = App::from_fixture("multi");
    app.commit_file(
        ".buildpacks",
        &format!(
            "# tools first\n{}#main\n{}\n\n{}\n",
            server.url("tool.git"),
            server.url("user.git"),
            server.url("release.tgz")
        ),
    );
    let name = unique("multi");
    let pushed = app.push(&builder, &name, &key);
    pushed.assert_ok();
    assert_in_order(
        &pushed.output,
        &[
            &format!(
                "remote: =====> Downloading Buildpack: {}",
                server.url("tool.git")
            ),
            &format!(
                "remote: =====> Downloading Buildpack: {}",
                server.url("user.git")
            ),
            &format!(
                "remote: =====> Downloading Buildpack: {}",
                server.url("release.tgz")
            ),
            "remote: =====> Detected Framework: Tool maker",
            "remote:        installed greet",
            "remote: =====> Detected Framework: Tool user",
            "remote:        hello from greet, buildpack-two",
            "remote: =====> Detected Framework: Process types",
            "remote:        Default types for buildpack -> clock, web",
        ],
    );
}

/// Acceptance 4: hooks in order, ENV_DIR, the compile environment, SSH_KEY never shown.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn hooks_env_dir_and_ssh_key_redaction() {
    require_services!();
    let server = StaticServer::start();
    server.publish_buildpack_repo("probe", "env-probe");
    let (builder, key) = Builder::with_developer();
    let app = App::from_fixture("hooks-env");
    let name = unique("hooks");
    let ssh_key = Key::generate("ed25519", "deploy");
    let private = std::fs::read_to_string(&ssh_key.path).unwrap();
    let encoded = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&private)
    };
    set_app_config(
        &builder,
        &name,
        &[
            ("BUILDPACK_URL", &server.url("probe.git")),
            ("SECRET_TOKEN", "tok-123"),
            ("SSH_KEY", &encoded),
        ],
    );
    let pushed = app.push(&builder, &name, &key);
    pushed.assert_ok();
    let output = &pushed.output;
    assert_in_order(
        output,
        &[
            "remote: -----> Running pre-compile hook",
            "remote:        pre-compile hook ran",
            "remote: -----> Compile environment",
            "remote: -----> Running post-compile hook",
            "remote:        post-compile hook ran",
        ],
    );
    pushed
        .assert_says("remote:        ENV_DIR files: BUILDPACK_URL SECRET_TOKEN SSH_KEY ")
        .assert_says("remote:        HOME=/app ")
        .assert_says("remote:        APP_DIR=/app ")
        .assert_says("remote:        STACK=deis-bookworm ")
        .assert_says(&format!("remote:        SOURCE_VERSION={} ", app.head()))
        .assert_says("remote:        GIT_SSH_COMMAND=ssh -F /build/ssh/config ")
        .assert_says("[redacted]");
    assert!(!output.contains("LEAKED"), "config vars leaked:\n{output}");
    assert!(!output.contains(&encoded), "SSH_KEY printed:\n{output}");
    for line in private.lines().filter(|l| !l.starts_with("-----")) {
        assert!(
            !output.contains(line),
            "a line of the key was printed:\n{output}"
        );
    }
    assert!(
        !builder.log().contains(&encoded),
        "SSH_KEY in the builder log"
    );
}

/// Acceptance 5: compile timeout and slug size limits.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn compile_timeout_and_slug_size_limits() {
    require_services!();
    let (builder, key) = Builder::with_developer_and(BuilderOptions {
        extra_args: vec![
            "--build-timeout".into(),
            "15s".into(),
            "--slug-warn-size".into(),
            "512k".into(),
            "--slug-max-size".into(),
            "1m".into(),
            "--buildpack-fetch-timeout".into(),
            "3s".into(),
        ],
        ..Default::default()
    });

    let slow = App::from_fixture("slow-compile");
    let name = unique("slow");
    slow.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says("sleeping past the build timeout")
        .assert_says(" !     Build failed: the build took longer than 15s and was stopped");
    assert!(
        eventually(Duration::from_secs(20), || containers_of(&name).is_empty()),
        "the timed-out build container must be removed"
    );
    assert!(builder.releases(&name).is_empty());

    let big = App::from_fixture("big-slug");
    let name = unique("big");
    big.push(&builder, &name, &key)
        .assert_ok()
        .assert_says("remote: -----> Compiled slug size is 70")
        .assert_says("remote:  !     Warning: the slug is 70")
        .assert_says("over the recommended 512.0K");
    big.commit_file("size-kib", "3000\n");
    let sha8 = big.head()[..8].to_owned();
    big.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says(" !     Build failed: the compiled slug is 2.9M, over the limit of 1.0M");
    assert!(
        !builder
            .storage_path(&format!("home/{name}:git-{sha8}/push/slug.tgz"))
            .exists(),
        "an oversize slug must not be stored"
    );
    assert_eq!(builder.releases(&name).len(), 1);

    // A buildpack server that never answers: the fetch is stopped at its limit.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let app = App::from_fixture("multi");
    let name = unique("hang");
    let url = format!("http://127.0.0.1:{port}/buildpack.git");
    set_app_config(&builder, &name, &[("BUILDPACK_URL", &url)]);
    app.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says(&format!(
            " !     Build failed: fetching buildpack {url} took longer than 3s and was stopped"
        ));
}

/// SSH_KEY also serves the host-side fetch of a private buildpack over ssh: here the
/// buildpack lives in the builder's own git server, readable only with an authorised key.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn private_buildpack_is_fetched_over_ssh_with_ssh_key() {
    require_services!();
    let (builder, key) = Builder::with_developer();
    let buildpack = App::from_fixture("multi");
    for file in ["detect", "compile", "release"] {
        let from = buildpack_fixture("versioned").join("bin").join(file);
        let to = buildpack.dir.path().join("bin").join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
    std::fs::write(buildpack.dir.path().join("VERSION"), "private-1\n").unwrap();
    // The repository must build to be pushed; the Procfile buildpack accepts it.
    buildpack.commit_file("Procfile", "web: sleep 1\n");
    let repo = unique("privbp");
    buildpack.push(&builder, &repo, &key).assert_ok();

    let app = App::from_fixture("cached-deps");
    let name = unique("private");
    let url = format!("ssh://git@127.0.0.1:{}/{repo}.git", builder.ssh_port);
    let private = std::fs::read_to_string(&key.path).unwrap();
    let encoded = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&private)
    };
    set_app_config(&builder, &name, &[("BUILDPACK_URL", &url)]);
    app.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says("cannot fetch buildpack ssh://git@127.0.0.1");

    set_app_config(
        &builder,
        &name,
        &[("BUILDPACK_URL", &url), ("SSH_KEY", &encoded)],
    );
    app.commit_file("ROUND", "2\n");
    let pushed = app.push(&builder, &name, &key);
    pushed
        .assert_ok()
        .assert_says("remote: -----> Buildpack version private-1");
    assert!(!pushed.output.contains(&encoded));
}

/// The contents of `path` in a slug.
fn slug_file(slug: &std::path::Path, path: &str) -> String {
    let out = Command::new("tar")
        .arg("-xzOf")
        .arg(slug)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{path} not in the slug: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Git submodules are fetched at the commit the push pins them to and land in the slug;
/// one that cannot be fetched rejects the push naming it.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn submodules_are_part_of_the_build() {
    require_services!();
    let server = StaticServer::start();
    let library = server.publish_buildpack_repo("library", "versioned");
    library.write("LIBRARY", "pinned\n");
    library.commit("the pinned commit");
    library.publish();
    let (builder, key) = Builder::with_developer();
    let app = App::from_fixture("static-site");
    app.git(&[
        "submodule",
        "add",
        "-q",
        &server.url("library.git"),
        "vendor/library",
    ]);
    app.git(&["commit", "-q", "-m", "add a submodule"]);
    // The library moves on after the app pinned it: the build must use the pinned commit.
    library.write("LIBRARY", "newer\n");
    library.commit("a later commit");
    library.publish();

    let name = unique("submod");
    let pushed = app.push(&builder, &name, &key);
    pushed
        .assert_ok()
        .assert_says("remote: -----> Fetching git submodules")
        .assert_says(&format!(
            "remote:        vendor/library at {} from {}",
            &library.git(&["rev-parse", "HEAD~1"])[..8],
            server.url("library.git")
        ))
        .assert_says(&format!("Done, {name}:v1 deployed"));
    let sha8 = &app.head()[..8];
    let slug = builder.storage_path(&format!("home/{name}:git-{sha8}/push/slug.tgz"));
    assert_eq!(slug_file(&slug, "./vendor/library/LIBRARY"), "pinned\n");
    assert!(
        !slug_entries(&slug)
            .iter()
            .any(|e| e.starts_with("./vendor/library/.git")),
        "the submodule's .git stays out"
    );

    // Moved to an address nobody answers: the push is rejected, naming the submodule.
    let gone = format!("http://127.0.0.1:{}/library.git", free_port());
    app.git(&[
        "config",
        "-f",
        ".gitmodules",
        "submodule.vendor/library.url",
        &gone,
    ]);
    app.git(&["commit", "-q", "-am", "the library moved"]);
    app.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says(&format!(
            "cannot fetch submodule vendor/library from {gone}"
        ));
    assert_eq!(builder.releases(&name).len(), 1, "nothing new is released");
}

/// A full commit id in `BUILDPACK_URL` (and a submodule pin) is exact: a branch named like
/// the commit must not put another commit's code into the build.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn a_branch_named_like_the_requested_commit_is_refused() {
    require_services!();
    let server = StaticServer::start();
    let repo = server.publish_buildpack_repo("lookalike", "versioned");
    let wanted = repo.git(&["rev-parse", "HEAD"]);
    repo.write("VERSION", "impostor\n");
    repo.commit("not the commit asked for");
    repo.git(&["branch", &wanted]);
    repo.publish();

    let (builder, key) = Builder::with_developer();
    let app = App::from_fixture("multi");
    let name = unique("lookalike");
    let url = format!("{}#{wanted}", server.url("lookalike.git"));
    set_app_config(&builder, &name, &[("BUILDPACK_URL", &url)]);
    let pushed = app.push(&builder, &name, &key);
    pushed
        .assert_rejected()
        .assert_says(&format!("not the commit {wanted} it was asked for"));
    assert!(!pushed.output.contains("impostor"), "{}", pushed.output);
    assert!(builder.releases(&name).is_empty());
}

/// A hostile build plants symlinks to the builder's host in `/app` and in its cache. With
/// files shared with a local engine (`auto`) as with copies (`copy`), the builder archives
/// them as symlinks and never reads or writes through them: the slug holds links, not the
/// host file, and restoring the cache on the next push writes nothing outside.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn planted_symlinks_never_lead_the_builder_outside_the_build() {
    require_services!();
    let server = StaticServer::start();
    server.publish_buildpack_repo("planted", "planted-links");
    let host = tempfile::tempdir().unwrap();
    let secret = format!("host-secret-{}", unique("s"));
    let target = host.path().join("secret.txt");
    std::fs::write(&target, &secret).unwrap();
    let outside = host.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    for mode in ["auto", "copy"] {
        let (builder, key) = Builder::with_developer_and(BuilderOptions {
            extra_args: vec!["--build-files".into(), mode.into()],
            ..BuilderOptions::default()
        });
        let app = App::from_fixture("static-site");
        let name = unique("planted");
        set_app_config(
            &builder,
            &name,
            &[
                ("BUILDPACK_URL", &server.url("planted.git")),
                ("PLANT_TARGET", target.to_str().unwrap()),
                ("PLANT_OUTSIDE", outside.to_str().unwrap()),
            ],
        );
        app.push(&builder, &name, &key)
            .assert_ok()
            .assert_says("remote: -----> planted");
        // The second push restores the cache with its links, then plants them again.
        app.commit_file("again.txt", "again\n");
        app.push(&builder, &name, &key)
            .assert_ok()
            .assert_says("remote: -----> the cache came back with its links");

        let sha8 = &app.head()[..8];
        let slug = builder.storage_path(&format!("home/{name}:git-{sha8}/push/slug.tgz"));
        let listing = Command::new("tar")
            .arg("-tvzf")
            .arg(&slug)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        for link in ["./leak-file", "./leak-root", "./out"] {
            assert!(
                listing
                    .lines()
                    .any(|line| line.starts_with('l') && line.contains(link)),
                "{mode}: {link} is not a symlink in the slug:\n{listing}"
            );
        }
        let contents = Command::new("tar")
            .arg("-xzOf")
            .arg(&slug)
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&contents.stdout).contains(&secret),
            "{mode}: the host file's content reached the slug"
        );
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "{mode}: the builder wrote outside the build"
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), secret);
    }
}
