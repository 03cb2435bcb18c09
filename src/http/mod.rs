//! Health endpoints: `/healthz` (SSH listening, storage and engine reachable) and
//! `/readiness` (plus the controller), 200 or 503 with a JSON body saying what failed.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::controller::Controller;
use crate::engine::Engine;
use crate::storage::ObjectStore;

#[derive(Clone)]
pub struct Health {
    pub store: Arc<dyn ObjectStore>,
    pub engine: Engine,
    pub controller: Arc<dyn Controller>,
}

pub async fn serve(
    listener: TcpListener,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readiness", get(readiness))
        .with_state(health);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

type Reply = (StatusCode, Json<Value>);

async fn healthz(State(health): State<Health>) -> Reply {
    report(health.checks(false).await)
}

async fn readiness(State(health): State<Health>) -> Reply {
    report(health.checks(true).await)
}

fn report(checks: Vec<(&'static str, Result<(), String>)>) -> Reply {
    let healthy = checks.iter().all(|(_, r)| r.is_ok());
    let body: serde_json::Map<String, Value> = checks
        .into_iter()
        .map(|(name, result)| {
            let value = match result {
                Ok(()) => json!("ok"),
                Err(error) => json!(error),
            };
            (name.to_owned(), value)
        })
        .collect();
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ok": healthy, "checks": body })))
}

impl Health {
    /// The SSH listener is bound before this server starts, so answering at all means it listens.
    async fn checks(&self, with_controller: bool) -> Vec<(&'static str, Result<(), String>)> {
        let (storage, engine) = tokio::join!(self.store.check(), self.engine.ping());
        let mut checks = vec![
            ("ssh", Ok(())),
            ("storage", storage.map_err(|e| e.to_string())),
            ("engine", engine.map_err(|e| e.to_string())),
        ];
        if with_controller {
            checks.push((
                "controller",
                self.controller.check().await.map_err(|e| e.to_string()),
            ));
        }
        checks
    }
}
