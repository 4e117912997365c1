//! The entries the coordinator appends, one function per kind of event, so each call site (a
//! gRPC handler, the round driver, the frame-request sweeper) is one line.
//!
//! Changes that already happened use [`Core::audit_done`] (a failed append is logged, the
//! change stands); reads that disclose data return the append's error, and their callers
//! refuse to serve without it.

use serde_json::{Value, json};

use super::{DAEMON, actor, version_details};
use crate::core::Core;
use crate::error::Result;
use crate::identity::{Peer, Role};
use crate::round::RoundRecord;
use crate::store::{FrameRequestRow, VersionRow};

/// What entries about a round carry (never its number of contributors: that is private).
pub fn round_details(round: &RoundRecord) -> Value {
    json!({
        "lineage": round.lineage,
        "state": round.state.as_str(),
        "base_version": round.base_version,
        "strategy": round.spec.strategy.as_str(),
        "noise_mode": round.spec.noise_mode.as_str(),
        "target_clients": round.spec.target_clients,
        "min_clients": round.spec.min_clients,
        "clip_norm": decimal(round.spec.clip_norm),
        "noise_multiplier": decimal(round.spec.noise_multiplier),
        "sampling_rate": round.sampling_rate,
        "epsilon_after": round.epsilon_after,
    })
}

/// An `f32` as the decimal it prints as (0.01, not 0.009999999776482582).
fn decimal(value: f32) -> Value {
    value
        .to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

fn frame_request_details(row: &FrameRequestRow) -> Value {
    json!({
        "store_id": row.store_id,
        "camera_id": row.camera_id,
        "from_unix_ms": row.from_unix_ms,
        "to_unix_ms": row.to_unix_ms,
        "reason": row.reason,
        "requested_by": row.requested_by,
        "expires_unix_ms": row.expires_unix_ms,
    })
}

/// `round.start`, by the caller who started it.
pub async fn round_started(core: &Core, peer: &Peer, round: &RoundRecord) {
    let details = round_details(round);
    core.audit_done(&actor(peer), "round.start", &round.round_id, details)
        .await;
}

/// `round.cancel`.
pub async fn round_cancelled(core: &Core, peer: &Peer, round: &RoundRecord) {
    let details = round_details(round);
    core.audit_done(&actor(peer), "round.cancel", &round.round_id, details)
        .await;
}

/// `round.publish`, by the coordinator (the replica named in the details).
pub async fn round_published(core: &Core, round_id: &str, row: &VersionRow) {
    let mut details = version_details(row);
    details["replica"] = json!(core.settings.replica_id);
    core.audit_done(DAEMON, "round.publish", round_id, details)
        .await;
}

/// `round.fail`, by the coordinator.
pub async fn round_failed(core: &Core, round_id: &str, reason: &str) {
    let details = json!({"reason": reason, "replica": core.settings.replica_id});
    core.audit_done(DAEMON, "round.fail", round_id, details)
        .await;
}

/// `model.promote`: `lineage/version` pointed to by a channel.
pub async fn model_promoted(
    core: &Core,
    peer: &Peer,
    lineage: &str,
    version: u64,
    canary_percent: Option<u32>,
) {
    let details = json!({
        "lineage": lineage,
        "version": version,
        "channel": if canary_percent.is_some() { "canary" } else { "stable" },
        "percent": canary_percent.unwrap_or(100),
    });
    let subject = format!("{lineage}/{version}");
    core.audit_done(&actor(peer), "model.promote", &subject, details)
        .await;
}

/// `model.rollback`: the new version carrying `to_version`'s weights.
pub async fn model_rolled_back(core: &Core, peer: &Peer, to_version: u64, row: &VersionRow) {
    let mut details = version_details(row);
    details["to_version"] = json!(to_version);
    let subject = format!("{}/{}", row.lineage, row.version);
    core.audit_done(&actor(peer), "model.rollback", &subject, details)
        .await;
}

/// `metrics.query`, appended before the answer is sent: an error means "do not serve it".
pub async fn metrics_queried(core: &Core, peer: &Peer, query: String, rows: usize) -> Result<()> {
    let details = json!({"query": query, "rows": rows});
    core.audit(&actor(peer), "metrics.query", "", details).await
}

/// `frames.request`.
pub async fn frames_requested(core: &Core, peer: &Peer, row: &FrameRequestRow) {
    let details = frame_request_details(row);
    core.audit_done(&actor(peer), "frames.request", &row.request_id, details)
        .await;
}

/// `frames.approve` or `frames.deny`, by the privacy officer.
pub async fn frames_decided(
    core: &Core,
    peer: &Peer,
    row: &FrameRequestRow,
    approve: bool,
    note: &str,
) {
    let mut details = frame_request_details(row);
    details["note"] = json!(note);
    let action = if approve {
        "frames.approve"
    } else {
        "frames.deny"
    };
    core.audit_done(&actor(peer), action, &row.request_id, details)
        .await;
}

/// `frames.deliver`: a store's sealed export received.
pub async fn frames_delivered(
    core: &Core,
    store_id: &str,
    request_id: &str,
    frames: u32,
    bytes: u64,
) {
    let node = format!("{}/{store_id}", Role::Node);
    let details = json!({"frames": frames, "bytes": bytes});
    core.audit_done(&node, "frames.deliver", request_id, details)
        .await;
}

/// `frames.download`, appended before the export is sent: an error means "do not serve it".
pub async fn frames_downloaded(
    core: &Core,
    peer: &Peer,
    row: &FrameRequestRow,
    bytes: usize,
) -> Result<()> {
    let details = json!({"store_id": row.store_id, "frames": row.frames, "bytes": bytes});
    core.audit(&actor(peer), "frames.download", &row.request_id, details)
        .await
}

/// `frames.expire`: an expired request's export deleted. (Requests that expire without an
/// export are in their own trail, `frame_request_events`, only.)
pub async fn frames_expired(core: &Core, request_id: &str, store_id: &str) {
    let details = json!({"store_id": store_id, "export_deleted": true});
    core.audit_done(DAEMON, "frames.expire", request_id, details)
        .await;
}

/// What an `enrol` entry carries: the identity issued and its certificate's SHA-256 (DER).
pub fn enrolment_details(role: Role, name: &str, bundle: &crate::identity::BundlePaths) -> Value {
    json!({
        "role": role.as_str(),
        "name": name,
        "certificate_sha256": super::certificate_fingerprint(&bundle.cert()),
    })
}

/// What `key.rotate` and `key.revoke` entries carry: the key set written and what changed.
pub fn key_change_details(change: &crate::signing_keys::KeyChange) -> Value {
    json!({
        "new_signing_key": change.new_signing_key,
        "revoked": change.revoked,
        "key_set_version": change.set.set.version,
        "key_set_expires_unix_ms": change.set.set.expires_unix_ms,
    })
}
