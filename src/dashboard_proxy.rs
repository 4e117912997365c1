//! `backroom dashboard`: the coordinator's dashboard and JSON API on a local port, for a browser.
//!
//! The coordinator serves the dashboard itself, but only over mutually authenticated TLS: every
//! route checks the role in the caller's client certificate. Browsers are poor at client
//! certificates, so, like `kubectl proxy`, this command listens on a loopback address in plain
//! HTTP and forwards each GET to the coordinator with the certificate of the given bundle. The
//! coordinator still decides what that role may read; whoever can reach the local port acts with
//! that bundle's role, which is why it binds loopback by default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tonic::transport::Channel;
use tower::ServiceExt;

/// Largest response forwarded (a metric query over many windows is the big one).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

#[derive(clap::Args, Debug, Clone)]
pub struct DashboardArgs {
    #[command(flatten)]
    pub connection: crate::Connection,
    /// Local address to serve on (plain HTTP; keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Write the bound address to this file once listening (for scripts that pass port 0).
    #[arg(long)]
    pub address_file: Option<PathBuf>,
}

/// Serves until Ctrl-C.
pub async fn run(args: DashboardArgs) -> anyhow::Result<()> {
    let c = &args.connection;
    let channel = backroom::client::connect(&c.coordinator, &c.server_name, &c.bundle).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        eprintln!(
            "warning: {local} is not a loopback address: anyone who reaches it reads the dashboard with this bundle's role"
        );
    }
    if let Some(path) = &args.address_file {
        std::fs::write(path, local.to_string())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    eprintln!(
        "dashboard of {} on http://{local}/ (Ctrl-C to stop)",
        c.coordinator
    );
    // Only requests addressed to this port by a loopback name: a page on another site that
    // rebinds its own name to 127.0.0.1 (DNS rebinding) sends its own Host and is refused.
    let hosts = Arc::new(vec![
        local.to_string(),
        format!("localhost:{}", local.port()),
        format!("127.0.0.1:{}", local.port()),
        format!("[::1]:{}", local.port()),
    ]);
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(Proxy { channel, hosts });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("dashboard server failed")
}

#[derive(Clone)]
struct Proxy {
    channel: Channel,
    /// `Host` values accepted.
    hosts: Arc<Vec<String>>,
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !proxy.hosts.iter().any(|h| h == host) {
        return (
            StatusCode::FORBIDDEN,
            format!(
                "Host {host:?} refused: open the dashboard at http://{}/",
                proxy.hosts[0]
            ),
        )
            .into_response();
    }
    let channel = proxy.channel;
    if request.method() != Method::GET {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "the dashboard proxy forwards GET requests only",
        )
            .into_response();
    }
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut upstream = axum::http::Request::builder().method(Method::GET).uri(path);
    if let Some(accept) = request.headers().get(header::ACCEPT) {
        upstream = upstream.header(header::ACCEPT, accept);
    }
    let upstream = match upstream.body(tonic::body::Body::empty()) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let response = match channel.oneshot(upstream).await {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_GATEWAY,
                format!("cannot reach the coordinator: {e}"),
            )
                .into_response();
        }
    };
    let (parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(Body::new(body), MAX_RESPONSE_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::BAD_GATEWAY,
                format!("coordinator response unreadable: {e}"),
            )
                .into_response();
        }
    };
    let mut out = Response::builder().status(parts.status);
    if let Some(kind) = parts.headers.get(header::CONTENT_TYPE) {
        out = out.header(header::CONTENT_TYPE, kind);
    }
    out.header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(bytes))
        .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}
