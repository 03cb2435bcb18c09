//! A stand-in for the Deis Workflow controller, speaking the hooks API v2 wire format
//! on 127.0.0.1 and recording every request it gets.
//!
//! Routes (all but `/healthz` need the right `X-Deis-Builder-Auth`, else 401):
//! - `GET  /v2/hooks/key/<fingerprint>` → 200 `{"username","apps"}` or 404 `{"detail"}`
//! - `POST /v2/hooks/config/` `{"receive_user","receive_repo"}` → 200 config object,
//!   404 unknown user, 403 when the user does not have the app
//! - `POST /v2/hooks/build/` `{"receive_user","receive_repo","sha","image","procfile",
//!   "dockerfile"}` → 200 `{"release":{"version":N}}`, N = 1, 2, 3… per app
//! - `GET  /healthz` → 200 (see [`ControllerDouble::set_healthz_status`])
//!
//! Paths must match exactly, trailing slash included, as on the real controller.
//! Every reply carries `DEIS_API_VERSION` and `DEIS_PLATFORM_VERSION` headers.
//!
//! A test double: a dev-dependency of the controller crate and of the integration tests,
//! never linked into the builder.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};

/// The API version the double claims, as a 2.x controller would.
pub const DOUBLE_API_VERSION: &str = "2.3";
pub const DOUBLE_PLATFORM_VERSION: &str = "2.21.0";
/// Request bodies above this are refused (the builder never sends anything close).
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// A user the double knows, with one key.
#[derive(Debug, Clone)]
pub struct DoubleUser {
    pub username: String,
    /// As the builder sends it: 16 lowercase hex pairs joined by `:`.
    pub fingerprint: String,
    pub apps: Vec<String>,
}

/// One request as the double received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// Lower-case names; repeated headers are joined with `, `.
    pub headers: BTreeMap<String, String>,
    /// The body as JSON; `Null` when empty, a JSON string of the raw text when the body
    /// was not JSON.
    pub body: Value,
}

#[derive(Debug)]
struct DoubleState {
    builder_key: String,
    /// Keyed by fingerprint.
    users: Vec<DoubleUser>,
    configs: HashMap<String, Value>,
    /// Replaces every build hook success while set.
    build_failure: Option<(u16, Value)>,
    /// Replies for the next requests, whatever they are (healthz included).
    queued_failures: VecDeque<(u16, Value)>,
    healthz_status: u16,
    reply_delay: Duration,
    /// Build hooks are answered after this long; the release is cut then even if the
    /// builder stopped waiting (see [`ControllerDouble::delay_builds`]).
    build_delay: Duration,
    versions: HashMap<String, u64>,
    requests: Vec<RecordedRequest>,
    builds: Vec<Value>,
}

type SharedState = Arc<Mutex<DoubleState>>;

fn lock(state: &SharedState) -> MutexGuard<'_, DoubleState> {
    // A panicking test thread must not hide the recordings from the others.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The running double; the server stops when this is dropped.
