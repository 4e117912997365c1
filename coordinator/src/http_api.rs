//! The coordinator's HTTP routes, served on its gRPC port (same TLS listener, client certificate
//! required; HTTP/1.1 and HTTP/2): a JSON API for operations and ML engineers, the dashboard
//! page, and Prometheus telemetry.
//!
//! | route | action ([`Action`]) |
//! |---|---|
//! | `GET /` (dashboard) and `GET /api/v1/whoami` | any staff certificate |
//! | `GET /api/v1/rounds[?lineage=&limit=]`, `GET /api/v1/rounds/{id}` | `ReadRounds` |
//! | `GET /api/v1/models[?lineage=]` | `ReadModels` |
//! | `GET /api/v1/nodes` | `ReadNodes` |
//! | `GET /api/v1/privacy/{lineage}` | `ReadPrivacy` |
//! | `GET /api/v1/metrics[?from=&to=&group_by=]` | `ReadMetrics` |
//! | `GET /metrics` (Prometheus text) | `ReadTelemetry` |
//!
//! Every route reads the caller's role from the verified client certificate and checks it
//! against the same policy as the gRPC admin service; a refusal is `403` with a JSON
//! `{"error": ...}` naming the roles that may. Store ids are shown as opaque tokens to roles
//! that may not see them ([`crate::store_tokens`]). Only noised metric releases exist on the
//! coordinator, so only noised aggregates can be served.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use backroom_proto::v1 as pb;
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::admin_service::{
    channels_to_proto, privacy_to_proto, shown_round, store_view, version_to_proto,
};
use crate::auth::{Action, authorize, sees_store_ids};
use crate::core::Core;
use crate::identity::{Peer, Role, peer_from_der};
use crate::store_tokens::StoreTokens;

/// The dashboard: one page, no external assets (stores' networks may not reach a CDN).
const DASHBOARD_HTML: &str = include_str!("../web/dashboard.html");

/// Most rounds `GET /api/v1/rounds` returns (the newest).
const MAX_ROUNDS: usize = 500;

#[derive(Clone)]
pub struct HttpState {
    core: Arc<Core>,
    tokens: Arc<StoreTokens>,
}

/// The HTTP routes, to be merged with the gRPC services.
pub fn router(core: Arc<Core>, tokens: Arc<StoreTokens>) -> axum::Router {
    axum::Router::new()
        .route("/", get(dashboard))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/rounds", get(rounds))
        .route("/api/v1/rounds/{id}", get(round))
        .route("/api/v1/models", get(models))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/privacy/{lineage}", get(privacy))
        .route("/api/v1/metrics", get(metrics))
        .route("/metrics", get(telemetry))
        .fallback(not_found)
        .with_state(HttpState { core, tokens })
}

/// An HTTP error with a JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let code = match status.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(code, status.message())
    }
}

impl From<crate::error::CoordinatorError> for ApiError {
    fn from(error: crate::error::CoordinatorError) -> Self {
        tonic::Status::from(error).into()
    }
}

/// The caller, from the client certificate the TLS handshake verified.
pub struct Caller(pub Peer);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let certs = parts
            .extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .ok_or_else(|| {
                ApiError::new(StatusCode::UNAUTHORIZED, "a client certificate is required")
            })?;
        let leaf = certs.first().ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "a client certificate is required")
        })?;
        let peer = peer_from_der(leaf.as_ref()).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "client certificate carries no Backroom identity",
            )
        })?;
        Ok(Caller(peer))
    }
}

impl Caller {
    fn may(&self, action: Action) -> Result<&Peer, ApiError> {
        authorize(&self.0, action)?;
        Ok(&self.0)
    }

    fn staff(&self) -> Result<&Peer, ApiError> {
        if matches!(
            self.0.role,
            Role::Admin | Role::MlEngineer | Role::Operations
        ) {
            Ok(&self.0)
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{} certificate cannot use the HTTP API (allowed: admin, ml-engineer, operations)",
                    self.0.role.with_article()
                ),
            ))
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

async fn dashboard(caller: Caller) -> Result<Html<&'static str>, ApiError> {
    caller.staff()?;
    Ok(Html(DASHBOARD_HTML))
}

async fn whoami(caller: Caller) -> Result<Json<Value>, ApiError> {
    let peer = caller.staff()?;
    let all = [
        Action::StartRound,
        Action::CancelRound,
        Action::ReadRounds,
        Action::ReadQuarantine,
        Action::ReadModels,
        Action::ChangeRollout,
        Action::ReadMetrics,
        Action::ReadNodes,
        Action::ReadPrivacy,
        Action::RequestFrames,
        Action::ReadTelemetry,
    ];
    let allowed: Vec<String> = all
        .into_iter()
        .filter(|a| a.roles().contains(&peer.role))
        .map(|a| format!("{a:?}"))
        .collect();
    Ok(Json(json!({
        "role": peer.role.as_str(),
        "name": peer.name,
        "sees_store_ids": sees_store_ids(peer.role),
        "allowed": allowed,
    })))
}

