//! Start-up settings through the real binary: every invalid setting, whatever its type,
//! stops start-up with one line naming the flag (and the variable, when the value came from
//! the environment); switches take the usual spellings. Only the last tests need services.

mod util;

use std::process::{Command, Output};

use deis_controller_double::{ControllerDouble, DoubleUser};
use util::*;

/// Runs `deis-builder ARGS` with `env` on top of a clean builder environment.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_deis-builder"));
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("DEIS_") || name.starts_with("AWS_ENDPOINT_URL") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied()).output().unwrap()
}

/// The one stderr line of a run stopped by a bad setting.
#[track_caller]
fn one_line_error(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("deis-builder: invalid setting "),
        "{stderr}"
    );
    stderr
}

const NUMBERS: [(&str, &str); 4] = [
    ("--max-builds", "DEIS_BUILDER_MAX_BUILDS"),
    ("--build-pids", "DEIS_BUILDER_BUILD_PIDS"),
    ("--max-connections", "DEIS_BUILDER_MAX_CONNECTIONS"),
    ("--max-auth-attempts", "DEIS_BUILDER_MAX_AUTH_ATTEMPTS"),
];

#[test]
fn a_bad_number_on_the_command_line_is_one_line_naming_the_flag() {
    for (flag, variable) in NUMBERS {
        let out = run(&["serve", "--data-dir", "/nonexistent", flag, "abc"], &[]);
        let line = one_line_error(&out);
        assert!(
            line.contains(&format!(
                "invalid setting {flag}: \"abc\" is not a whole number"
            )),
            "{line}"
        );
        assert!(!line.contains(variable), "{line}");
        assert!(!line.contains("from env"), "{line}");
    }
    // A negative number reaches the same check rather than being taken for a flag.
    let line = one_line_error(&run(&["serve", "--max-builds", "-1"], &[]));
    assert!(
        line.contains("--max-builds: \"-1\" is not a whole number of at least 1"),
        "{line}"
    );
    let line = one_line_error(&run(&["serve", "--build-pids", "8"], &[]));
    assert!(
        line.contains("--build-pids: \"8\" is not a whole number of at least 16"),
        "{line}"
    );
}

#[test]
fn a_bad_value_from_the_environment_names_its_variable() {
    for (flag, variable) in NUMBERS {
        let out = run(
            &["serve", "--data-dir", "/nonexistent"],
            &[(variable, "-3")],
        );
        let line = one_line_error(&out);
        assert!(
            line.contains(&format!("invalid setting {flag}: \"-3\"")),
            "{line}"
        );
        assert!(
            line.trim_end().ends_with(&format!("(from env {variable})")),
            "{line}"
        );
    }
    // Not only numbers: any setting read from its variable.
    let out = run(&["serve"], &[("DEIS_BUILDER_SSH_ADDR", "nowhere")]);
    let line = one_line_error(&out);
    assert!(line.contains("--ssh-addr"), "{line}");
    assert!(line.contains("(from env DEIS_BUILDER_SSH_ADDR)"), "{line}");
    // The command line wins over the variable, and then the flag alone is named.
    let out = run(
        &["serve", "--max-builds", "none"],
        &[("DEIS_BUILDER_MAX_BUILDS", "4")],
    );
    let line = one_line_error(&out);
    assert!(line.contains("--max-builds: \"none\""), "{line}");
    assert!(!line.contains("from env"), "{line}");
    // The other commands share the settings and their errors.
    let out = run(
        &["pull", "registry.example.com/web:1", "--app", "web"],
        &[("DEIS_BUILDER_MAX_BUILDS", "many")],
    );
    let line = one_line_error(&out);
    assert!(
        line.contains("--max-builds: \"many\" is not a whole number of at least 1 (from env DEIS_BUILDER_MAX_BUILDS)"),
        "{line}"
    );
}

#[test]
fn s3_virtual_hosted_from_the_environment_is_checked_in_one_line() {
    let out = run(
        &["serve", "--storage", "s3://bucket"],
        &[("DEIS_BUILDER_S3_VIRTUAL_HOSTED", "maybe")],
    );
    let line = one_line_error(&out);
    assert!(
        line.contains("invalid setting --s3-virtual-hosted: \"maybe\" is not a switch"),
        "{line}"
    );
    assert!(
        line.contains("(from env DEIS_BUILDER_S3_VIRTUAL_HOSTED)"),
        "{line}"
    );
    let out = run(&["serve"], &[("DEIS_DEBUG", "loud")]);
    let line = one_line_error(&out);
    assert!(
        line.contains("DEIS_DEBUG: \"loud\" is not a switch"),
        "{line}"
    );
}

