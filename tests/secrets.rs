//! Secrets stay secret. Distinctive values are planted everywhere a secret can come from
//! (app config incl. `SSH_KEY` and `BUILDPACK_URL` credentials, S3 keys, registry
//! credentials, the builder key); pushes that print their environment run against a
//! builder at debug log level with JSON logs; then everything users and operators see is
//! searched for them. And a build container, inspected while it runs, is locked down.
//!
//! What build output may show (the policy in `crates/pipeline/src/redact.rs`): config values are the
//! app's own business, except `SSH_KEY`, values of secret-named vars (`*KEY*`, `*SECRET*`,
//! `*PASSWORD*`, `*TOKEN*`, … at least 8 bytes) and URL credentials, which are redacted;
//! the builder's own credentials never enter a build at all.

mod util;

use std::process::Command;

use base64::Engine as _;
use deis_controller_double::{ControllerDouble, DoubleUser};
use serde_json::{json, Value};
use util::registry::Registry;
use util::*;

/// Everything planted for one test, and the builder and services that hold it.
struct Planted {
    builder: Builder,
    double: ControllerDouble,
    _runtime: tokio::runtime::Runtime,
    registry: Registry,
    key: Key,
    /// The builder's own credentials: never in any output, log or container.
    own: Vec<String>,
    /// Config values build output must not show (secret-named, SSH key, URL password).
    config_secrets: Vec<String>,
    /// Config values operators' logs must not show either (all of them).
    config_values: Vec<String>,
    /// The app config every app gets (plus per-test additions).
    config: serde_json::Map<String, Value>,
    /// A token that marks every planted value, to make sure the search can find them.
    marker: String,
}

/// A fresh ed25519 private key (OpenSSH format) and its base64 form, as Deis stores it.
fn ssh_key_config() -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("id");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "deploy", "-f"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    let pem = std::fs::read_to_string(&path).unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(&pem);
    (pem, encoded)
}

impl Planted {
    fn start(extra_args: &[&str]) -> Planted {
        let marker = format!("PLANTED{:08x}", rand_u32());
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let builder_key = format!("bk-{marker}-builder-key");
        let double = runtime.block_on(ControllerDouble::start(&builder_key));
        let registry_user = format!("ru-{marker}-user");
        let registry_password = format!("rp-{marker}-password");
        let registry = Registry::start(Some((&registry_user, &registry_password)));
        let s3_access = format!("AKIA{marker}ACCESS");
        let s3_secret = format!("s3-{marker}-secret-access-key");
        let bucket = unique("secrets").to_lowercase();

        let (pem, encoded_key) = ssh_key_config();
        let mut config_secrets = vec![encoded_key.clone()];
        config_secrets.extend(
            pem.lines()
                .map(str::trim)
                .filter(|line| !line.starts_with("-----") && line.len() >= 4)
                .map(str::to_owned),
        );
        let named = [
            ("DATABASE_PASSWORD", format!("dbpw-{marker}")),
            ("API_TOKEN", format!("tok-{marker}")),
            ("AWS_SECRET_ACCESS_KEY", format!("app-aws-{marker}")),
            ("STRIPE_KEY", format!("sk_live_{marker}")),
        ];
        config_secrets.extend(named.iter().map(|(_, v)| v.clone()));
        let plain_value = format!("plain-{marker}-value");
        let mut config = serde_json::Map::new();
        config.insert("SSH_KEY".into(), encoded_key.into());
        for (name, value) in &named {
            config.insert((*name).into(), value.clone().into());
        }
        config.insert("PLAIN_SETTING".into(), plain_value.clone().into());
        let mut config_values = config_secrets.clone();
        config_values.push(plain_value);

        let key = Key::generate("ed25519", "dev");
        let mut args = vec![
            "--registry".to_owned(),
            registry.host(),
            "--log-format".to_owned(),
            "json".to_owned(),
        ];
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        let builder = Builder::start(BuilderOptions {
            storage: Storage::S3 { bucket },
            controller: ControllerMode::Deis {
                url: double.url(),
                key: builder_key.clone(),
            },
            extra_args: args,
            envs: vec![
                ("RUST_LOG".into(), "debug".into()),
                ("AWS_ACCESS_KEY_ID".into(), s3_access.clone()),
                ("AWS_SECRET_ACCESS_KEY".into(), s3_secret.clone()),
                ("DEIS_REGISTRY_USERNAME".into(), registry_user.clone()),
                ("DEIS_REGISTRY_PASSWORD".into(), registry_password.clone()),
            ],
        });
        Planted {
            builder,
            double,
            _runtime: runtime,
            registry,
            key,
            own: vec![
                builder_key,
                registry_user,
                registry_password,
                s3_access,
                s3_secret,
            ],
            config_secrets,
            config_values,
            config,
            marker,
        }
    }