#[derive(Deserialize)]
struct RoundsQuery {
    #[serde(default)]
    lineage: String,
    limit: Option<usize>,
}

async fn rounds(
    caller: Caller,
    State(state): State<HttpState>,
    Query(query): Query<RoundsQuery>,
) -> Result<Json<Value>, ApiError> {
    let peer = caller.may(Action::ReadRounds)?;
    let show = store_view(&state.tokens, peer);
    let all = state.core.store.list_rounds(&query.lineage).await?;
    let limit = query.limit.unwrap_or(100).min(MAX_ROUNDS);
    let rounds: Vec<Value> = all
        .iter()
        .rev()
        .take(limit)
        .map(|r| round_json(&shown_round(r, &show)))
        .collect();
    Ok(Json(json!({ "rounds": rounds, "total": all.len() })))
}

async fn round(
    caller: Caller,
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let peer = caller.may(Action::ReadRounds)?;
    let show = store_view(&state.tokens, peer);
    let round = state.core.round(&id).await?;
    Ok(Json(round_json(&shown_round(&round, &show))))
}

#[derive(Deserialize)]
struct LineageQuery {
    #[serde(default)]
    lineage: String,
}

async fn models(
    caller: Caller,
    State(state): State<HttpState>,
    Query(query): Query<LineageQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.may(Action::ReadModels)?;
    let rows = state.core.store.list_versions(&query.lineage).await?;
    let mut lineages: Vec<String> = rows.iter().map(|r| r.lineage.clone()).collect();
    lineages.dedup();
    let mut channels = serde_json::Map::new();
    for lineage in &lineages {
        let c = channels_to_proto(lineage, &state.core.store.channels(lineage).await?);
        channels.insert(
            lineage.clone(),
            json!({
                "stable_version": c.stable_version,
                "canary_version": nonzero(c.canary_version),
                "canary_percent": c.canary_percent,
                "updated_by": c.updated_by,
                "updated_unix_ms": c.updated_unix_ms,
            }),
        );
    }
    let versions: Vec<Value> = rows
        .into_iter()
        .map(|row| {
            let v = version_to_proto(row);
            let manifest: Value = serde_json::from_slice(&v.manifest).unwrap_or(Value::Null);
            json!({
                "lineage": v.lineage,
                "version": v.version,
                "parent_version": v.parent_version,
                "round_id": v.round_id,
                "weights_sha256": v.weights_sha256,
                "created_unix_ms": v.created_unix_ms,
                "epsilon_spent": manifest.get("epsilon_spent").cloned().unwrap_or(Value::Null),
                "delta": manifest.get("delta").cloned().unwrap_or(Value::Null),
                "manifest": manifest,
            })
        })
        .collect();
    Ok(Json(
        json!({ "versions": versions, "channels": Value::Object(channels) }),
    ))
}

async fn nodes(caller: Caller, State(state): State<HttpState>) -> Result<Json<Value>, ApiError> {
    let peer = caller.may(Action::ReadNodes)?;
    let show = store_view(&state.tokens, peer);
    let rows = state.core.store.list_nodes().await?;
    let nodes: Vec<Value> = rows
        .into_iter()
        .map(|n| {
            json!({
                "node": show(&n.node_id),
                "last_seen_unix_ms": n.last_seen_unix_ms,
                "lineage": n.lineage,
                "installed_version": n.installed_version,
                "backend": n.backend,
            })
        })
        .collect();
    Ok(Json(json!({
        "nodes": nodes,
        "store_tokens": !sees_store_ids(peer.role),
    })))
}

async fn privacy(
    caller: Caller,
    State(state): State<HttpState>,
    Path(lineage): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.may(Action::ReadPrivacy)?;
    let p = privacy_to_proto(state.core.privacy_state(&lineage).await?);
    let ledger: Vec<Value> = p
        .ledger
        .iter()
        .map(|e| {
            json!({
                "round_id": e.round_id,
                "sampling_rate": e.sampling_rate,
                "noise_multiplier": e.noise_multiplier,
                "status": e.status,
                "epsilon_after": e.epsilon_after,
                "created_unix_ms": e.created_unix_ms,
            })
        })
        .collect();
    Ok(Json(json!({
        "lineage": p.lineage,
        "epsilon_max": p.epsilon_max,
        "delta": p.delta,
        "epsilon_spent": p.epsilon_spent,
        "rdp_epsilon": p.rdp_epsilon,
        "pld_epsilon": p.pld_epsilon,
        "rounds_charged": p.rounds_charged,
        "rounds_remaining": p.rounds_remaining,
        "ledger": ledger,
    })))
}

#[derive(Deserialize)]
struct MetricsQuery {
    #[serde(default)]
    from: i64,
    #[serde(default)]
    to: i64,
    #[serde(default)]
    group_by: String,
}

