//! Client for the Deis Workflow controller hooks API v2.

use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, USER_AGENT};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::reply::{parse_config, parse_release_version, parse_user, reply_detail};
use super::values::printable_snippet;
use super::{
    require_valid_fingerprint, AppConfig, AppName, Controller, ControllerError, ReleaseRequest,
    User,
};

/// Header carrying the shared secret between builder and controller.
const BUILDER_AUTH_HEADER: &str = "x-deis-builder-auth";
/// What the Deis builder always sent; some controllers log or filter on it.
const BUILDER_USER_AGENT: &str = "deis-builder";
/// Controller replies are a few hundred bytes; anything this big is not one.
const MAX_REPLY_BYTES: usize = 1024 * 1024;
/// Pause before the single retry of an idempotent call.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Which hook a request belongs to, for logs and error messages.
#[derive(Debug, Clone, Copy)]
enum Call {
    KeyLookup,
    Config,
    Build,
    Health,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::KeyLookup => "the key lookup",
            Call::Config => "the config hook",
            Call::Build => "the build hook",
            Call::Health => "the health check",
        }
    }

    /// Only reads may be repeated (the config hook is a POST but only reads): a repeated
    /// build hook could cut two releases.
    fn may_retry(self) -> bool {
        matches!(self, Call::KeyLookup | Call::Config | Call::Health)
    }
}

/// A complete controller reply.
struct Reply {
    status: StatusCode,
    body: Vec<u8>,
}

/// Talks to a Deis Workflow (or Hephy) controller over plain HTTP.
pub struct DeisController {
    /// Without a trailing `/`.
    base_url: String,
    /// Carries the builder key in its default headers (marked sensitive).
    http: reqwest::Client,
    timeout: Duration,
}