    /// Lets the developer push `apps` (the controller double takes one record per key).
    fn authorize(&self, apps: &[&str]) {
        self.double.add_user(DoubleUser {
            username: "dev".into(),
            fingerprint: self.key.fingerprint.clone(),
            apps: apps.iter().map(|a| (*a).to_owned()).collect(),
        });
    }

    /// Gives app `name` the planted config plus `extra`.
    fn configure(&self, name: &str, extra: &[(&str, &str)]) {
        let mut config = self.config.clone();
        for (k, v) in extra {
            config.insert((*k).into(), (*v).into());
        }
        self.double.set_config(name, Value::Object(config));
    }

    /// Panics naming every planted value found in `text` (`what` says where it was).
    #[track_caller]
    fn assert_clean(&self, what: &str, text: &str, values: &[&String]) {
        let found: Vec<&&String> = values
            .iter()
            .filter(|v| text.contains(v.as_str()))
            .collect();
        assert!(
            found.is_empty(),
            "{what} shows planted secrets {found:?}:\n{text}"
        );
    }

    /// What build output must never show.
    fn build_output_secrets(&self) -> Vec<&String> {
        self.own.iter().chain(&self.config_secrets).collect()
    }

    /// What operators' logs, metrics and health answers must never show.
    fn operator_secrets(&self) -> Vec<&String> {
        self.own.iter().chain(&self.config_values).collect()
    }
}

fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    nanos ^ std::process::id().rotate_left(16)
}

