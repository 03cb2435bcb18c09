//! What a build gets to reach package registries: the build network, the operator's CA
//! (`--build-ca-file`), proxies, and `$STACK` from the stack image. Driven with real pushes;
//! the CA is proven against a real HTTPS server on loopback whose certificate only that CA
//! signed, reached over the host network (our engine has no bridge).

mod util;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use util::*;

/// A one-page HTTPS server on 127.0.0.1 with a certificate from a CA of its own.
struct TlsServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TlsServer {
    fn start(body: &str) -> TlsServer {
        let dir = tempfile::tempdir().unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=deis-builder test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(dir.path().join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ]);
        std::fs::write(dir.path().join("index.html"), body).unwrap();
        let port = free_port();
        let script = format!(
            "import http.server, ssl\n\
             server = http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler)\n\
             context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
             context.load_cert_chain('server.pem', 'server.key')\n\
             server.socket = context.wrap_socket(server.socket, server_side=True)\n\
             server.serve_forever()\n"
        );
        let child = Command::new("python3")
            .args(["-c", &script])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            eventually(Duration::from_secs(10), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "the HTTPS server did not start"
        );
        TlsServer { child, port, dir }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/index.html", self.port)
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn builder(args: &[&str]) -> (Builder, Key) {
    Builder::with_developer_and(BuilderOptions {
        extra_args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    })
}

/// Pushes the probe app with `PROBE_URL` set and returns its output.
fn probe(builder: &Builder, key: &Key, url: &str) -> String {
    let app = App::from_fixture("probe-env");
    let name = unique("probe");
    set_app_config(builder, &name, &[("PROBE_URL", url)]);
    let pushed = app.push(builder, &name, key);
    pushed.assert_ok();
    pushed.output
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn the_operator_ca_is_what_makes_tls_to_a_private_ca_work() {
    require_services!();
    let server = TlsServer::start("hello over tls");
    let ca = server.ca().display().to_string();

    let (trusting, key) = builder(&["--build-network", "host", "--build-ca-file", &ca]);
    let output = probe(&trusting, &key, &server.url());
    assert!(
        output.contains("remote:        fetched: hello over tls"),
        "{output}"
    );
    for name in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "PIP_CERT",
        "NODE_EXTRA_CA_CERTS",
        "GIT_SSL_CAINFO",
        "CURL_CA_BUNDLE",
    ] {
        let line = format!("remote:        {name}=/etc/ssl/certs/ca-certificates.crt");
        assert!(output.contains(&line), "{line} missing:\n{output}");
    }
    assert!(
        output.contains("remote:        DEIS_BUILD_NETWORK=host"),
        "{output}"
    );

    // The same push without the CA: the build has the network but not the trust.
    let (sceptical, key) = builder(&["--build-network", "host"]);
    let output = probe(&sceptical, &key, &server.url());
    assert!(output.contains("fetch failed:"), "{output}");
    assert!(output.contains("CERTIFICATE_VERIFY_FAILED"), "{output}");
    assert!(
        output.contains("remote:        SSL_CERT_FILE=unset"),
        "{output}"
    );
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn sealed_builds_have_no_network_and_say_so() {
    require_services!();
    let server = TlsServer::start("unreachable");
    let ca = server.ca().display().to_string();
    let (sealed, key) = builder(&["--build-network", "none", "--build-ca-file", &ca]);
    let output = probe(&sealed, &key, &server.url());
    assert!(
        output.contains("remote:        DEIS_BUILD_NETWORK=none"),
        "{output}"
    );
    assert!(output.contains("fetch failed:"), "{output}");
    assert!(!output.contains("fetched:"), "{output}");
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn proxies_reach_builds_without_their_password() {
    require_services!();
    let password = "pr0xy-s3cret-value";
    let proxy = format!("http://builds:{password}@127.0.0.1:3128");
    let (builder, key) = builder(&[
        "--build-network",
        "host",
        "--build-http-proxy",
        &proxy,
        "--build-https-proxy",
        &proxy,
        "--build-no-proxy",
        "127.0.0.1,localhost",
    ]);
    let app = App::from_fixture("probe-env");
    let name = unique("proxied");
    let pushed = app.push(&builder, &name, &key);
    pushed.assert_ok();
    let output = &pushed.output;
    for name in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY"] {
        let line = format!("remote:        {name}=http://[redacted]@127.0.0.1:3128");
        assert!(output.contains(&line), "{line} missing:\n{output}");
    }
    assert!(
        output.contains("remote:        NO_PROXY=127.0.0.1,localhost"),
        "{output}"
    );
    assert!(!output.contains(password), "{output}");
    let log = builder.log();
    assert!(
        log.contains("***@127.0.0.1:3128"),
        "the settings show the proxy:\n{log}"
    );
    assert!(!log.contains(password), "{log}");
}

/// An image labelled like Heroku's stacks; removed again when dropped.
struct LabelledStack(String);

impl LabelledStack {
    fn build(stack: &str) -> LabelledStack {
        let tag = format!("deis-builder-test/{}:latest", unique("stack"));
        let context = tempfile::tempdir().unwrap();
        std::fs::write(
            context.path().join("Dockerfile"),
            // Only the Cloud Native Buildpacks label, as on Heroku's images: ours is blanked.
            format!(
                "FROM {}\nLABEL io.deis.builder.stack=\"\" io.buildpacks.stack.id={stack}\n",
                stack_image()
            ),
        )
        .unwrap();
        let out = Command::new("docker")
            .args(["build", "--pull=false", "-q", "-t", &tag])
            .arg(context.path())
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        LabelledStack(tag)
    }
}

impl Drop for LabelledStack {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn stack_comes_from_the_build_image() {
    require_services!();
    let app = App::from_fixture("probe-env");

    let (ours, key) = builder(&[]);
    let expected = stack_label(&stack_image()).unwrap_or_else(|| "deis-bookworm".into());
    let pushed = app.push(&ours, &unique("stack"), &key);
    pushed
        .assert_ok()
        .assert_says(&format!("remote:        STACK={expected}"));

    let heroku = LabelledStack::build("heroku-22");
    let (theirs, key) = builder(&["--stack-image", &heroku.0]);
    app.push(&theirs, &unique("stack"), &key)
        .assert_ok()
        .assert_says("remote:        STACK=heroku-22");

    // The setting wins over any label.
    let (named, key) = builder(&["--stack-image", &heroku.0, "--stack-name", "custom-1"]);
    app.push(&named, &unique("stack"), &key)
        .assert_ok()
        .assert_says("remote:        STACK=custom-1");
}

/// The stack name the builder reads off an image, if it carries one.
fn stack_label(image: &str) -> Option<String> {
    ["io.deis.builder.stack", "io.buildpacks.stack.id"]
        .iter()
        .map(|label| {
            docker(&[
                "image",
                "inspect",
                "--format",
                &format!("{{{{index .Config.Labels \"{label}\"}}}}"),
                image,
            ])
        })
        .map(|value| value.trim().to_owned())
        .find(|value| !value.is_empty() && value != "<no value>")
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn a_missing_build_network_stops_start_up_with_advice() {
    require_services!();
    let data_dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_deis-builder"))
        .args(["serve", "--data-dir"])
        .arg(data_dir.path())
        .args(["--stack-image", &stack_image()])
        .args(["--build-network", "no-such-network"])
        .args(["--ssh-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .env_remove("DEIS_BUILDER_BUILD_NETWORK")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no network \"no-such-network\"")
            && stderr.contains("--build-network host"),
        "{stderr}"
    );
    let bad_ca = data_dir.path().join("not-a-ca.pem");
    std::fs::write(&bad_ca, "hello").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_deis-builder"))
        .args(["serve", "--build-ca-file"])
        .arg(&bad_ca)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--build-ca-file") && stderr.contains("holds no PEM certificate"),
        "{stderr}"
    );
}
