// TEMPORARY smoke test (removed before hand-off).
use std::time::Duration;
use backroom_coordinator::identity::{CertificateAuthority, Role};
use backroom_coordinator::{Coordinator, CoordinatorConfig};
use backroom_proto::v1::admin_service_client::AdminServiceClient;
use backroom_proto::v1::{GetRoundRequest, QueryMetricsRequest, RoundSpec, StartRoundRequest};
use backroom_store_node::{DataSettings, NodeConfig, NodeStatus};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smoke() {
    let _ = tracing_subscriber::fmt().with_env_filter("info").try_init();
    let tmp = tempfile::tempdir().unwrap();
    let cconf = CoordinatorConfig::for_data_dir(tmp.path().join("coord"));
    let coord = Coordinator::start(cconf.clone()).await.unwrap();
    let addr = coord.local_addr();
    let (ctx, crx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(coord.serve(async move { let _ = crx.await; }));
    let ca = CertificateAuthority::load_or_create(&cconf.pki_dir(), &[]).unwrap();
    ca.issue_bundle(Role::Node, "store-a", &tmp.path().join("bundle-a")).unwrap();
    ca.issue_bundle(Role::Admin, "admin", &tmp.path().join("admin")).unwrap();

    let mut config = NodeConfig::new(format!("https://127.0.0.1:{}", addr.port()), tmp.path().join("bundle-a"), tmp.path().join("node-a"),
        DataSettings { world_seed: 7, store_index: 0, train_samples: 64 });
    config.backend = "cpu".parse().unwrap();
    config.metric_window_secs = 60;
    config.camera.seconds_per_frame = 30;
    config.camera.frame_interval = Duration::from_millis(50);
    config.poll_wait_secs = 2;
    let (status_tx, mut status_rx) = tokio::sync::watch::channel(NodeStatus::default());
    let (ntx, nrx) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(backroom_store_node::run_with_status(config.clone(), async move { let _ = nrx.await; }, status_tx));
    tokio::time::timeout(Duration::from_secs(60), status_rx.wait_for(|s| s.installed_version == 1 && s.windows_synced > 1)).await.unwrap().unwrap();
    println!("status: {:?}", *status_rx.borrow());

    let a = tmp.path().join("admin");
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(a.join("ca.pem")).unwrap()))
        .identity(Identity::from_pem(std::fs::read(a.join("cert.pem")).unwrap(), std::fs::read(a.join("key.pem")).unwrap())).domain_name("localhost");
    let ch = Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port())).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let mut admin = AdminServiceClient::new(ch);
    let round = admin.start_round(StartRoundRequest { lineage: "shelfnet".into(), spec: Some(RoundSpec { strategy: "fedavg".into(), target_clients: 1, min_clients: 1, deadline_secs: 120, local_steps: 5, batch_size: 16, learning_rate: 0.05, clip_norm: 1.0, noise_multiplier: 0.1 }) }).await.unwrap().into_inner();
    println!("round: {round:?}");
    tokio::time::timeout(Duration::from_secs(120), status_rx.wait_for(|s| s.installed_version == 2)).await.unwrap().unwrap();
    println!("status: {:?}", *status_rx.borrow());
    let r = admin.get_round(GetRoundRequest { round_id: round.round_id.clone() }).await.unwrap().into_inner();
    println!("round after: {r:?}");
    let m = admin.query_metrics(QueryMetricsRequest { from_unix: 0, to_unix: 0 }).await.unwrap().into_inner();
    println!("metrics rows: {}", m.rows.len());
    let _ = ntx.send(());
    tokio::time::timeout(Duration::from_secs(20), node).await.unwrap().unwrap().unwrap();
    // restart: model reload from disk
    let (status_tx, mut status_rx) = tokio::sync::watch::channel(NodeStatus::default());
    let (ntx, nrx) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(backroom_store_node::run_with_status(config.clone(), async move { let _ = nrx.await; }, status_tx));
    tokio::time::timeout(Duration::from_secs(30), status_rx.wait_for(|s| s.installed_version == 2 && s.frames_processed > 3)).await.unwrap().unwrap();
    println!("restarted status: {:?}", *status_rx.borrow());
    // coordinator away: node keeps running
    let _ = ctx.send(());
    server.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("offline status: {:?}", *status_rx.borrow());
    let _ = ntx.send(());
    tokio::time::timeout(Duration::from_secs(20), node).await.unwrap().unwrap().unwrap();
}
