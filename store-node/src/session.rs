//! `Hello` (retried until the coordinator answers) and the heartbeat loop.

use std::sync::Arc;
use std::time::Duration;

use backroom_proto::v1::{HeartbeatRequest, HelloRequest, HelloResponse};
use tracing::{info, warn};

use crate::transport::{Backoff, RPC_TIMEOUT, Shutdown, request, sleep_or_shutdown};
use crate::{NodeContext, describe_status, now_unix_ms};

/// Heartbeat period when the coordinator does not name one.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);

/// Says hello until the coordinator answers; `None` when shutdown came first. Remembers the node
/// id the coordinator read from this node's certificate.
pub(crate) async fn hello_until_answered(
    ctx: &NodeContext,
    shutdown: &mut Shutdown,
) -> Option<HelloResponse> {
    let mut backoff = Backoff::for_coordinator();
    loop {
        let message = HelloRequest {
            lineage: ctx.config.lineage.clone(),
            installed_version: ctx.installed_version(),
            backend: ctx.backend.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let mut client = ctx.client.clone();
        let answered = tokio::select! {
            _ = shutdown.triggered() => return None,
            r = client.hello(request(message, RPC_TIMEOUT)) => r,
        };
        match answered {
            Ok(response) => {
                let hello = response.into_inner();
                info!(
                    node_id = %hello.node_id,
                    heartbeat_interval_secs = hello.heartbeat_interval_secs,
                    coordinator = %ctx.config.coordinator_url,
                    "connected to the coordinator"
                );
                remember_node_id(ctx, &hello.node_id).await;
                return Some(hello);
            }
            Err(status) => {
                let delay = backoff.next_delay();
                warn!(
                    attempt = backoff.attempt(),
                    delay_ms = delay.as_millis() as u64,
                    coordinator = %ctx.config.coordinator_url,
                    "hello failed; retrying: {}",
                    describe_status(&status)
                );
                ctx.set_error(format!("hello failed: {}", describe_status(&status)));
                if sleep_or_shutdown(delay, shutdown).await {
                    return None;
                }
            }
        }
    }
}

async fn remember_node_id(ctx: &NodeContext, node_id: &str) {
    let known = ctx.node_id.borrow().clone();
    if let Some(known) = &known
        && known != node_id
    {
        warn!(
            previous = %known,
            current = %node_id,
            "the coordinator reports a different node id than last time (new certificate?); \
             metric windows already queued keep their old keys"
        );
    }
    if known.as_deref() != Some(node_id)
        && let Err(error) = ctx.queue.store_node_id(node_id, now_unix_ms()).await
    {
        warn!("cannot remember the node id locally: {error}");
    }
    ctx.node_id.send_replace(Some(node_id.to_owned()));
    ctx.update_status(|s| s.node_id = node_id.to_owned());
}

/// Reports the installed version and backend every `interval_secs` until shutdown.
pub(crate) async fn run_heartbeat(
    ctx: Arc<NodeContext>,
    interval_secs: u32,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let period = if interval_secs == 0 {
        DEFAULT_HEARTBEAT
    } else {
        Duration::from_secs(interval_secs.into())
    };
    let mut failures: u32 = 0;
    loop {
        if sleep_or_shutdown(period, &mut shutdown).await {
            return Ok(());
        }
        let message = HeartbeatRequest {
            lineage: ctx.config.lineage.clone(),
            installed_version: ctx.installed_version(),
            backend: ctx.backend.clone(),
        };
        let mut client = ctx.client.clone();
        let sent = tokio::select! {
            _ = shutdown.triggered() => return Ok(()),
            r = client.heartbeat(request(message, RPC_TIMEOUT)) => r,
        };
        match sent {
            Ok(_) => {
                if failures > 0 {
                    info!(failures, "heartbeat reached the coordinator again");
                }
                failures = 0;
            }
            Err(status) => {
                failures = failures.saturating_add(1);
                warn!(failures, "heartbeat failed: {}", describe_status(&status));
                ctx.set_error(format!("heartbeat failed: {}", describe_status(&status)));
            }
        }
    }
}
