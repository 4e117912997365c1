//! Shared helpers for the end-to-end tests.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use backroom::sandbox::{Sandbox, SandboxOptions};
use backroom_proto::v1 as pb;

/// A sandbox with small, fast settings.
pub async fn sandbox(dir: &Path, stores: usize) -> Sandbox {
    start(test_options(dir, stores)).await
}

pub fn test_options(dir: &Path, stores: usize) -> SandboxOptions {
    let mut options = SandboxOptions::new(dir, stores);
    options.train_samples = 128;
    options.camera.frame_interval = Duration::from_millis(100);
    options.camera.seconds_per_frame = 900;
    // Most tests run without noise (to check aggregation exactly): no ε budget for them.
    options.privacy_budget = backroom_coordinator::ledger::Budget {
        epsilon_max: None,
        delta: 1e-5,
    };
    options
}

pub async fn start(options: SandboxOptions) -> Sandbox {
    match Sandbox::start(options).await {
        Ok(sandbox) => sandbox,
        Err(error) => panic!("sandbox did not start: {error:#}"),
    }
}

pub fn spec(clients: u32, noise_multiplier: f32) -> pb::RoundSpec {
    pb::RoundSpec {
        strategy: "fedavg".into(),
        target_clients: clients,
        min_clients: clients,
        deadline_secs: 300,
        local_steps: 5,
        batch_size: 16,
        learning_rate: 0.05,
        clip_norm: 0.5,
        noise_multiplier,
        noise_mode: "central".into(),
        adaptive_clipping: None,
        server_learning_rate: None,
        trim_fraction: None,
        proximal_mu: 0.0,
    }
}

/// The stored update blobs of a round (what the nodes uploaded: their clipped deltas).
pub fn round_updates(sandbox: &Sandbox, round_id: &str) -> Vec<(PathBuf, Vec<f32>)> {
    updates_in(&sandbox.coordinator_dir, round_id)
}

/// The stored update blobs of a round in a coordinator data directory (embedded database, local
/// blob store), in node order: where each is and its values.
pub fn updates_in(coordinator_dir: &Path, round_id: &str) -> Vec<(PathBuf, Vec<f32>)> {
    let db = coordinator_dir.join("coordinator.db");
    let round = round_id.to_owned();
    // Called from async tests: the database is read on a thread of its own.
    let rows: Vec<(String, String)> = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(async {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", db.display()));
            let rows = sqlx::query_as(
                "SELECT node_id, blob_path FROM round_updates WHERE round_id = ? ORDER BY node_id",
            )
            .bind(round)
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            pool.close().await;
            rows
        })
    })
    .join()
    .unwrap_or_else(|_| panic!("the database thread panicked"));
    let blobs = coordinator_dir.join("blobs");
    rows.into_iter()
        .map(|(_, reference)| {
            let path = match reference.strip_prefix("sha256:") {
                Some(hex) => backroom_coordinator::blobs::local_blob_path(&blobs, hex),
                None => PathBuf::from(reference),
            };
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let values = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (path, values)
        })
        .collect()
}