#[test]
fn switches_from_the_environment_take_the_usual_spellings() {
    let data_dir = tempfile::tempdir().unwrap();
    let data_dir = data_dir.path().to_str().unwrap();
    for value in ["yes", "1", "On", "TRUE", "no", "0", "off", "false"] {
        // purge-cache validates the same settings as serve, then ends at once.
        let out = run(
            &["purge-cache", "someapp", "--data-dir", data_dir],
            &[
                ("DEIS_BUILDER_S3_VIRTUAL_HOSTED", value),
                ("DEIS_DEBUG", value),
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{value}: {stderr}");
        assert!(!stderr.contains("invalid setting"), "{value}: {stderr}");
    }
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn a_server_starts_with_switches_spelled_yes_and_1() {
    require_services!();
    let builder = Builder::start(BuilderOptions {
        envs: vec![
            ("DEIS_BUILDER_S3_VIRTUAL_HOSTED".into(), "yes".into()),
            ("DEIS_DEBUG".into(), "1".into()),
        ],
        ..Default::default()
    });
    assert_eq!(
        http_get(builder.http_port, "/healthz").map(|(status, _)| status),
        Some(200)
    );
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn an_unknown_hephy_builder_lists_every_accepted_value() {
    require_services!();
    let (builder, key) = Builder::with_developer();
    let name = unique("hephy");
    set_app_config(&builder, &name, &[("HEPHY_BUILDER", "bogus")]);
    App::from_fixture("static-site")
        .push(&builder, &name, &key)
        .assert_rejected()
        .assert_says("HEPHY_BUILDER=bogus is not one of `procfile`, `buildpack` or `dockerfile`");
}

/// `--builder-key-file` (a Kubernetes Secret mount) works like `--builder-key` in both
/// modes: it turns the import endpoint on in standalone mode and authenticates the builder
/// to the controller in Deis mode.
#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn a_builder_key_file_works_in_both_modes() {
    require_services!();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("builder-key");
    std::fs::write(&key_file, "key-from-a-file\n").unwrap();
    let file_args = vec![
        "--builder-key-file".to_owned(),
        key_file.display().to_string(),
    ];
    let import = |builder: &Builder, key: &str| {
        let headers = format!("Content-Type: application/json\r\nX-Deis-Builder-Auth: {key}\r\n");
        http_request(
            builder.http_port,
            "POST",
            "/v2/hooks/import/",
            &headers,
            "{}",
        )
        .expect("import answer")
        .0
    };

    let standalone = Builder::start(BuilderOptions {
        extra_args: file_args.clone(),
        ..Default::default()
    });
    // 400: past the key check, refused for its empty body.
    assert_eq!(import(&standalone, "key-from-a-file"), 400);
    assert_eq!(import(&standalone, "wrong"), 401);
    let keyless = Builder::start(BuilderOptions::default());
    assert_eq!(import(&keyless, "key-from-a-file"), 403);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let double = runtime.block_on(ControllerDouble::start("key-from-a-file"));
    let developer = Key::generate("ed25519", "dev");
    double.add_user(DoubleUser {
        username: "dev".into(),
        fingerprint: developer.fingerprint.clone(),
        apps: vec!["keyed".into()],
    });
    let deis = Builder::start(BuilderOptions {
        // An empty DEIS_BUILDER_KEY counts as unset: the file is used.
        controller: ControllerMode::Deis {
            url: double.url(),
            key: String::new(),
        },
        extra_args: file_args,
        ..Default::default()
    });
    assert_eq!(import(&deis, "key-from-a-file"), 400);
    // The key lookup only succeeds when the controller accepted the builder key.
    let login = developer.ssh(deis.ssh_port, &[], &["git-upload-pack '/keyed.git'"]);
    let stderr = String::from_utf8_lossy(&login.stderr);
    assert!(!stderr.contains("Permission denied"), "{stderr}");
    assert!(
        double
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/v2/hooks/key/")
                && r.headers.get("x-deis-builder-auth").map(String::as_str)
                    == Some("key-from-a-file")),
        "{:?}",
        double.requests()
    );
}
