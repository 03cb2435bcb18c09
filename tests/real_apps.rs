//! Real apps with their dependencies, through real pushes: a Flask app (packages from the
//! package index), an Express app (packages from the npm registry) and a Go app (vendored
//! modules, no network) build with the built-in buildpacks on the stack's build image, then
//! run from their slugs in the slug runner image (the stack's run image: runtimes, no
//! compilers) and answer HTTP. A second push reuses the dependency cache; bad input is
//! rejected with the tool's own error and one advice line.
//!
//! Networked builds use the host network and the host's CA bundle (`--build-ca-file`):
//! registries may only be reachable through an intercepting proxy whose CA is in it.
//! `DEIS_IT_BUILD_CA_FILE` names another bundle.

mod util;

use std::path::Path;
use std::time::{Duration, Instant};

use util::*;

fn ca_bundle() -> String {
    std::env::var("DEIS_IT_BUILD_CA_FILE")
        .unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".to_owned())
}

/// A builder whose builds reach the registries (host network, the host's CA bundle).
fn networked_builder() -> (Builder, Key) {
    Builder::with_developer_and(BuilderOptions {
        extra_args: vec![
            "--build-network".into(),
            "host".into(),
            "--build-ca-file".into(),
            ca_bundle(),
        ],
        ..Default::default()
    })
}

/// Pushes and returns the push and how long it took.
fn timed_push(app: &App, builder: &Builder, name: &str, key: &Key) -> (Pushed, Duration) {
    let started = Instant::now();
    let pushed = app.push(builder, name, key);
    (pushed, started.elapsed())
}

