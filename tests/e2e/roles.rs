//! Roles: every gRPC method and HTTP route of the coordinator admits exactly the roles its
//! policy names, from the client certificate; operations see stores only as opaque tokens.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::StatusCode;
use backroom::sandbox::{Sandbox, issue_bundle};
use backroom_coordinator::identity::Role;
use backroom_proto::v1 as pb;
use backroom_proto::v1::admin_service_client::AdminServiceClient;
use backroom_proto::v1::node_service_client::NodeServiceClient;
use backroom_proto::v1::privacy_service_client::PrivacyServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{http_get, run_round, shutdown, spec, start, test_options};

const ADMIN_RPCS: [&str; 16] = [
    "RequestFrames",
    "ListFrameRequests",
    "DownloadFrames",
    "StartRound",
    "GetRound",
    "ListRounds",
    "WatchRound",
    "CancelRound",
    "ListQuarantine",
    "ListModels",
    "PromoteModel",
    "RollbackModel",
    "GetModelChannels",
    "QueryMetrics",
    "ListNodes",
    "GetPrivacy",
];

/// The policy, written out independently of the coordinator's table: which roles may call each
/// admin RPC.
fn admin_rpc_roles(rpc: &str) -> &'static [Role] {
    use Role::{Admin, MlEngineer, Operations};
    match rpc {
        "GetRound" | "ListRounds" | "WatchRound" | "ListModels" | "GetModelChannels"
        | "QueryMetrics" | "ListNodes" | "GetPrivacy" => &[Admin, MlEngineer, Operations],
        _ => &[Admin, MlEngineer],
    }
}

const HTTP_ROUTES: [&str; 9] = [
    "/",
    "/api/v1/whoami",
    "/api/v1/rounds",
    "/api/v1/rounds/ROUND",
    "/api/v1/models",
    "/api/v1/nodes",
    "/api/v1/privacy/shelfnet",
    "/api/v1/metrics?group_by=hour",
    "/metrics",
];

fn http_roles(_route: &str) -> &'static [Role] {
    // Every HTTP route reads; all three staff roles may read what it serves.
    &[Role::Admin, Role::MlEngineer, Role::Operations]
}