async fn metrics(
    caller: Caller,
    State(state): State<HttpState>,
    Query(query): Query<MetricsQuery>,
) -> Result<Json<Value>, ApiError> {
    let peer = caller.may(Action::ReadMetrics)?;
    let show = store_view(&state.tokens, peer);
    let request = pb::QueryMetricsRequest {
        from_unix: query.from,
        to_unix: query.to,
        group_by: query.group_by,
    };
    let response = state
        .core
        .query_metrics_for(
            &format!("{}/{}", peer.role, peer.name),
            &request,
            &show,
            !sees_store_ids(peer.role),
        )
        .await?;
    // Every metric query is in the audit log, over HTTP as over gRPC.
    crate::audit::hooks::metrics_queried(
        &state.core,
        peer,
        format!("{request:?} (HTTP)"),
        response.rows.len(),
    )
    .await?;
    Ok(Json(metrics_json(&response)))
}

async fn telemetry(caller: Caller, State(state): State<HttpState>) -> Result<Response, ApiError> {
    caller.may(Action::ReadTelemetry)?;
    let text = state.core.render_telemetry().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

fn nonzero(v: u64) -> Value {
    if v == 0 { Value::Null } else { json!(v) }
}

/// The lower-case name of a wire round state ("unknown" for a value this build does not know).
pub fn state_name(state: i32) -> &'static str {
    match pb::RoundState::try_from(state) {
        Ok(pb::RoundState::Pending) => "pending",
        Ok(pb::RoundState::Sampling) => "sampling",
        Ok(pb::RoundState::Training) => "training",
        Ok(pb::RoundState::Aggregating) => "aggregating",
        Ok(pb::RoundState::Published) => "published",
        Ok(pb::RoundState::Failed) => "failed",
        Ok(pb::RoundState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

/// A round as JSON.
pub fn round_json(r: &pb::Round) -> Value {
    let spec = r.spec.clone().unwrap_or_default();
    json!({
        "round_id": r.round_id,
        "lineage": r.lineage,
        "state": state_name(r.state),
        "base_version": r.base_version,
        "published_version": nonzero(r.published_version),
        "sampled": r.sampled_nodes.len(),
        "sampled_nodes": r.sampled_nodes,
        "updates_accepted": r.updates_accepted,
        "updates_refused": r.updates_refused,
        "expected_clients": r.expected_clients,
        "sampling_rate": r.sampling_rate,
        "epsilon_after": r.epsilon_after,
        "failure_reason": r.failure_reason,
        "created_unix_ms": r.created_unix_ms,
        "updated_unix_ms": r.updated_unix_ms,
        "started_by": r.started_by,
        "spec": {
            "strategy": spec.strategy,
            "target_clients": spec.target_clients,
            "min_clients": spec.min_clients,
            "local_steps": spec.local_steps,
            "learning_rate": spec.learning_rate,
            "clip_norm": spec.clip_norm,
            "noise_multiplier": spec.noise_multiplier,
            "noise_mode": spec.noise_mode,
        },
    })
}

fn totals_json(totals: &[pb::MetricTotal]) -> Value {
    let mut out = serde_json::Map::new();
    for t in totals {
        out.insert(
            t.name.clone(),
            json!({
                "value": t.value,
                "noise_std": t.noise_std,
                "windows_released": t.windows_released,
                "windows_suppressed": t.windows_suppressed,
            }),
        );
    }
    Value::Object(out)
}

/// A metric query's answer as JSON: every value a noised release or a sum of them.
pub fn metrics_json(r: &pb::QueryMetricsResponse) -> Value {
    let rows: Vec<Value> = r
        .rows
        .iter()
        .map(|row| {
            let mut metrics = serde_json::Map::new();
            for m in &row.metrics {
                metrics.insert(
                    m.name.clone(),
                    json!({
                        "value": m.value,
                        "suppressed": m.suppressed,
                        "noise_scale": m.noise_scale,
                    }),
                );
            }
            json!({
                "store": row.store_id,
                "window_start_unix": row.window_start_unix,
                "window_secs": row.window_secs,
                "camera_id": row.camera_id,
                "rho": row.rho,
                "occupancy": row.occupancy,
                "metrics": Value::Object(metrics),
            })
        })
        .collect();
    let groups: Vec<Value> = r
        .groups
        .iter()
        .map(|g| {
            json!({
                "key": g.key,
                "stores": g.stores,
                "occupancy": g.occupancy,
                "occupancy_min": g.occupancy_min,
                "occupancy_max": g.occupancy_max,
                "totals": totals_json(&g.totals),
            })
        })
        .collect();
    json!({
        "noised": true,
        "store_tokens": r.store_tokens,
        "stores": r.stores,
        "occupancy": r.occupancy,
        "totals": totals_json(&r.totals),
        "groups": groups,
        "rows": rows,
    })
}
