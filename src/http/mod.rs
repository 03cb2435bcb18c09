//! HTTP endpoints: `/healthz` (SSH listening, storage and engine reachable) and
//! `/readiness` (plus the controller), 200 or 503 with a JSON body saying what failed;
//! `/metrics` (Prometheus text format); and `POST /v2/hooks/import/`, the image import the
//! controller calls with the builder key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::collections::BTreeMap;

use serde::Deserialize;

use deis_controller::Controller;
use deis_executor::Engine;
use deis_frontdoor::admission::{Admission, Refusal};
use deis_metrics::BuildKind;
use deis_pipeline::push::Output;
use deis_pipeline::{BuildError, Failure, ImportRequest, Imported, Pipeline};
use deis_slug::ProcessTypes;
use deis_storage::ObjectStore;
use deis_types::names::{AppName, ImageRef};

#[derive(Clone)]
pub struct Health {
    pub store: Arc<dyn ObjectStore>,
    /// App leases, when replicas share the store: readiness reads one.
    pub leases: Option<deis_lease::Leases>,
    pub engine: Engine,
    pub controller: Arc<dyn Controller>,
    /// True while the SSH accept loop runs; it stops only on shutdown.
    pub ssh_listening: Arc<AtomicBool>,
}

/// Longest a single health check may take before it counts as failed: a load balancer
/// must get an answer, not a hung request.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the import endpoint needs.
#[derive(Clone)]
pub struct Imports {
    /// Imports take the app's lock and a build slot like pushes do, are refused while
    /// the builder drains and are cancelled when the grace period ends.
    pub admission: Admission,
    /// The server's tracker of running work: shutdown waits for imports like for pushes.
    pub tasks: TaskTracker,
    pub pipeline: Arc<Pipeline>,
    /// `None` turns the endpoint off.
    pub builder_key: Option<String>,
}

#[derive(Clone)]
struct AppState {
    health: Health,
    imports: Imports,
}

pub async fn serve(
    listener: TcpListener,
    health: Health,
    imports: Imports,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readiness", get(readiness))
        .route("/metrics", get(metrics))
        .route("/v2/hooks/import/", post(import))
        .with_state(AppState { health, imports });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

type Reply = (StatusCode, Json<Value>);

async fn healthz(State(state): State<AppState>) -> Reply {
    report(state.health.checks(false).await)
}

async fn readiness(State(state): State<AppState>) -> Reply {
    report(state.health.checks(true).await)
}

async fn metrics() -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        deis_metrics::render(),
    )
}

/// Body of `POST /v2/hooks/import/`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportBody {
    app: String,
    image: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    procfile: BTreeMap<String, String>,
    /// Credentials for the registry the image comes from.
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

fn detail(status: StatusCode, message: impl Into<String>) -> Reply {
    (status, Json(json!({ "detail": message.into() })))
}

/// Most output an import reply carries; the rest is cut (the log has it all).
const MAX_IMPORT_OUTPUT: usize = 256 * 1024;

/// What an import arriving while the builder drains answers (503).
const DRAINING: &str = "the builder is restarting; try again in a moment";

/// What an import stopped by the shutdown answers (503).
pub const IMPORT_RESTARTING: &str =
    "the builder is restarting: this import was not deployed; try again in a minute";