/// The ` !     ` lines a buildpack printed (the driver's and the builder's own closing
/// lines left out).
fn advice_lines(output: &str) -> Vec<&str> {
    output
        .lines()
        .map(|line| line.strip_prefix("remote: ").unwrap_or(line))
        .filter(|line| line.starts_with(" !     "))
        .filter(|line| {
            !line.contains("Push rejected, failed to compile") && !line.contains("Build failed")
        })
        .collect()
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn flask_app_builds_from_the_package_index_runs_and_reuses_its_cache() {
    require_services!();
    let (builder, key) = networked_builder();
    let app = App::from_fixture("flask-web");
    let name = unique("flask");

    let (first, first_took) = timed_push(&app, &builder, &name, &key);
    first
        .assert_ok()
        .assert_says("remote: -----> Python app detected")
        .assert_says("remote:        runtime.txt asks for Python 3.11.x: satisfied")
        .assert_says("remote: -----> Installing dependencies from requirements.txt with pip")
        .assert_says("remote:        Successfully installed")
        .assert_says("flask-3.0.3")
        .assert_says("gunicorn-22.0.0")
        .assert_says("remote: -----> Cache saved")
        .assert_says(&format!("remote: Done, {name}:v1 deployed"));
    let running = RunningSlug::start(&builder, &app, &name, "Hello from Flask (flask-web)");
    // gunicorn (a console script of an installed package) serves it.
    assert!(
        running.container.logs().contains("Booting worker"),
        "{}",
        running.container.logs()
    );
    drop(running);

    // One line of the app changes: the installed packages come from the cache.
    let source = std::fs::read_to_string(app.dir.path().join("app.py")).unwrap();
    app.commit_file(
        "app.py",
        &source.replace("Hello from Flask", "Hello again from Flask"),
    );
    let (second, second_took) = timed_push(&app, &builder, &name, &key);
    second
        .assert_ok()
        .assert_says("remote: -----> Restoring cache")
        .assert_says(
            "remote:        Using cached packages: requirements.txt is unchanged since the previous build",
        )
        .assert_says("remote: -----> Cache unchanged")
        .assert_says(&format!("remote: Done, {name}:v2 deployed"));
    assert!(
        !second.output.contains("Collecting flask"),
        "pip ran again:\n{}",
        second.output
    );
    eprintln!(
        "flask-web: first push {:.1}s, second push {:.1}s (dependency cache reused)",
        first_took.as_secs_f64(),
        second_took.as_secs_f64()
    );
    RunningSlug::start(&builder, &app, &name, "Hello again from Flask (flask-web)");
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn express_app_builds_from_npm_runs_with_npm_start_and_reuses_its_cache() {
    require_services!();
    let (builder, key) = networked_builder();
    let app = App::from_fixture("express-web");
    let name = unique("express");

    let (first, first_took) = timed_push(&app, &builder, &name, &key);
    first
        .assert_ok()
        .assert_says("remote: -----> Node.js app detected")
        .assert_says("remote: -----> Installing dependencies (npm ci, package-lock.json)")
        .assert_says("remote:        added 72 packages")
        .assert_says("remote: -----> Running build (npm run build)")
        .assert_says("remote:        build.js wrote build-info.txt")
        .assert_says("remote: -----> Pruning devDependencies")
        .assert_says("remote: -----> Cache saved")
        // No Procfile: the buildpack's default web process.
        .assert_says("remote:        Default types for buildpack -> web")
        .assert_says(&format!("remote: Done, {name}:v1 deployed"));
    let sha8 = &app.head()[..8];
    let slug = builder.storage_path(&format!("home/{name}:git-{sha8}/push/slug.tgz"));
    let entries = slug_entries(&slug);
    assert!(
        entries
            .iter()
            .any(|e| e == "./node_modules/express/package.json"),
        "express missing from the slug"
    );
    assert!(
        !entries
            .iter()
            .any(|e| e.starts_with("./node_modules/is-number")),
        "the devDependency was not pruned"
    );
    // `npm start` runs on the run image, which has node but no npm.
    let running = RunningSlug::start(
        &builder,
        &app,
        &name,
        "Hello from Express (express-web; built with is-number: true)",
    );
    let top = docker(&["top", &running.container.id, "-o", "pid,args"]);
    let processes: Vec<&str> = top.lines().skip(1).collect();
    assert!(
        processes.len() == 1 && processes[0].trim_end().ends_with(" node server.js"),
        "node should be the container's only process:\n{top}"
    );
    drop(running);

    let source = std::fs::read_to_string(app.dir.path().join("server.js")).unwrap();
    app.commit_file(
        "server.js",
        &source.replace("Hello from Express", "Hello again from Express"),
    );
    let (second, second_took) = timed_push(&app, &builder, &name, &key);
    second
        .assert_ok()
        .assert_says("remote: -----> Restoring cache")
        .assert_says("remote:        Using the npm cache of previous builds")
        .assert_says("remote:        added 72 packages")
        .assert_says("remote: -----> Cache unchanged")
        .assert_says(&format!("remote: Done, {name}:v2 deployed"));
    eprintln!(
        "express-web: first push {:.1}s, second push {:.1}s (npm cache reused)",
        first_took.as_secs_f64(),
        second_took.as_secs_f64()
    );
    let running = RunningSlug::start(&builder, &app, &name, "Hello again from Express");
    assert!(running.port > 0);
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn go_app_builds_from_vendored_modules_without_network_and_runs() {
    require_services!();
    // The harness's default: sealed builds (no network at all).
    let (builder, key) = Builder::with_developer();
    let app = App::from_fixture("go-vendored");
    let name = unique("go");

    let (first, first_took) = timed_push(&app, &builder, &name, &key);
    first
        .assert_ok()
        .assert_says("remote: -----> Go app detected")
        .assert_says("remote:        Module example.com/go-vendored, go 1.21")
        .assert_says("remote: -----> Using the vendored modules (vendor/)")
        .assert_says("remote:        bin/go-vendored")
        .assert_says("remote:        Default types for buildpack -> web")
        .assert_says(&format!("remote: Done, {name}:v1 deployed"));
    eprintln!("go-vendored: push {:.1}s", first_took.as_secs_f64());
    let sha8 = &app.head()[..8];
    let slug = builder.storage_path(&format!("home/{name}:git-{sha8}/push/slug.tgz"));
    assert!(slug_entries(&slug).contains(&"./bin/go-vendored".to_owned()));
    RunningSlug::start(&builder, &app, &name, "Hello from Go (go-vendored)");
}

/// Lays out `fixtures/goproxy/<name>` as module `example.com/<name>` v1.0.0 in the files of
/// a GOPROXY (`<module>/@v/list`, `.info`, `.mod`, `.zip`) under `root`.
fn publish_go_module(root: &Path, name: &str) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/goproxy")
        .join(name);
    let dir = root.join(format!("example.com/{name}/@v"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("list"), "v1.0.0\n").unwrap();
    std::fs::write(
        dir.join("v1.0.0.info"),
        "{\"Version\":\"v1.0.0\",\"Time\":\"2024-01-01T00:00:00Z\"}\n",
    )
    .unwrap();
    std::fs::copy(source.join("go.mod"), dir.join("v1.0.0.mod")).unwrap();
    // A module zip holds the files under `<module>@<version>/`.
    let zipped = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, sys, zipfile\n\
             src, out, prefix = sys.argv[1:]\n\
             with zipfile.ZipFile(out, 'w') as z:\n\
             \x20   for n in sorted(os.listdir(src)):\n\
             \x20       z.write(os.path.join(src, n), prefix + n)\n",
        ])
        .arg(&source)
        .arg(dir.join("v1.0.0.zip"))
        .arg(format!("example.com/{name}@v1.0.0/"))
        .output()
        .unwrap();
    assert!(
        zipped.status.success(),
        "zipping the module failed: {}",
        String::from_utf8_lossy(&zipped.stderr)
    );
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn go_app_gets_modules_through_goproxy_and_builds_again_from_the_module_cache() {
    require_services!();
    let proxy = StaticServer::start();
    publish_go_module(proxy.root.path(), "greeting");
    let (builder, key) = networked_builder();
    let app = App::from_fixture("go-modules");
    let name = unique("gomod");
    // GOPROXY and GONOSUMDB reach the go command from the app's config.
    let goproxy = format!("http://127.0.0.1:{}", proxy.port);
    set_app_config(
        &builder,
        &name,
        &[("GOPROXY", goproxy.as_str()), ("GONOSUMDB", "example.com")],
    );

    let (first, first_took) = timed_push(&app, &builder, &name, &key);
    first
        .assert_ok()
        .assert_says("remote: -----> Downloading modules")
        .assert_says("remote:        1 modules downloaded, 0 already in the cache")
        .assert_says("remote:        bin/go-modules")
        .assert_says("remote: -----> Cache saved")
        .assert_says(&format!("remote: Done, {name}:v1 deployed"));
    RunningSlug::start(&builder, &app, &name, "Hello from Go modules (go-modules)");

    // The proxy goes away: the second build takes the module (read-only files in the
    // module cache, saved and restored with the cache) from the cache.
    drop(proxy);
    app.commit_file("VERSION", "2\n");
    let (second, second_took) = timed_push(&app, &builder, &name, &key);
    second
        .assert_ok()
        .assert_says("remote: -----> Restoring cache")
        .assert_says("remote:        Using the module cache of previous builds")
        .assert_says("remote:        0 modules downloaded, 1 already in the cache")
        .assert_says(&format!("remote: Done, {name}:v2 deployed"));
    eprintln!(
        "go-modules: first push {:.1}s, second push {:.1}s (module and build cache reused)",
        first_took.as_secs_f64(),
        second_took.as_secs_f64()
    );
    RunningSlug::start(&builder, &app, &name, "Hello from Go modules (go-modules)");
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn bad_dependency_input_is_rejected_with_the_tools_error_and_one_advice_line() {
    require_services!();
    let (builder, key) = networked_builder();

    let missing_package = r#"{
  "name": "express-web",
  "version": "1.0.0",
  "private": true,
  "scripts": { "start": "node server.js" },
  "dependencies": { "express": "4.19.2", "deis-builder-no-such-package-4f1c": "^1.0.0" }
}
"#;
    // (fixture, file to delete first, file, its new content, tool's error, advice)
    let cases = [
        (
            "express-web",
            None,
            "package.json",
            "{\n  \"name\": \"express-web\",\n  \"scripts\": { \"start\": \"node server.js\" },\n}\n",
            "package.json: SyntaxError: Unexpected token } in JSON at position",
            " !     package.json is not valid JSON: fix the syntax error shown above",
        ),
        (
            "express-web",
            // Without a lock file npm resolves the new dependency itself.
            Some("package-lock.json"),
            "package.json",
            missing_package,
            "npm ERR! 404 Not Found - GET",
            " !     The package deis-builder-no-such-package-4f1c@^1.0.0 does not exist on the registry",
        ),
        (
            "flask-web",
            None,
            "runtime.txt",
            "python-3.99.1\n",
            "remote:        Using Python 3.11",
            " !     runtime.txt asks for Python 3.99.1, but the deis-bookworm stack has Python 3.11",
        ),
        (
            "flask-web",
            None,
            "requirements.txt",
            "flask=3.0.3\n",
            "ERROR: Invalid requirement: 'flask=3.0.3'",
            " !     requirements.txt has a line pip cannot read (shown above)",
        ),
    ];
    for (fixture, removed, file, content, tool_error, advice) in cases {
        let app = App::from_fixture(fixture);
        if let Some(path) = removed {
            std::fs::remove_file(app.dir.path().join(path)).unwrap();
        }
        app.commit_file(file, content);
        let name = unique("bad");
        let pushed = app.push(&builder, &name, &key);
        pushed
            .assert_rejected()
            .assert_says(tool_error)
            .assert_says(advice)
            .assert_says("pre-receive hook declined");
        let advice_lines = advice_lines(&pushed.output);
        assert_eq!(
            advice_lines.len(),
            1,
            "{fixture} with a bad {file}: expected one advice line, got {advice_lines:#?} in:\n{}",
            pushed.output
        );
        assert!(builder.releases(&name).is_empty(), "{name} was released");
    }
}

/// The same Flask push fails clearly without what makes it work: without the CA the
/// intercepting proxy's certificate is not trusted (on our machines the registries are
/// only reachable through it), and without a network pip cannot reach the index.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn flask_needs_the_operator_ca_and_a_network() {
    require_services!();
    let app = App::from_fixture("flask-web");
    // App config reaches pip (not the buildpack's environment): no retries, so the
    // failures come at once.
    let quick_pip = [("PIP_RETRIES", "0"), ("PIP_TIMEOUT", "15")];

    let (untrusting, key) = Builder::with_developer_and(BuilderOptions {
        extra_args: vec!["--build-network".into(), "host".into()],
        ..Default::default()
    });
    let name = unique("noca");
    set_app_config(&untrusting, &name, &quick_pip);
    let pushed = app.push(&untrusting, &name, &key);
    pushed
        .assert_rejected()
        .assert_says("CERTIFICATE_VERIFY_FAILED")
        .assert_says(" !     The package index's TLS certificate is not trusted in the build: the operator can give the builder a CA bundle (--build-ca-file).");
    assert!(untrusting.releases(&name).is_empty());

    let (sealed, key) = Builder::with_developer_and(BuilderOptions {
        extra_args: vec!["--build-network".into(), "none".into()],
        ..Default::default()
    });
    let name = unique("nonet");
    set_app_config(&sealed, &name, &quick_pip);
    sealed_push_says_so(&app, &sealed, &name, &key);
}

fn sealed_push_says_so(app: &App, builder: &Builder, name: &str, key: &Key) {
    let pushed = app.push(builder, name, key);
    pushed
        .assert_rejected()
        .assert_says("this builder runs builds without a network (--build-network none)");
    assert_eq!(advice_lines(&pushed.output).len(), 1, "{}", pushed.output);
    assert!(builder.releases(name).is_empty());
}