#[derive(Debug)]
pub struct ControllerDouble {
    address: SocketAddr,
    state: SharedState,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for ControllerDouble {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl ControllerDouble {
    /// Starts the double on `127.0.0.1:<free port>`, accepting only `builder_key`.
    pub async fn start(builder_key: &str) -> ControllerDouble {
        let state = Arc::new(Mutex::new(DoubleState {
            builder_key: builder_key.to_string(),
            users: Vec::new(),
            configs: HashMap::new(),
            build_failure: None,
            queued_failures: VecDeque::new(),
            healthz_status: 200,
            reply_delay: Duration::ZERO,
            build_delay: Duration::ZERO,
            versions: HashMap::new(),
            requests: Vec::new(),
            builds: Vec::new(),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("controller double: bind 127.0.0.1:0");
        let address = listener
            .local_addr()
            .expect("controller double: local address");
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, router).await {
                eprintln!("controller double stopped: {err}");
            }
        });
        ControllerDouble {
            address,
            state,
            server,
        }
    }

    /// `http://127.0.0.1:<port>` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Registers a user (or another key of the same user: add it again with the other
    /// fingerprint).
    pub fn add_user(&self, user: DoubleUser) {
        lock(&self.state).users.push(user);
    }

    /// Sets an app's config `values` (a JSON object, sent back as is).
    pub fn set_config(&self, app: &str, values: Value) {
        lock(&self.state).configs.insert(app.to_string(), values);
    }

    /// From now on, build hook calls that pass auth and body checks get `status` and
    /// `body` instead of a release (e.g. 403 `{"detail": "..."}`), until
    /// [`clear_build_failure`](Self::clear_build_failure).
    pub fn fail_builds_with(&self, status: u16, body: Value) {
        lock(&self.state).build_failure = Some((status, body));
    }

    pub fn clear_build_failure(&self) {
        lock(&self.state).build_failure = None;
    }

    /// The next `count` requests of any kind get `status` and `body` (checked before
    /// auth), then normal service resumes. For retry tests.
    pub fn fail_next_requests(&self, count: usize, status: u16, body: Value) {
        let mut state = lock(&self.state);
        for _ in 0..count {
            state.queued_failures.push_back((status, body.clone()));
        }
    }

    /// Status `/healthz` answers with (200 by default).
    pub fn set_healthz_status(&self, status: u16) {
        lock(&self.state).healthz_status = status;
    }

    /// Waits this long before answering any request. For timeout tests.
    pub fn delay_replies(&self, delay: Duration) {
        lock(&self.state).reply_delay = delay;
    }

    /// Build hooks are answered only after `delay`. The release is cut at the end of the
    /// delay whether or not the builder still waits, as a real controller finishes its work
    /// after the client gave up. For release timeout and cancellation tests.
    pub fn delay_builds(&self, delay: Duration) {
        lock(&self.state).build_delay = delay;
    }

    /// Every request received so far, in order (including refused ones).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).requests.clone()
    }

    /// Bodies of the build hook calls that cut a release, in order.
    pub fn builds(&self) -> Vec<Value> {
        lock(&self.state).builds.clone()
    }

    /// The last version released for `app` (0 when none).
    pub fn last_version(&self, app: &str) -> u64 {
        lock(&self.state).versions.get(app).copied().unwrap_or(0)
    }
}

async fn handle(State(state): State<SharedState>, request: Request) -> Response {
    let mut response = route(&state, request).await;
    let headers = response.headers_mut();
    headers.insert(
        "deis_api_version",
        HeaderValue::from_static(DOUBLE_API_VERSION),
    );
    headers.insert(
        "deis_platform_version",
        HeaderValue::from_static(DOUBLE_PLATFORM_VERSION),
    );
    response
}

async fn route(state: &SharedState, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => return detail(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large."),
    };
    let body_json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_string())
            .and_modify(|existing| {
                existing.push_str(", ");
                existing.push_str(&value);
            })
            .or_insert(value);
    }
    let path = parts.uri.path().to_string();
    let presented_key = headers.get("x-deis-builder-auth").cloned();

    let (delay, queued_failure) = {
        let mut state = lock(state);
        state.requests.push(RecordedRequest {
            method: parts.method.to_string(),
            path: path.clone(),
            headers,
            body: body_json.clone(),
        });
        (state.reply_delay, state.queued_failures.pop_front())
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some((status, body)) = queued_failure {
        return reply(status, body);
    }

    if path == "/healthz" {
        if parts.method != Method::GET {
            return method_not_allowed(&parts.method);
        }
        let status = lock(state).healthz_status;
        return reply(status, Value::Null);
    }

    let build_delay = lock(state).build_delay;
    if path == "/v2/hooks/build/" && parts.method == Method::POST && !build_delay.is_zero() {
        let authorized = presented_key.as_deref() == Some(lock(state).builder_key.as_str());
        let state = Arc::clone(state);
        // Detached: dropping this handler (the builder hung up) does not stop the release.
        let release = tokio::spawn(async move {
            tokio::time::sleep(build_delay).await;
            if !authorized {
                return detail(
                    StatusCode::UNAUTHORIZED,
                    "Authentication credentials were not provided.",
                );
            }
            build_hook(&mut lock(&state), body_json)
        });
        return release.await.unwrap_or_else(|_| {
            detail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the double's release task failed",
            )
        });
    }

    let mut state = lock(state);
    if presented_key.as_deref() != Some(state.builder_key.as_str()) {
        return detail(
            StatusCode::UNAUTHORIZED,
            "Authentication credentials were not provided.",
        );
    }
    if let Some(fingerprint) = path.strip_prefix("/v2/hooks/key/") {
        if parts.method != Method::GET {
            return method_not_allowed(&parts.method);
        }
        return key_lookup(&state, fingerprint);
    }
    match path.as_str() {
        "/v2/hooks/config/" if parts.method == Method::POST => config_hook(&state, &body_json),
        "/v2/hooks/build/" if parts.method == Method::POST => build_hook(&mut state, body_json),
        "/v2/hooks/config/" | "/v2/hooks/build/" => method_not_allowed(&parts.method),
        _ => detail(StatusCode::NOT_FOUND, "Not found."),
    }
}

