//! Cloud Native Buildpacks through real git+ssh pushes, the build container and the slug
//! runner: a bash CNB with launch, cache and build-only layers (its web process served
//! by the runner in its launch environment), a Rust CNB written with Heroku's libcnb,
//! order groups with optional buildpacks and a build plan, and bad input.

mod util;

use std::path::Path;
use std::time::Instant;

use util::*;

/// Objects of `name`'s pushes in local storage (the app's build cache left out).
fn published(builder: &Builder, name: &str) -> Vec<String> {
    let prefix = format!("{name}:");
    std::fs::read_dir(builder.storage_path("home"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|entry| entry.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn slug_of(builder: &Builder, app: &App, name: &str) -> Vec<String> {
    let sha8 = &app.head()[..8];
    slug_entries(&builder.storage_path(&format!("home/{name}:git-{sha8}/push/slug.tgz")))
}

/// Acceptance 1 and 4: a bash CNB's launch layer (a server on PATH, env.launch, exec.d)
/// runs in the slug runner with its launch environment; its cache layer is restored on
/// the next push, and its build-only layer never reaches the slug.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn a_bash_cnb_builds_launch_and_cache_layers_and_its_process_serves_http() {
    require_services!();
    let (builder, key) = Builder::with_developer();
    let app = App::from_fixture("cnb-hello");
    let name = unique("cnb");
    set_app_config(&builder, &name, &[("APP_MESSAGE", "from the app config")]);

    let started = Instant::now();
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says("remote: =====> Using Buildpack: buildpacks/hello (from the app)")
        .assert_says("remote: -----> Building with Cloud Native Buildpacks")
        .assert_says("remote: ===> DETECTING")
        .assert_says("remote: 1 of 1 buildpacks participating")
        .assert_says("remote: examples/hello 0.1.0")
        .assert_says("remote: -----> Hello buildpack: APP_MESSAGE is from the app config (platform: from the app config)")
        .assert_says("remote: -----> Building deps (slow)")
        .assert_says("remote: Adding cache layer 'examples/hello:deps'")
        .assert_says("remote: Adding layer 'examples/hello:runtime'")
        .assert_says("remote:        Default types for buildpack -> web")
        .assert_says("remote: -----> Cache saved");
    let first = started.elapsed();
    assert_eq!(builder.releases(&name).len(), 1);

    let entries = slug_of(&builder, &app, &name);
    let has = |entry: &str| entries.iter().any(|e| e == entry);
    for entry in [
        "./.cnb/launch.toml",
        "./.cnb/layers/examples_hello/runtime/bin/hello-server",
        "./.cnb/layers/examples_hello/runtime/exec.d/greet",
        "./.release",
        "./hello.txt",
    ] {
        assert!(has(entry), "{entry} missing from the slug: {entries:?}");
    }
    for gone in ["tools", "deps", "runtime.toml", "launch.toml"] {
        let entry = format!("./.cnb/layers/examples_hello/{gone}");
        assert!(
            !entries.iter().any(|e| e.starts_with(&entry)),
            "{entry} must not be in the slug: {entries:?}"
        );
    }
    assert!(
        !entries.iter().any(|e| e.starts_with("./docs")),
        "project.toml excludes docs/"
    );

    let running = RunningSlug::start(&builder, &app, &name, "env.txt");
    let (status, body) = http_get(running.port, "/env.txt").expect("GET /env.txt");
    assert_eq!(status, 200);
    assert!(body.contains("GREETING=hello from the layer"), "{body}");
    assert!(body.contains("FROM_EXEC_D=exec.d ran"), "{body}");
    assert!(body.contains("PWD=/app"), "{body}");

    // The second push restores the cache layer: the buildpack sees what it left there.
    app.commit_file("VERSION", "2\n");
    let started = Instant::now();
    let second = app.push(&builder, &name, &key);
    second
        .assert_ok()
        .assert_says("remote: Restoring data for \"examples/hello:deps\" from cache")
        .assert_says("remote: -----> Reusing cached deps: an earlier build")
        .assert_says("remote: -----> Cache unchanged");
    assert!(!second.output.contains("Building deps (slow)"));
    eprintln!(
        "bench cnb-cache first push {:.1}s, second push {:.1}s (cache layer reused)",
        first.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    // `start <command>` still works in a CNB slug, in the launch environment.
    let sha8 = &app.head()[..8];
    let stored = builder.storage_path(&format!("home/{name}:git-{sha8}/push/slug.tgz"));
    let slug = std::fs::read(&stored).unwrap();
    let run = run_runner(
        &[
            "-i".into(),
            "-e".into(),
            "SLUG_URL=-".into(),
            runner_image(),
            "start".into(),
            "echo \"$GREETING / $FROM_EXEC_D\"".into(),
        ],
        Some(&slug),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout.contains("hello from the layer / exec.d ran"),
        "{run:?}"
    );
}

/// Acceptance 3: a composite buildpack whose first group fails detection (a requirement
/// nobody provides) and whose second passes without its optional buildpack; the build
/// plan reaches the provider, the provider's build layer reaches the consumer.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn order_groups_optional_buildpacks_and_the_build_plan() {
    require_services!();
    let (builder, key) = Builder::with_developer();
    let app = App::from_fixture("cnb-groups");
    let name = unique("cnbgroups");
    let pushed = app.push(&builder, &name, &key);
    pushed
        .assert_ok()
        .assert_says("remote: =====> Using Buildpack: buildpacks/meta (from the app)")
        .assert_says("remote: 2 of 3 buildpacks participating")
        .assert_says("remote: -----> provider: plan is [[entries]] name = \"greeting\"  [entries.metadata] language = \"en\"")
        .assert_says("remote: -----> consumer: hello from the provider tool, PROVIDER_SAYS=provided")
        .assert_says("remote:        Default types for buildpack -> worker");
    assert!(
        !pushed.output.contains("must not build"),
        "{}",
        pushed.output
    );
    // The group as pack shows it: the participating buildpacks, in order, nothing else.
    let detected: Vec<&str> = pushed
        .output
        .lines()
        .map(|line| line.trim_start_matches("remote: ").trim_end())
        .skip_while(|line| *line != "===> DETECTING")
        .take_while(|line| *line != "===> RESTORING")
        .collect();
    assert_eq!(
        detected,
        [
            "===> DETECTING",
            "2 of 3 buildpacks participating",
            "examples/provider 0.1.0",
            "examples/consumer 0.1.0"
        ]
    );
    let entries = slug_of(&builder, &app, &name);
    assert!(
        !entries.iter().any(|e| e.contains("examples_provider/tool")),
        "a build-only layer is not in the slug: {entries:?}"
    );
}

/// CNBs named by `BUILDPACK_URL` (a tarball here) build like in-source ones, and take
/// precedence over project.toml's buildpacks (here ids without a uri, which this builder
/// could not fetch) while its `exclude` still applies; a `.buildpacks` listing a classic
/// buildpack and a CNB is refused with both named.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn cnbs_from_buildpack_url_and_no_mixing_with_classic_buildpacks() {
    require_services!();
    let server = StaticServer::start();
    server.publish_buildpack_tarball("env-probe", "env-probe");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/apps/cnb-hello/buildpacks");
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(server.root.path().join("hello-cnb.tgz"))
        .arg("-C")
        .arg(&fixtures)
        .arg("hello")
        .status()
        .unwrap();
    assert!(status.success());
    let (builder, key) = Builder::with_developer();
    let app = App::from_fixture("cnb-hello");
    let name = unique("cnburl");
    let cnb = server.url("hello-cnb.tgz");
    set_app_config(
        &builder,
        &name,
        &[("BUILDPACK_URL", &cnb), ("SLOW_SECONDS", "0")],
    );
    // The buildpack fails when docs/ reaches it: the exclude is in force.
    app.commit_file(
        "project.toml",
        "[_]\nschema-version = \"0.2\"\n[io.buildpacks]\nexclude = [\"docs/\"]\n\
         [[io.buildpacks.group]]\nid = \"heroku/nodejs\"\n",
    );
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says("remote: -----> Fetching custom buildpack")
        .assert_says("remote: 1 of 1 buildpacks participating")
        .assert_says("remote:        Default types for buildpack -> web");

    set_app_config(&builder, &name, &[("BUILDPACK_URL", "")]);
    let classic = server.url("env-probe.tgz");
    app.commit_file(".buildpacks", &format!("{classic}\n{cnb}\n"));
    app.push(&builder, &name, &key)
        .assert_rejected()
        .assert_says(&format!(
            " !     Build failed: cannot mix classic buildpacks ({classic}: bin/compile) and \
             Cloud Native Buildpacks ({cnb}: buildpack.toml) in one build; use one kind"
        ));
    assert_eq!(builder.releases(&name).len(), 1, "nothing new is released");
}

/// Acceptance 5: bad input rejects the push naming the file and the problem, and
/// publishes nothing.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn bad_cnb_input_rejects_the_push_naming_the_file() {
    require_services!();
    let (builder, key) = Builder::with_developer();
    let app = App::from_fixture("cnb-hello");
    let name = unique("cnbbad");
    let descriptor = "buildpacks/hello/buildpack.toml";
    let good = std::fs::read_to_string(app.dir.path().join(descriptor)).unwrap();
    // Each push is refused with the file and the problem, and leaves nothing behind.
    let refused = |case: &str, expected: &str| {
        let pushed = app.push(&builder, &name, &key);
        pushed.assert_rejected();
        assert!(
            pushed.output.contains(expected),
            "{case}: expected {expected:?} in:\n{}",
            pushed.output
        );
        assert!(builder.releases(&name).is_empty(), "{case}: released");
        assert_eq!(
            published(&builder, &name),
            Vec::<String>::new(),
            "{case}: objects left"
        );
    };

    app.commit_file(descriptor, "api = \"0.10\"\n[buildpack\nid = \"x\"\n");
    refused(
        "malformed buildpack.toml",
        "/build/buildpacks/01-hello/buildpack.toml: invalid TOML at line 2",
    );
    app.commit_file(descriptor, &good.replace("0.10", "0.7"));
    refused(
        "unsupported API",
        "/build/buildpacks/01-hello/buildpack.toml: Buildpack API 0.7 is not supported; \
         this builder supports 0.8 to 0.11",
    );
    app.commit_file(descriptor, &good);
    app.commit_file("break-launch", "1\n");
    refused(
        "launch.toml that does not parse",
        "/app/.cnb/layers/examples_hello/launch.toml: invalid TOML at line 1: unclosed array table",
    );
    app.git(&["rm", "-q", "break-launch"]);
    app.commit_file("break-layer", "1\n");
    refused(
        "a layer name with ..",
        "/app/.cnb/layers/examples_hello/bad..layer: layer name \"bad..layer\" contains \"..\", \
         which is not allowed",
    );
    app.git(&["rm", "-q", "break-layer"]);
    app.commit_file(
        "project.toml",
        "[[build.buildpacks]]\nid = \"examples/outside\"\nuri = \"../outside\"\n",
    );
    refused(
        "a buildpack path outside the app",
        "project.toml: buildpack examples/outside: uri \"../outside\" must be a URL or a \
         relative path inside the app",
    );
}