pub fn params_of(sandbox: &Sandbox, version: u64) -> Vec<f32> {
    let key = backroom::evaluate::load_verifying_key(&sandbox.model_root_key())
        .unwrap_or_else(|e| panic!("{e:#}"));
    backroom::evaluate::load_verified_params(
        &sandbox.coordinator_dir,
        &sandbox.lineage,
        version,
        &key,
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
}

pub fn l2(values: &[f32]) -> f64 {
    values
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        .sqrt()
}

pub async fn run_round(sandbox: &mut Sandbox, spec: pb::RoundSpec) -> pb::Round {
    let round = sandbox
        .run_round(spec, |_| {})
        .await
        .unwrap_or_else(|e| panic!("round failed to run: {e:#}"));
    assert_eq!(
        round.state,
        pb::RoundState::Published as i32,
        "round ended {:?}: {}",
        round.state,
        round.failure_reason
    );
    round
}

pub async fn shutdown(sandbox: Sandbox) {
    if let Err(error) = sandbox.shutdown().await {
        panic!("sandbox did not shut down cleanly: {error:#}");
    }
}

/// Waits until every node of the sandbox runs `version` (at most 120 s).
pub async fn wait_installed(sandbox: &Sandbox, version: u64) {
    sandbox
        .wait_for_installed(version, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// The published versions of the sandbox's lineage, oldest first.
pub async fn list_models(sandbox: &mut Sandbox) -> Vec<pb::ModelVersion> {
    let lineage = sandbox.lineage.clone();
    sandbox
        .admin
        .list_models(pb::ListModelsRequest { lineage })
        .await
        .unwrap_or_else(|s| panic!("{s}"))
        .into_inner()
        .models
}

/// A second connection to the coordinator's SQLite database (for tampering and inspection).
pub async fn coordinator_db(sandbox: &Sandbox) -> sqlx::SqlitePool {
    let db = sandbox.coordinator_dir.join("coordinator.db");
    sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Checks that a metric batch is a noised release and nothing else: exactly the three known
/// metrics, each with a positive noise scale, the sensitivity one camera frame really has, and
/// a value only when not suppressed; and that the declared zCDP cost pays for the declared
/// noise (Σ sensitivity² / (2 scale²) ≤ ρ). Returns the (name, value) of every metric that
/// was not suppressed.
pub fn assert_noised_release(batch: &pb::MetricBatch) -> Vec<(String, f64)> {
    assert!(batch.rho > 0.0 && batch.rho.is_finite(), "{batch:?}");
    let slots = f64::from(batch.slots_per_frame);
    let minutes_per_frame = f64::from(batch.seconds_per_frame) / 60.0;
    let mut names: Vec<&str> = batch.metrics.iter().map(|m| m.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["frames", "out_of_stock_events", "out_of_stock_minutes"],
        "{batch:?}"
    );
    let mut rho = 0.0;
    let mut values = Vec::new();
    for metric in &batch.metrics {
        let expected_sensitivity = match metric.name.as_str() {
            "frames" => 1.0,
            "out_of_stock_events" => slots,
            _ => slots * minutes_per_frame,
        };
        assert!(
            (metric.sensitivity - expected_sensitivity).abs() <= 1e-9 * expected_sensitivity,
            "{metric:?} declares the wrong sensitivity"
        );
        assert!(metric.noise_scale > 0.0, "{metric:?} carries no noise");
        assert_eq!(metric.suppressed, metric.value.is_none(), "{metric:?}");
        if let Some(value) = metric.value {
            assert!(value.is_finite(), "{metric:?}");
            values.push((metric.name.clone(), value));
        }
        rho += metric.sensitivity.powi(2) / (2.0 * metric.noise_scale.powi(2));
    }
    assert!(
        rho <= batch.rho * (1.0 + 1e-9),
        "declared noise costs ρ = {rho}, more than the ρ = {} charged",
        batch.rho
    );
    values
}

/// A `backroom` child process (`args --config CONFIG`, stderr appended to `log`), killed
/// (SIGKILL) and reaped when dropped.
pub struct Process(pub Child);

impl Process {
    pub fn spawn(args: &[&str], config: &Path, log: &Path) -> Self {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let child = Command::new(env!("CARGO_BIN_EXE_backroom"))
            .args(args)
            .arg("--config")
            .arg(config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start backroom {args:?}: {e}"));
        Process(child)
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn run(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_backroom"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "backroom {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    listener.local_addr().map_or(0, |a| a.port())
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The PostgreSQL server of `DATABASE_URL`, if set; without it, tests that need one skip, unless
/// `BACKROOM_REQUIRE_POSTGRES` is set (CI), when this fails instead.
pub fn postgres_url() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var_os("BACKROOM_REQUIRE_POSTGRES").is_none(),
                "BACKROOM_REQUIRE_POSTGRES is set but DATABASE_URL is not"
            );
            None
        }
    }
}

/// Runs one administrative statement (a schema created or dropped) on the server at `url`.
pub async fn postgres_admin(url: &str, statement: &str) {
    let pool = sqlx::postgres::PgPool::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at DATABASE_URL: {e}"));
    sqlx::query(statement)
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    pool.close().await;
}

/// `GET path` over a client-certificate channel (the coordinator's HTTP routes share its gRPC
/// port): the status and the body as text.
pub async fn http_get(
    channel: &tonic::transport::Channel,
    path: &str,
) -> (axum::http::StatusCode, String) {
    use tower::ServiceExt;
    let request = axum::http::Request::builder()
        .method("GET")
        .uri(path)
        .body(tonic::body::Body::empty())
        .unwrap_or_else(|e| panic!("{e}"));
    let response = channel
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status();
    let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 64 << 20)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: body: {e}"));
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The S3-compatible server of the test environment (`.ci/run` starts moto's, with a bucket
/// `backroom-test`); `None` skips unless `BACKROOM_REQUIRE_S3=1`.
pub fn s3_endpoint() -> Option<String> {
    match std::env::var("BACKROOM_TEST_S3_ENDPOINT") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var("BACKROOM_REQUIRE_S3").as_deref() != Ok("1"),
                "BACKROOM_REQUIRE_S3=1 but BACKROOM_TEST_S3_ENDPOINT is not set"
            );
            None
        }
    }
}