fn key_lookup(state: &DoubleState, fingerprint: &str) -> Response {
    match state
        .users
        .iter()
        .find(|user| user.fingerprint == fingerprint)
    {
        Some(user) => reply(200, json!({"username": user.username, "apps": user.apps})),
        None => detail(StatusCode::NOT_FOUND, "No Key matches the given query."),
    }
}

fn config_hook(state: &DoubleState, body: &Value) -> Response {
    let (Some(user), Some(app)) = (
        body.get("receive_user").and_then(Value::as_str),
        body.get("receive_repo").and_then(Value::as_str),
    ) else {
        return detail(
            StatusCode::BAD_REQUEST,
            "receive_user and receive_repo are required strings.",
        );
    };
    if let Some(refusal) = refusal_for(state, user, app) {
        return refusal;
    }
    let values = state.configs.get(app).cloned().unwrap_or_else(|| json!({}));
    reply(
        200,
        json!({
            "owner": user,
            "app": app,
            "values": values,
            "memory": {},
            "cpu": {},
            "tags": {},
            "registry": {},
            "healthcheck": {},
            "created": "2024-01-01T00:00:00Z",
            "updated": "2024-01-01T00:00:00Z",
            "uuid": "00000000-0000-4000-8000-000000000000",
        }),
    )
}

fn build_hook(state: &mut DoubleState, body: Value) -> Response {
    for field in ["receive_user", "receive_repo", "sha", "image", "dockerfile"] {
        if !body.get(field).is_some_and(Value::is_string) {
            return detail(
                StatusCode::BAD_REQUEST,
                &format!("{field} is required and must be a string."),
            );
        }
    }
    if !body.get("procfile").is_some_and(Value::is_object) {
        return detail(
            StatusCode::BAD_REQUEST,
            "procfile is required and must be an object.",
        );
    }
    if let Some((status, failure_body)) = state.build_failure.clone() {
        return reply(status, failure_body);
    }
    let user = body["receive_user"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let app = body["receive_repo"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if let Some(refusal) = refusal_for(state, &user, &app) {
        return refusal;
    }
    let version = state.versions.entry(app).or_insert(0);
    *version += 1;
    let version = *version;
    state.builds.push(body);
    reply(200, json!({"release": {"version": version}}))
}

/// The refusal, if any: 404 for an unknown user, 403 when the user lacks the app.
fn refusal_for(state: &DoubleState, user: &str, app: &str) -> Option<Response> {
    let known: Vec<&DoubleUser> = state
        .users
        .iter()
        .filter(|candidate| candidate.username == user)
        .collect();
    if known.is_empty() {
        return Some(detail(
            StatusCode::NOT_FOUND,
            "No User matches the given query.",
        ));
    }
    if !known
        .iter()
        .any(|candidate| candidate.apps.iter().any(|owned| owned == app))
    {
        return Some(detail(
            StatusCode::FORBIDDEN,
            "You do not have permission to perform this action.",
        ));
    }
    None
}

fn detail(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "detail": text }))).into_response()
}

fn method_not_allowed(method: &Method) -> Response {
    detail(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("Method \"{method}\" not allowed."),
    )
}

/// `body` as JSON (an empty body for `Null`) with any status, even odd ones.
fn reply(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if body.is_null() {
        return (status, Body::empty()).into_response();
    }
    (status, Json(body)).into_response()
}