async fn import(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Reply {
    let imports = &state.imports;
    if let Err(refused) = authorize(imports.builder_key.as_deref(), &headers) {
        return refused;
    }
    let request = match parse_import(&body) {
        Ok(request) => request,
        Err(message) => return detail(StatusCode::BAD_REQUEST, message),
    };
    let admission = &imports.admission;
    let lock = match admission.try_lock(&request.app).await {
        Ok(lock) => Arc::new(lock),
        Err(Refusal::Busy { builder }) => {
            let on = builder
                .map(|id| format!(" (on builder {id})"))
                .unwrap_or_default();
            return detail(
                StatusCode::CONFLICT,
                format!("another push to {} is in progress{on}", request.app),
            );
        }
        Err(Refusal::Unavailable(error)) => {
            return detail(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot take the app's lease in the shared store: {error}"),
            )
        }
        Err(_) => return detail(StatusCode::SERVICE_UNAVAILABLE, DRAINING),
    };
    let (out, collector) = collect_output();
    // A caller that hangs up while waiting leaves the line (axum drops this future).
    let cancel = CancellationToken::new();
    let Ok(slot) = admission.slot(&out, &cancel).await else {
        return detail(StatusCode::SERVICE_UNAVAILABLE, DRAINING);
    };
    // Its own task, tracked like a push: shutdown waits for it through the grace period
    // (then cancels it), and a caller hanging up cannot drop it half-way, tags and all.
    let pipeline = imports.pipeline.clone();
    let admission = admission.clone();
    let app = request.app.clone();
    let task = imports.tasks.spawn(async move {
        let _slot = slot;
        let _lease_watch = lock.stop_if_lost(&cancel, &out);
        let started = Instant::now();
        let result = admission
            .run(
                &cancel,
                pipeline.import(&request, Some(lock.as_ref()), &out, &cancel),
            )
            .await;
        deis_metrics::build_finished(BuildKind::Import, started.elapsed());
        result
    });
    let result = task.await;
    let output = collector.await.unwrap_or_default();
    let result = match result {
        Ok(result) => result,
        Err(error) => {
            tracing::error!(%error, %app, "import task failed");
            return detail(StatusCode::INTERNAL_SERVER_ERROR, "the import failed");
        }
    };
    import_reply(&app, result, output)
}

/// The builder key callers must present (the Deis builder key); none turns imports off.
fn authorize(expected: Option<&str>, headers: &HeaderMap) -> Result<(), Reply> {
    let Some(expected) = expected else {
        return Err(detail(
            StatusCode::FORBIDDEN,
            "image import is off: start the builder with a builder key",
        ));
    };
    let given = headers
        .get("x-deis-builder-auth")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if constant_time_eq(given, expected.as_bytes()) {
        Ok(())
    } else {
        Err(detail(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: Missing or Invalid Token",
        ))
    }
}

/// An output the import writes to, and the task that keeps its first
/// [`MAX_IMPORT_OUTPUT`] bytes for the reply.
fn collect_output() -> (Output, tokio::task::JoinHandle<String>) {
    let (out, mut rx) = Output::channel(64);
    let collector = tokio::spawn(async move {
        let mut log = Vec::new();
        while let Some(chunk) = rx.recv().await {
            let room = MAX_IMPORT_OUTPUT.saturating_sub(log.len());
            log.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        String::from_utf8_lossy(&log).into_owned()
    });
    (out, collector)
}

fn import_reply(app: &AppName, result: Result<Imported, BuildError>, output: String) -> Reply {
    match result {
        Ok(imported) => (
            StatusCode::OK,
            Json(json!({
                "release": { "version": imported.version },
                "image": imported.image,
                "output": output,
            })),
        ),
        Err(BuildError::Cancelled) => {
            tracing::warn!(%app, "import cancelled: the grace period is over");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "detail": IMPORT_RESTARTING, "output": output })),
            )
        }
        Err(error) => {
            tracing::warn!(%error, failure = %error.failure(), %app, "import failed");
            (
                import_failure_status(&error),
                Json(json!({ "detail": error.to_string(), "output": output })),
            )
        }
    }
}

/// What a failed import answers, by [`Failure`]: an outage (controller, engine, storage,
/// shutdown) is 503, so the caller knows to retry; a refusal is the controller's own 4xx
/// (403, 404, …) or else 502; anything else (a bad or missing image) is 422.
fn import_failure_status(error: &BuildError) -> StatusCode {
    match (error.failure(), error) {
        (Failure::Outage, _) => StatusCode::SERVICE_UNAVAILABLE,
        (Failure::Refused, BuildError::Controller(e)) => e
            .status()
            .filter(|code| (400..500).contains(code))
            .and_then(|code| StatusCode::from_u16(code).ok())
            .unwrap_or(StatusCode::BAD_GATEWAY),
        (Failure::Refused, _) => StatusCode::BAD_GATEWAY,
        (Failure::Invalid, _) => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

fn parse_import(body: &[u8]) -> Result<ImportRequest, String> {
    let body: ImportBody =
        serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))?;
    let app = AppName::parse(&body.app).map_err(|e| e.to_string())?;
    let image = ImageRef::parse(&body.image).map_err(|e| e.to_string())?;
    for name in body.procfile.keys() {
        deis_slug::validate_process_type(name).map_err(|e| format!("procfile: {e}"))?;
    }
    let source_credentials = match (body.username, body.password) {
        (Some(username), Some(password)) => Some((username, crate::config::Secret::new(password))),
        (None, None) => None,
        _ => {
            return Err(
                "give both username and password for the source registry, or neither".into(),
            )
        }
    };
    Ok(ImportRequest {
        app,
        image,
        user: body.user.unwrap_or_else(|| "admin".to_owned()),
        process_types: ProcessTypes(body.procfile),
        source_credentials,
    })
}