/// The libcnb example's build output and its process, when scripts/test.sh built it.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn a_rust_cnb_written_with_libcnb_builds_and_runs() {
    require_services!();
    let binary = std::env::var("DEIS_IT_LIBCNB_BUILDPACK").expect(
        "DEIS_IT_LIBCNB_BUILDPACK names the libcnb buildpack binary scripts/test.sh builds",
    );
    let (builder, key) = Builder::with_developer();
    let app = App::from_fixture("cnb-libcnb");
    let bin = app.dir.path().join("buildpacks/libcnb-hello/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(&binary, bin.join("build")).unwrap();
    // libcnb picks the phase from the name it was started as.
    std::os::unix::fs::symlink("build", bin.join("detect")).unwrap();
    app.git(&["add", "-A"]);
    app.git(&["commit", "-q", "-m", "the libcnb buildpack"]);
    let name = unique("libcnb");
    app.push(&builder, &name, &key)
        .assert_ok()
        .assert_says("remote: examples/libcnb-hello 0.1.0")
        .assert_says("remote: [libcnb-hello] writing the greeting layer")
        .assert_says("remote:        Default types for buildpack -> web");
    let running = RunningSlug::start(&builder, &app, &name, "greeting.txt");
    let (status, body) = http_get(running.port, "/greeting.txt").expect("GET /greeting.txt");
    assert_eq!(status, 200);
    assert!(body.contains("hello from libcnb"), "{body}");
    assert!(Path::new(&binary).is_file());
}