/// Calls `rpc` with a harmless request; the error, if any.
async fn call_admin(channel: &Channel, rpc: &str, round_id: &str) -> Result<(), tonic::Status> {
    let mut c = AdminServiceClient::new(channel.clone());
    let round = || pb::GetRoundRequest {
        round_id: round_id.to_owned(),
    };
    let lineage = "shelfnet".to_owned();
    match rpc {
        "RequestFrames" => c
            .request_frames(pb::RequestFramesRequest {
                store_id: "store-0".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "ListFrameRequests" => c
            .list_frame_requests(pb::ListFrameRequestsRequest::default())
            .await
            .map(drop),
        "DownloadFrames" => c
            .download_frames(pb::GetFrameRequestRequest {
                request_id: "fr-none".into(),
            })
            .await
            .map(drop),
        // Refused on its spec after the role check (no spec): the role check comes first.
        "StartRound" => c
            .start_round(pb::StartRoundRequest {
                lineage,
                spec: None,
            })
            .await
            .map(drop),
        "GetRound" => c.get_round(round()).await.map(drop),
        "ListRounds" => c
            .list_rounds(pb::ListRoundsRequest::default())
            .await
            .map(drop),
        "WatchRound" => c.watch_round(round()).await.map(drop),
        // A published round cannot be cancelled: allowed callers get FailedPrecondition.
        "CancelRound" => c.cancel_round(round()).await.map(drop),
        "ListQuarantine" => c
            .list_quarantine(pb::ListQuarantineRequest::default())
            .await
            .map(drop),
        "ListModels" => c
            .list_models(pb::ListModelsRequest::default())
            .await
            .map(drop),
        "PromoteModel" => c
            .promote_model(pb::PromoteModelRequest {
                lineage,
                version: 999,
                channel: "stable".into(),
                percent: 0,
            })
            .await
            .map(drop),
        "RollbackModel" => c
            .rollback_model(pb::RollbackModelRequest {
                lineage,
                to_version: 999,
            })
            .await
            .map(drop),
        "GetModelChannels" => c
            .get_model_channels(pb::GetModelChannelsRequest { lineage })
            .await
            .map(drop),
        "QueryMetrics" => c
            .query_metrics(pb::QueryMetricsRequest::default())
            .await
            .map(drop),
        "ListNodes" => c.list_nodes(pb::ListNodesRequest {}).await.map(drop),
        "GetPrivacy" => c
            .get_privacy(pb::GetPrivacyRequest { lineage })
            .await
            .map(drop),
        other => panic!("no call for {other}"),
    }
}

fn denied(result: &Result<(), tonic::Status>) -> bool {
    matches!(result, Err(s) if s.code() == Code::PermissionDenied)
}

async fn channel_for(sandbox: &Sandbox, role: Role, dir: &std::path::Path) -> Channel {
    let name = format!("{}-1", role.as_str());
    let bundle = issue_bundle(&sandbox.coordinator_dir, role, &name, &dir.join(&name))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    backroom::client::connect(&sandbox.coordinator_url, "localhost", &bundle)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_and_route_admits_exactly_its_roles() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut sandbox = start(test_options(dir.path(), 2)).await;
    let round = run_round(&mut sandbox, spec(2, 0.0)).await;
    let bundles = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut channels = Vec::new();
    for role in Role::ALL {
        channels.push((role, channel_for(&sandbox, role, bundles.path()).await));
    }

    let mut checked = 0;
    for (role, channel) in &channels {
        // The admin service: exactly the roles of each RPC.
        for rpc in ADMIN_RPCS {
            let result = call_admin(channel, rpc, &round.round_id).await;
            let allowed = admin_rpc_roles(rpc).contains(role);
            assert_eq!(
                !denied(&result),
                allowed,
                "{role} calling {rpc}: {result:?} (allowed: {allowed})"
            );
            if let Err(status) = &result {
                assert_ne!(
                    status.code(),
                    Code::Unauthenticated,
                    "{role} {rpc}: {status}"
                );
                if !allowed {
                    // The refusal says who may.
                    assert!(status.message().contains(role.as_str()), "{status}");
                }
            }
            checked += 1;
        }
        // The node service: node certificates only.
        let hello = NodeServiceClient::new(channel.clone())
            .hello(pb::HelloRequest::default())
            .await
            .map(drop);
        assert_eq!(
            !denied(&hello),
            *role == Role::Node,
            "{role} hello: {hello:?}"
        );
        // The privacy service: privacy officers only.
        let decide = PrivacyServiceClient::new(channel.clone())
            .list_frame_requests(pb::ListFrameRequestsRequest::default())
            .await
            .map(drop);
        assert_eq!(
            !denied(&decide),
            *role == Role::PrivacyOfficer,
            "{role} privacy: {decide:?}"
        );
        // Every HTTP route.
        for route in HTTP_ROUTES {
            let path = route.replace("ROUND", &round.round_id);
            let (status, body) = http_get(channel, &path).await;
            let allowed = http_roles(route).contains(role);
            if allowed {
                assert_eq!(status, StatusCode::OK, "{role} GET {path}: {body}");
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{role} GET {path}: {body}");
                let error: serde_json::Value =
                    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
                assert!(
                    error["error"]
                        .as_str()
                        .is_some_and(|m| m.contains(role.as_str())),
                    "{body}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        Role::ALL.len() * (ADMIN_RPCS.len() + HTTP_ROUTES.len())
    );

    // An unknown route is a JSON 404, not a gRPC answer.
    let (status, body) = http_get(&channels[0].1, "/api/v1/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    shutdown(sandbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_see_stores_only_as_tokens_and_ml_engineers_see_ids() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut sandbox = start(test_options(dir.path(), 2)).await;
    let round = run_round(&mut sandbox, spec(2, 0.0)).await;
    // Wait for a noised release from each store.
    for node in &sandbox.nodes {
        let mut status = node.status.clone();
        tokio::time::timeout(
            Duration::from_secs(90),
            status.wait_for(|s| s.windows_synced >= 1),
        )
        .await
        .unwrap_or_else(|_| panic!("no metric release synced"))
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let ids: BTreeSet<String> = sandbox.nodes.iter().map(|n| n.store_id.clone()).collect();
    let bundles = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ops = channel_for(&sandbox, Role::Operations, bundles.path()).await;
    let ml = channel_for(&sandbox, Role::MlEngineer, bundles.path()).await;

    let seen = |text: &str| ids.iter().filter(|id| text.contains(id.as_str())).count();
    for path in [
        "/api/v1/nodes".to_owned(),
        "/api/v1/metrics?group_by=store".to_owned(),
        "/api/v1/rounds".to_owned(),
        format!("/api/v1/rounds/{}", round.round_id),
    ] {
        let (status, body) = http_get(&ops, &path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            seen(&body),
            0,
            "operations saw a store id in {path}: {body}"
        );
        let (status, body) = http_get(&ml, &path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            seen(&body) > 0,
            "an ML engineer saw no store id in {path}: {body}"
        );
    }
    // Over gRPC too, and the tokens are stable and distinct per store.
    let metrics = AdminServiceClient::new(ops.clone())
        .query_metrics(pb::QueryMetricsRequest {
            group_by: "store".into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert!(metrics.store_tokens);
    let tokens: BTreeSet<&str> = metrics.rows.iter().map(|r| r.store_id.as_str()).collect();
    assert_eq!(tokens.len(), ids.len(), "{tokens:?}");
    assert!(
        tokens
            .iter()
            .all(|t| t.starts_with("s-") && !ids.contains(*t))
    );
    let groups: BTreeSet<&str> = metrics.groups.iter().map(|g| g.key.as_str()).collect();
    assert_eq!(groups, tokens);
    let nodes = AdminServiceClient::new(ops)
        .list_nodes(pb::ListNodesRequest {})
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let node_tokens: BTreeSet<&str> = nodes.nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(
        node_tokens, tokens,
        "the same store has the same token everywhere"
    );
    shutdown(sandbox).await;
}