/// Compares secrets without leaking their common prefix length through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `{"status":"ok"|"error","ok":bool,"checks":{"ssh":"ok","storage":"error: …",…}}`.
fn report(checks: Vec<(&'static str, Result<(), String>)>) -> Reply {
    let healthy = checks.iter().all(|(_, r)| r.is_ok());
    let body: serde_json::Map<String, Value> = checks
        .into_iter()
        .map(|(name, result)| {
            let value = match result {
                Ok(()) => json!("ok"),
                Err(error) => json!(format!("error: {error}")),
            };
            (name.to_owned(), value)
        })
        .collect();
    let (status, word) = if healthy {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "error")
    };
    (
        status,
        Json(json!({ "status": word, "ok": healthy, "checks": body })),
    )
}

/// Runs one check under [`CHECK_TIMEOUT`].
async fn bounded<E: std::fmt::Display>(
    check: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

impl Health {
    async fn checks(&self, with_controller: bool) -> Vec<(&'static str, Result<(), String>)> {
        let ssh = if self.ssh_listening.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("shutting down".to_owned())
        };
        let controller = async {
            if with_controller {
                Some(bounded(self.controller.check()).await)
            } else {
                None
            }
        };
        let leases = async {
            match &self.leases {
                Some(leases) if with_controller => Some(bounded(leases.check()).await),
                _ => None,
            }
        };
        let (storage, engine, controller, leases) = tokio::join!(
            bounded(self.store.check()),
            bounded(self.engine.ping()),
            controller,
            leases
        );
        let mut checks = vec![("ssh", ssh), ("storage", storage), ("engine", engine)];
        if let Some(controller) = controller {
            checks.push(("controller", controller));
        }
        if let Some(leases) = leases {
            checks.push(("leases", leases));
        }
        checks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_reports_name_what_failed() {
        let (status, Json(body)) = report(vec![("ssh", Ok(())), ("engine", Ok(()))]);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"status": "ok", "ok": true, "checks": {"ssh": "ok", "engine": "ok"}})
        );
        let (status, Json(body)) = report(vec![
            ("ssh", Ok(())),
            ("storage", Err("cannot reach http://s3:9000".to_owned())),
        ]);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "error");
        assert_eq!(
            body["checks"]["storage"],
            "error: cannot reach http://s3:9000"
        );
        assert_eq!(body["checks"]["ssh"], "ok");
    }
    use deis_controller::ControllerError;
    use deis_executor::EngineError;

    #[test]
    fn import_failures_tell_outages_from_refusals() {
        let cases = [
            (
                BuildError::Controller(ControllerError::Forbidden),
                StatusCode::FORBIDDEN,
            ),
            (
                BuildError::Controller(ControllerError::InternalServerError),
                StatusCode::BAD_GATEWAY,
            ),
            (
                BuildError::Engine(EngineError::Connect("down".into())),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                BuildError::EngineLost("the engine stopped during the build".into()),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                BuildError::Controller(ControllerError::Timeout {
                    url: "http://127.0.0.1:1".into(),
                    timeout: Duration::from_secs(1),
                }),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (BuildError::Cancelled, StatusCode::SERVICE_UNAVAILABLE),
            (
                BuildError::Engine(EngineError::Registry("unauthorized".into())),
                StatusCode::BAD_GATEWAY,
            ),
            (
                BuildError::Engine(EngineError::Pull("not found".into())),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(import_failure_status(&error), status, "{error}");
        }
        assert!(constant_time_eq(b"key", b"key"));
        assert!(!constant_time_eq(b"key", b"kex"));
        assert!(!constant_time_eq(b"key", b"keys"));
    }
}