impl std::fmt::Debug for DeisController {
    // Hand-written so the client, whose default headers hold the key, is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeisController")
            .field("base_url", &self.base_url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl DeisController {
    /// `base_url` is `http://host:port`, optionally with a path prefix and a trailing
    /// `/`. `timeout` bounds each whole request, reply body included.
    pub fn new(
        base_url: &str,
        builder_key: String,
        timeout: Duration,
    ) -> Result<Self, ControllerError> {
        let base_url = validated_base_url(base_url)?;
        if timeout.is_zero() {
            return Err(ControllerError::InvalidConfig(
                "the controller timeout must be more than zero".into(),
            ));
        }
        let key = builder_key.trim();
        if key.is_empty() {
            return Err(ControllerError::InvalidConfig(
                "the builder key is empty".into(),
            ));
        }
        let mut key_header = HeaderValue::from_str(key).map_err(|_| {
            ControllerError::InvalidConfig(
                "the builder key contains characters not allowed in an HTTP header".into(),
            )
        })?;
        key_header.set_sensitive(true);

        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static(BUILDER_USER_AGENT));
        headers.insert(BUILDER_AUTH_HEADER, key_header);

        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .connect_timeout(timeout)
            // The controller is reached directly; a proxy from the environment would
            // get to see the builder key.
            .no_proxy()
            .build()
            .map_err(|err| {
                ControllerError::InvalidConfig(format!("cannot set up the HTTP client: {err}"))
            })?;
        Ok(Self {
            base_url,
            http,
            timeout,
        })
    }

    /// Sends one request (retrying reads once on a connection error or 5xx) and reads
    /// the whole (bounded) reply.
    async fn exchange(
        &self,
        call: Call,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, ControllerError> {
        let body = body.map(|value| value.to_string());
        let mut attempt = 1;
        loop {
            let outcome = self.exchange_once(call, &method, path, body.clone()).await;
            let transient = match &outcome {
                Ok(reply) => reply.status.is_server_error(),
                Err(err) => matches!(err, ControllerError::Unreachable { .. }),
            };
            if !(transient && call.may_retry() && attempt == 1) {
                return outcome;
            }
            tracing::warn!(
                call = call.name(),
                path,
                "controller call failed, retrying once"
            );
            attempt += 1;
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    async fn exchange_once(
        &self,
        call: Call,
        method: &Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Reply, ControllerError> {
        let started = Instant::now();
        let url = format!("{}{}", self.base_url, path);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.body(body);
        }
        let mut response = request
            .send()
            .await
            .map_err(|err| self.transport_error(&err))?;
        let status = response.status();
        let mut reply_body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| self.transport_error(&err))?
        {
            if reply_body.len() + chunk.len() > MAX_REPLY_BYTES {
                return Err(ControllerError::InvalidReply {
                    call: call.name(),
                    problem: format!("the reply is larger than {MAX_REPLY_BYTES} bytes"),
                });
            }
            reply_body.extend_from_slice(&chunk);
        }
        tracing::debug!(
            %method,
            path,
            status = status.as_u16(),
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "controller call"
        );
        Ok(Reply {
            status,
            body: reply_body,
        })
    }

    fn transport_error(&self, err: &reqwest::Error) -> ControllerError {
        if err.is_timeout() {
            return ControllerError::Timeout {
                url: self.base_url.clone(),
                timeout: self.timeout,
            };
        }
        ControllerError::Unreachable {
            url: self.base_url.clone(),
            reason: root_cause(err),
        }
    }
}

#[async_trait::async_trait]
impl Controller for DeisController {
    async fn user_for_key(&self, fingerprint: &str) -> Result<User, ControllerError> {
        require_valid_fingerprint(fingerprint)?;
        let path = format!("/v2/hooks/key/{fingerprint}");
        let reply = self
            .exchange(Call::KeyLookup, Method::GET, &path, None)
            .await?;
        match reply.status {
            StatusCode::OK => {
                parse_user(&reply.body).map_err(|problem| ControllerError::InvalidReply {
                    call: Call::KeyLookup.name(),
                    problem,
                })
            }
            StatusCode::NOT_FOUND => Err(ControllerError::UnknownKey {
                fingerprint: fingerprint.to_string(),
            }),
            status => Err(status_error(status, &reply.body)),
        }
    }

    async fn app_config(&self, user: &str, app: &AppName) -> Result<AppConfig, ControllerError> {
        let body = json!({ "receive_user": user, "receive_repo": app.as_str() });
        let reply = self
            .exchange(Call::Config, Method::POST, "/v2/hooks/config/", Some(&body))
            .await?;
        if !reply.status.is_success() {
            return Err(status_error(reply.status, &reply.body));
        }
        parse_config(&reply.body).map_err(|problem| ControllerError::InvalidReply {
            call: Call::Config.name(),
            problem,
        })
    }

    async fn release(&self, request: &ReleaseRequest<'_>) -> Result<u64, ControllerError> {
        let body = json!({
            "receive_user": request.user,
            "receive_repo": request.app.as_str(),
            "sha": request.short_sha()?,
            "image": request.artifact.reference(),
            "procfile": request.procfile,
            "dockerfile": if request.artifact.is_image() { "true" } else { "" },
        });
        let reply = self
            .exchange(Call::Build, Method::POST, "/v2/hooks/build/", Some(&body))
            .await?;
        if !reply.status.is_success() {
            return Err(status_error(reply.status, &reply.body));
        }
        parse_release_version(&reply.body).map_err(|problem| ControllerError::InvalidReply {
            call: Call::Build.name(),
            problem,
        })
    }

    async fn check(&self) -> Result<(), ControllerError> {
        let reply = self
            .exchange(Call::Health, Method::GET, "/healthz", None)
            .await?;
        if reply.status.is_success() {
            Ok(())
        } else {
            Err(status_error(reply.status, &reply.body))
        }
    }

    fn describe(&self) -> String {
        format!("Deis controller at {}", self.base_url)
    }
}

/// Accepts `http://host[:port][/prefix][/]`; returns it without the trailing `/`.
fn validated_base_url(base_url: &str) -> Result<String, ControllerError> {
    let invalid = |why: &str| {
        ControllerError::InvalidConfig(format!(
            "controller URL {:?} {why}",
            printable_snippet(base_url)
        ))
    };
    let parsed = reqwest::Url::parse(base_url.trim()).map_err(|_| invalid("is not a URL"))?;
    if parsed.scheme() != "http" {
        return Err(invalid("must start with http:// (plain HTTP only)"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "must not carry credentials (the builder key authenticates)",
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("must not have a query or fragment"));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// The innermost cause of a transport error ("Connection refused (os error 111)"),
/// which says more than reqwest's outer "error sending request".
fn root_cause(err: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    printable_snippet(&cause.to_string())
}

/// The error for a non-success status, with the texts users of the Deis SDK knew.
fn status_error(status: StatusCode, body: &[u8]) -> ControllerError {
    let code = status.as_u16();
    let detail = reply_detail(body);
    match code {
        401 => ControllerError::Unauthorized,
        403 => ControllerError::Forbidden,
        404 => ControllerError::NotFound(detail.unwrap_or_else(|| "Not Found".into())),
        422 => ControllerError::Unprocessable(detail.unwrap_or_default()),
        400 | 409 => ControllerError::Rejected {
            status: code,
            detail: detail
                .unwrap_or_else(|| format!("the controller rejected the request (HTTP {code})")),
        },
        500 => ControllerError::InternalServerError,
        _ => ControllerError::UnexpectedStatus {
            status: code,
            detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use crate::Artifact;

    use super::*;
    use crate::tests::ED25519_MD5;
    use deis_controller_double::{ControllerDouble, DoubleUser};

    const KEY: &str = "s3cret-builder-key";
    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn alice() -> DoubleUser {
        DoubleUser {
            username: "alice".into(),
            fingerprint: ED25519_MD5.into(),
            apps: vec!["web".into(), "worker".into()],
        }
    }

    fn client(double: &ControllerDouble) -> DeisController {
        DeisController::new(&double.url(), KEY.into(), Duration::from_secs(5)).unwrap()
    }

    fn procfile() -> BTreeMap<String, String> {
        BTreeMap::from([("web".to_string(), "python app.py".to_string())])
    }

    /// A local address nobody listens on.
    async fn closed_url() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{address}")
    }

    #[tokio::test]
    async fn key_lookup_sends_exact_request() {
        let double = ControllerDouble::start(KEY).await;
        double.add_user(alice());
        // Trailing slash on the base URL must not double up.
        let controller = DeisController::new(
            &format!("{}/", double.url()),
            KEY.into(),
            Duration::from_secs(5),
        )
        .unwrap();
        let user = controller.user_for_key(ED25519_MD5).await.unwrap();
        assert_eq!(user.username, "alice");
        assert!(user.may_push("web"));
        assert!(!user.may_push("we"));

        let requests = double.requests();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, format!("/v2/hooks/key/{ED25519_MD5}"));
        assert_eq!(request.headers["x-deis-builder-auth"], KEY);
        assert_eq!(request.headers["user-agent"], "deis-builder");
        assert_eq!(request.headers["content-type"], "application/json");
        assert_eq!(request.body, Value::Null);
    }

    #[tokio::test]
    async fn unknown_key_is_told_apart() {
        let double = ControllerDouble::start(KEY).await;
        let err = client(&double).user_for_key(ED25519_MD5).await.unwrap_err();
        assert!(err.is_unknown_key(), "{err}");
        assert_eq!(err.status(), Some(404));
    }

    #[tokio::test]
    async fn malformed_fingerprint_is_never_sent() {
        let double = ControllerDouble::start(KEY).await;
        let err = client(&double)
            .user_for_key("../../admin")
            .await
            .unwrap_err();
        assert!(
            matches!(err, ControllerError::InvalidFingerprint(_)),
            "{err}"
        );
        assert!(double.requests().is_empty());
    }

    #[tokio::test]
    async fn wrong_builder_key_is_unauthorized_and_not_leaked() {
        let double = ControllerDouble::start(KEY).await;
        double.add_user(alice());
        let controller =
            DeisController::new(&double.url(), "wrong-key".into(), Duration::from_secs(5)).unwrap();
        let err = controller.user_for_key(ED25519_MD5).await.unwrap_err();
        assert_eq!(err.to_string(), "Unauthorized: Missing or Invalid Token");
        assert_eq!(err.status(), Some(401));
        assert!(!format!("{controller:?}").contains("wrong-key"));
        assert!(!controller.describe().contains("wrong-key"));
    }

    #[tokio::test]
    async fn config_is_posted_and_values_converted() {
        let double = ControllerDouble::start(KEY).await;
        double.add_user(alice());
        double.set_config(
            "web",
            json!({"BUILDPACK_URL": "https://x/y.git#v1", "WORKERS": 4, "DEBUG": false}),
        );
        let config = client(&double)
            .app_config("alice", &AppName::parse("web").unwrap())
            .await
            .unwrap();
        assert_eq!(config.get("BUILDPACK_URL"), Some("https://x/y.git#v1"));
        assert_eq!(config.get("WORKERS"), Some("4"));
        assert_eq!(config.get("DEBUG"), Some("false"));
        assert!(!config.contains("DEIS_DISABLE_CACHE"));

        let request = &double.requests()[0];
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/v2/hooks/config/");
        assert_eq!(
            request.body,
            json!({"receive_user": "alice", "receive_repo": "web"})
        );
        assert_eq!(request.headers["x-deis-builder-auth"], KEY);
        assert_eq!(request.headers["content-type"], "application/json");
        assert_eq!(request.headers["user-agent"], "deis-builder");
    }

    #[tokio::test]
    async fn config_for_foreign_app_is_forbidden() {
        let double = ControllerDouble::start(KEY).await;
        double.add_user(alice());
        let err = client(&double)
            .app_config("alice", &AppName::parse("someone-elses").unwrap())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "You do not have permission to perform this action."
        );
    }

    #[tokio::test]
    async fn nested_config_value_is_an_invalid_reply() {
        let double = ControllerDouble::start(KEY).await;
        double.add_user(alice());
        double.set_config("web", json!({"DB": {"host": "x"}}));
        let err = client(&double)
            .app_config("alice", &AppName::parse("web").unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, ControllerError::InvalidReply { .. }), "{err}");
        assert!(err.to_string().contains("values.DB"), "{err}");
    }

    #[tokio::test]
    async fn build_hook_sends_exact_body_and_counts_versions() {
        let double = ControllerDouble::start(KEY).await;
        double.add_user(alice());
        let controller = client(&double);
        let procfile = procfile();
        let slug_build = ReleaseRequest {
            user: "alice",
            app: &AppName::parse("web").unwrap(),
            sha: SHA,
            artifact: &Artifact::Slug("home/web:git-01234567/push/slug.tgz".into()),
            procfile: &procfile,
        };
        assert_eq!(controller.release(&slug_build).await.unwrap(), 1);
        let docker_build = ReleaseRequest {
            artifact: &Artifact::Image("127.0.0.1:5000/web:git-01234567".into()),
            ..slug_build
        };
        assert_eq!(controller.release(&docker_build).await.unwrap(), 2);
        let other_app = ReleaseRequest {
            app: &AppName::parse("worker").unwrap(),
            ..slug_build
        };
        assert_eq!(controller.release(&other_app).await.unwrap(), 1);

        let builds = double.builds();
        assert_eq!(
            builds[0],
            json!({
                "receive_user": "alice",
                "receive_repo": "web",
                "sha": "01234567",
                "image": "home/web:git-01234567/push/slug.tgz",
                "procfile": {"web": "python app.py"},
                "dockerfile": "",
            })
        );
        assert_eq!(builds[1]["dockerfile"], "true");
        let request = &double.requests()[0];
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/v2/hooks/build/");
    }

    #[tokio::test]
    async fn build_errors_use_sdk_texts_and_are_never_retried() {
        let double = ControllerDouble::start(KEY).await;
        double.add_user(alice());
        let controller = client(&double);
        let procfile = procfile();
        let build = ReleaseRequest {
            user: "alice",
            app: &AppName::parse("web").unwrap(),
            sha: SHA,
            artifact: &Artifact::Slug("img".into()),
            procfile: &procfile,
        };
        let cases = [
            (400, json!({"detail": "bad image"}), "bad image"),
            (
                409,
                json!({"detail": "release in progress"}),
                "release in progress",
            ),
            (
                403,
                json!({"detail": "nope"}),
                "You do not have permission to perform this action.",
            ),
            (
                404,
                json!({"detail": "App matching query does not exist."}),
                "App matching query does not exist.",
            ),
            (
                422,
                json!({"detail": "procfile invalid"}),
                "Unable to process your request: procfile invalid",
            ),
            (500, json!({"detail": "boom"}), "Internal Server Error"),
        ];
        for (status, body, text) in cases {
            double.fail_builds_with(status, body);
            let before = double.requests().len();
            let err = controller.release(&build).await.unwrap_err();
            assert_eq!(err.to_string(), text);
            assert_eq!(err.status(), Some(status));
            assert_eq!(double.requests().len(), before + 1, "retried on {status}");
        }
        double.fail_builds_with(502, json!({}));
        let err = controller.release(&build).await.unwrap_err();
        assert!(err.to_string().contains("502"), "{err}");
        double.clear_build_failure();
        assert_eq!(controller.release(&build).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn bad_sha_is_refused_before_sending() {
        let double = ControllerDouble::start(KEY).await;
        let procfile = procfile();
        let build = ReleaseRequest {
            user: "alice",
            app: &AppName::parse("web").unwrap(),
            sha: "abc",
            artifact: &Artifact::Slug("img".into()),
            procfile: &procfile,
        };
        assert!(client(&double).release(&build).await.is_err());
        assert!(double.requests().is_empty());
    }

    #[tokio::test]
    async fn reads_are_retried_once_on_5xx() {
        let double = ControllerDouble::start(KEY).await;
        double.add_user(alice());
        let controller = client(&double);
        double.fail_next_requests(1, 503, json!({"detail": "starting"}));
        assert_eq!(
            controller.user_for_key(ED25519_MD5).await.unwrap().username,
            "alice"
        );
        assert_eq!(double.requests().len(), 2);

        double.fail_next_requests(2, 503, json!({}));
        let err = controller.check().await.unwrap_err();
        assert_eq!(err.status(), Some(503));
        assert_eq!(double.requests().len(), 4);
        controller.check().await.unwrap();
        assert_eq!(double.requests().last().unwrap().path, "/healthz");
    }

    #[tokio::test]
    async fn unreachable_controller_is_reported_with_its_url() {
        let url = closed_url().await;
        let controller = DeisController::new(&url, KEY.into(), Duration::from_secs(5)).unwrap();
        let err = controller.check().await.unwrap_err();
        assert!(err.is_unreachable(), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("controller unreachable at {url}")),
            "{err}"
        );
        assert!(!err.to_string().contains(KEY));
    }

    #[tokio::test]
    async fn slow_controller_times_out() {
        let double = ControllerDouble::start(KEY).await;
        double.add_user(alice());
        double.delay_replies(Duration::from_secs(2));
        let controller =
            DeisController::new(&double.url(), KEY.into(), Duration::from_millis(200)).unwrap();
        let err = controller.user_for_key(ED25519_MD5).await.unwrap_err();
        assert!(matches!(err, ControllerError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("no answer within 200ms"), "{err}");
    }

    #[tokio::test]
    async fn concurrent_calls_share_one_client() {
        let double = ControllerDouble::start(KEY).await;
        double.add_user(alice());
        let controller = Arc::new(client(&double));
        let lookups: Vec<_> = (0..8)
            .map(|_| {
                let controller = Arc::clone(&controller);
                tokio::spawn(async move { controller.user_for_key(ED25519_MD5).await })
            })
            .collect();
        for lookup in lookups {
            assert_eq!(lookup.await.unwrap().unwrap().username, "alice");
        }
    }

    #[test]
    fn base_url_is_validated() {
        let ok = |url: &str| {
            DeisController::new(url, KEY.into(), Duration::from_secs(1))
                .unwrap()
                .describe()
        };
        assert_eq!(ok("http://ctl:8000"), "Deis controller at http://ctl:8000");
        assert_eq!(ok("http://ctl:8000/"), "Deis controller at http://ctl:8000");
        assert_eq!(
            ok("http://ctl:8000/deis/"),
            "Deis controller at http://ctl:8000/deis"
        );
        for bad in [
            "ctl:8000",
            "https://ctl",
            "http://",
            "http://u:p@ctl",
            "http://ctl/?a=1",
            "",
        ] {
            assert!(
                DeisController::new(bad, KEY.into(), Duration::from_secs(1)).is_err(),
                "{bad}"
            );
        }
        assert!(DeisController::new("http://ctl", " ".into(), Duration::from_secs(1)).is_err());
        assert!(DeisController::new("http://ctl", "a\nb".into(), Duration::from_secs(1)).is_err());
        assert!(DeisController::new("http://ctl", KEY.into(), Duration::ZERO).is_err());
    }

    #[test]
    fn replies_are_validated_strictly() {
        assert_eq!(
            parse_user(br#"{"username":"a","apps":["x"]}"#).unwrap(),
            User {
                username: "a".into(),
                apps: Some(vec!["x".into()]),
                from: None,
            }
        );
        for (body, field) in [
            (&br#"{"username":"","apps":[]}"#[..], "username"),
            (br#"{"apps":[]}"#, "username"),
            (br#"{"username":5,"apps":[]}"#, "username"),
            (br#"{"username":"a"}"#, "apps"),
            (br#"{"username":"a","apps":"x"}"#, "apps"),
            (br#"{"username":"a","apps":["x",1]}"#, "apps[1]"),
            (br#"[]"#, "object"),
            (b"<html>", "JSON"),
        ] {
            let err = parse_user(body).unwrap_err();
            assert!(err.contains(field), "{err} should name {field}");
        }

        assert_eq!(
            parse_release_version(br#"{"release":{"version":7}}"#).unwrap(),
            7
        );
        for body in [
            &br#"{"release":{"version":0}}"#[..],
            br#"{"release":{"version":-1}}"#,
            br#"{"release":{"version":1.5}}"#,
            br#"{"release":{"version":"3"}}"#,
            br#"{"release":{}}"#,
            br#"{"version":3}"#,
        ] {
            let err = parse_release_version(body).unwrap_err();
            assert!(err.contains("release"), "{err}");
        }

        assert!(parse_config(br#"{"values":null}"#)
            .unwrap()
            .values
            .is_empty());
        assert!(parse_config(br#"{"owner":"a"}"#)
            .unwrap_err()
            .contains("values"));
        assert!(parse_config(br#"{"values":[]}"#)
            .unwrap_err()
            .contains("values"));
    }

    #[test]
    fn error_details_come_from_the_body() {
        let not_found = status_error(StatusCode::NOT_FOUND, br#"{"detail":"No app."}"#);
        assert_eq!(not_found.to_string(), "No app.");
        let plain = status_error(StatusCode::NOT_FOUND, b"Not here\n");
        assert_eq!(plain.to_string(), "Not here");
        let field_errors = status_error(StatusCode::BAD_REQUEST, br#"{"sha":["required"]}"#);
        assert_eq!(field_errors.to_string(), r#"{"sha":["required"]}"#);
        let empty = status_error(StatusCode::CONFLICT, b"");
        assert!(empty.to_string().contains("409"));
        let teapot = status_error(StatusCode::IM_A_TEAPOT, br#"{"detail":"short"}"#);
        assert_eq!(
            teapot.to_string(),
            "controller answered with unexpected HTTP status 418: short"
        );
    }
}