/// A buildpack that prints everything it can see: its environment, every ENV_DIR file,
/// the SSH key file; with `FAIL_BUILD` in config it fails afterwards.
fn publish_leaky_buildpack(server: &StaticServer) {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("leaky/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let scripts = [
        ("detect", "#!/usr/bin/env bash\necho Leaky\n"),
        (
            "compile",
            r#"#!/usr/bin/env bash
env_dir=$3
echo "-----> Printing the environment"
env
echo "-----> Printing ENV_DIR"
for f in "$env_dir"/*; do echo "$(basename "$f")=$(cat "$f")"; done
if [ -f /build/ssh/id_key ]; then cat /build/ssh/id_key; fi
if [ -f "$env_dir/FAIL_BUILD" ]; then echo "failing as asked"; exit 1; fi
"#,
        ),
        (
            "release",
            "#!/usr/bin/env bash\nprintf -- '---\\ndefault_process_types:\\n  web: sleep infinity\\n'\n",
        ),
    ];
    for (name, text) in scripts {
        let path = bin.join(name);
        std::fs::write(&path, text).unwrap();
        let status = Command::new("chmod").arg("+x").arg(&path).status().unwrap();
        assert!(status.success());
    }
    let status = Command::new("tar")
        .arg("-czf")
        .arg(server.root.path().join("leaky.tgz"))
        .arg("-C")
        .arg(dir.path())
        .arg("leaky")
        .status()
        .unwrap();
    assert!(status.success());
}

/// An app whose pre-compile hook prints its environment too.
fn leaky_app() -> App {
    let app = App::from_fixture("procfile-wait");
    std::fs::write(app.dir.path().join("Procfile"), "web: sleep infinity\n").unwrap();
    let hook = app.dir.path().join("bin/pre-compile");
    std::fs::write(
        &hook,
        "#!/usr/bin/env bash\necho '-----> pre-compile env'\nenv\n",
    )
    .unwrap();
    let status = Command::new("chmod").arg("+x").arg(&hook).status().unwrap();
    assert!(status.success());
    std::fs::remove_file(app.dir.path().join("bin/post-compile")).unwrap();
    app.git(&["add", "-A"]);
    app.git(&["commit", "-q", "-m", "print the environment"]);
    app
}

/// A Dockerfile app that echoes its build args.
fn dockerfile_app() -> App {
    let app = App::from_fixture("dockerfile-web");
    let dockerfile = format!(
        "FROM {}\nARG API_TOKEN\nARG PLAIN_SETTING\nARG DATABASE_PASSWORD\n\
         RUN echo \"build args: token=$API_TOKEN db=$DATABASE_PASSWORD plain=$PLAIN_SETTING\" && echo {}\n",
        stack_image(),
        unique("layer")
    );
    std::fs::write(app.dir.path().join("Dockerfile"), dockerfile).unwrap();
    app.git(&["add", "-A"]);
    app.git(&["commit", "-q", "-m", "echo the build args"]);
    app
}

fn import_request(planted: &Planted, key: &str, app: &str, image: &str) -> (u16, String) {
    let body = json!({"app": app, "image": image, "user": "ops"}).to_string();
    http_request(
        planted.builder.http_port,
        "POST",
        "/v2/hooks/import/",
        &format!("X-Deis-Builder-Auth: {key}\r\nContent-Type: application/json\r\n"),
        &body,
    )
    .expect("import endpoint answers")
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn planted_secrets_never_reach_logs_metrics_or_build_output() {
    require_services!();
    let planted = Planted::start(&[]);
    let server = StaticServer::start();
    publish_leaky_buildpack(&server);
    let url_password = format!("urlpw-{}", planted.marker);
    let buildpack_url = format!(
        "http://oauth:{url_password}@127.0.0.1:{}/leaky.tgz",
        server.port
    );
    let mut user_visible = Vec::new();
    let (ok_app, failing_app, docker_app) = (
        unique("leak-ok"),
        unique("leak-fail"),
        unique("leak-docker"),
    );
    planted.authorize(&[&ok_app, &failing_app, &docker_app]);

    // 1. A successful build that prints everything it sees.
    planted.configure(&ok_app, &[("BUILDPACK_URL", &buildpack_url)]);
    let pushed = leaky_app().push(&planted.builder, &ok_app, &planted.key);
    pushed
        .assert_ok()
        .assert_says("Printing ENV_DIR")
        .assert_says("pre-compile env")
        .assert_says("[redacted]");
    // The policy, both ways: the app's plain config is its own business, its secrets are
    // printed by the buildpack and hidden by the builder.
    pushed
        .assert_says(&format!("PLAIN_SETTING=plain-{}-value", planted.marker))
        .assert_says("DATABASE_PASSWORD=[redacted]")
        .assert_says("STRIPE_KEY=[redacted]")
        .assert_says("SSH_KEY=[redacted]")
        .assert_says("BUILDPACK_URL=http://[redacted]@127.0.0.1");
    user_visible.push(("successful push", pushed.output.clone()));

    // 2. A failing compile, after printing everything.
    planted.configure(
        &failing_app,
        &[("BUILDPACK_URL", &buildpack_url), ("FAIL_BUILD", "1")],
    );
    let pushed = leaky_app().push(&planted.builder, &failing_app, &planted.key);
    pushed
        .assert_rejected()
        .assert_says("failing as asked")
        .assert_says("Printing ENV_DIR");
    user_visible.push(("failing push", pushed.output.clone()));

    // 3. A Dockerfile build with every config var as a build arg, echoed by a step.
    planted.configure(&docker_app, &[("DEIS_DOCKER_BUILD_ARGS_ENABLED", "1")]);
    let pushed = dockerfile_app().push(&planted.builder, &docker_app, &planted.key);
    pushed
        .assert_ok()
        .assert_says("build args: token=[redacted]")
        .assert_says(&format!("plain=plain-{}-value", planted.marker));
    user_visible.push(("Dockerfile push", pushed.output.clone()));
    assert_eq!(planted.registry.tags(&docker_app).len(), 1);

    // 4. Imports over HTTP: a wrong key, and a right key with an image that cannot be had.
    let wrong_key = format!("wrong-{}-key", planted.marker);
    let (status, body) = import_request(&planted, &wrong_key, &ok_app, "busybox:1");
    assert_eq!(status, 401, "{body}");
    assert!(
        !body.contains(&wrong_key),
        "the 401 repeats the key: {body}"
    );
    user_visible.push(("401 import answer", body));
    let (status, body) =
        import_request(&planted, &planted.own[0], &ok_app, "127.0.0.1:9/no/such:1");
    assert!(status >= 400, "{status} {body}");
    user_visible.push(("failed import answer", body));

    // 5. What operators see.
    let mut operator_visible = Vec::new();
    for path in ["/healthz", "/readiness", "/metrics"] {
        let (_, body) = http_get(planted.builder.http_port, path).expect(path);
        operator_visible.push((path, body));
    }
    let log = planted.builder.log();
    assert!(
        log.contains("\"effective settings\"") && log.contains("[redacted]"),
        "no redacted settings event at start-up:\n{log}"
    );
    assert!(
        log.contains("DEBUG"),
        "the builder did not log at debug level"
    );
    operator_visible.push(("builder log", log));

    // The search itself must be able to find things: the marker is everywhere it was put.
    assert!(user_visible[0].1.contains(&planted.marker));

    for (what, text) in &user_visible {
        planted.assert_clean(what, text, &planted.build_output_secrets());
    }
    for (what, text) in &operator_visible {
        planted.assert_clean(what, text, &planted.operator_secrets());
        assert!(
            !text.contains(&url_password),
            "{what} shows the URL password"
        );
    }
    for (what, text) in &user_visible {
        assert!(
            !text.contains(&url_password),
            "{what} shows the URL password:\n{text}"
        );
    }
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn build_containers_are_locked_down_and_carry_no_credentials() {
    require_services!();
    let planted = Planted::start(&["--build-memory", "512m", "--build-pids", "256"]);
    let name = unique("locked");
    planted.authorize(&[&name]);
    planted.configure(&name, &[]);
    let app = App::from_fixture("procfile-wait");
    let push = app.push_held(&planted.builder, &name, &planted.key);

    let containers = containers_of(&name);
    assert_eq!(containers.len(), 1, "one build container");
    let inspected = docker(&["inspect", &containers[0]]);
    let info: Value = serde_json::from_str(&inspected).unwrap();
    let info = &info[0];
    let user = info["Config"]["User"].as_str().unwrap_or_default();
    assert!(
        !user.is_empty() && user != "root" && user != "0" && !user.starts_with("0:"),
        "build runs as {user:?}"
    );
    let exec_uid = docker(&["exec", &containers[0], "id", "-u"]);
    assert_ne!(exec_uid.trim(), "0");
    let host = &info["HostConfig"];
    assert_eq!(host["CapDrop"], json!(["ALL"]), "{host}");
    assert!(
        host["CapAdd"].is_null() || host["CapAdd"] == json!([]),
        "{host}"
    );
    let security = host["SecurityOpt"].to_string();
    assert!(security.contains("no-new-privileges"), "{security}");
    assert_eq!(host["PidsLimit"], json!(256));
    assert_eq!(host["Memory"], json!(512i64 << 20));
    assert_eq!(host["NetworkMode"], json!("none"));
    assert_eq!(host["Privileged"], json!(false));
    // Nothing planted anywhere in the container's definition (env, labels, command).
    planted.assert_clean(
        "docker inspect of the build container",
        &inspected,
        &planted.operator_secrets(),
    );
    // Nor in the environment the build's processes actually have.
    let environ = docker(&["exec", &containers[0], "cat", "/proc/1/environ"]);
    planted.assert_clean(
        "the build process environment",
        &environ,
        &planted.operator_secrets(),
    );

    release_waiting_build(&name);
    push.finish().assert_ok();
}
