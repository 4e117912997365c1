//! Things that must fail safely: unauthenticated or wrongly authorised callers, tampered models,
//! and bad updates. Each refusal leaves the system running.

use std::time::Duration;

use backroom::sandbox::issue_bundle;
use backroom_coordinator::identity::{CertificateAuthority, Role};
use backroom_proto::v1 as pb;
use backroom_proto::v1::admin_service_client::AdminServiceClient;
use backroom_proto::v1::node_service_client::NodeServiceClient;
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::support::{
    coordinator_db, run_round, sandbox, shutdown, spec, start, test_options, wait_installed,
};

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Calls ListNodes with a given TLS configuration; returns whether it succeeded.
async fn admin_call_succeeds(url: &str, tls: ClientTlsConfig) -> bool {
    let attempt = async {
        let channel = Endpoint::from_shared(url.to_owned())?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        let reply = AdminServiceClient::new(channel)
            .list_nodes(pb::ListNodesRequest {})
            .await;
        Ok::<bool, Box<dyn std::error::Error>>(reply.is_ok())
    };
    attempt.await.unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_valid_certificate_or_with_the_wrong_role_are_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sandbox = sandbox(dir.path(), 0).await;
    let url = sandbox.coordinator_url.clone();
    let ca = read(&sandbox.admin_bundle.join("ca.pem"));

    // The admin bundle works (the control for the refusals below).
    let admin_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .identity(Identity::from_pem(
            read(&sandbox.admin_bundle.join("cert.pem")),
            read(&sandbox.admin_bundle.join("key.pem")),
        ))
        .domain_name("localhost");
    assert!(admin_call_succeeds(&url, admin_tls).await);

    // No client certificate at all.
    let anonymous = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .domain_name("localhost");
    assert!(
        !admin_call_succeeds(&url, anonymous).await,
        "a client without a certificate got in"
    );

    // An admin certificate from another CA.
    let other = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let rogue_ca = CertificateAuthority::load_or_create(&other.path().join("pki"), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let rogue = rogue_ca
        .issue_bundle(Role::Admin, "mallory", &other.path().join("mallory"))
        .unwrap_or_else(|e| panic!("{e}"));
    let foreign = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .identity(Identity::from_pem(read(&rogue.cert()), read(&rogue.key())))
        .domain_name("localhost");
    assert!(
        !admin_call_succeeds(&url, foreign).await,
        "a certificate from another CA got in"
    );

    // A node certificate calling an admin RPC, and an admin certificate calling a node RPC.
    let node_bundle = issue_bundle(
        &sandbox.coordinator_dir,
        Role::Node,
        "store-7",
        &dir.path().join("store-7"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let channel = backroom::client::connect(&url, "localhost", &node_bundle)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let denied = AdminServiceClient::new(channel.clone())
        .list_nodes(pb::ListNodesRequest {})
        .await
        .err()
        .unwrap_or_else(|| panic!("a node certificate called an admin RPC"));
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied}");
    let start = AdminServiceClient::new(channel.clone())
        .start_round(pb::StartRoundRequest {
            lineage: "shelfnet".into(),
            spec: Some(spec(1, 0.0)),
        })
        .await;
    assert_eq!(start.err().map(|s| s.code()), Some(Code::PermissionDenied));
    // The node certificate is fine for the node service.
    assert!(
        NodeServiceClient::new(channel)
            .hello(pb::HelloRequest::default())
            .await
            .is_ok()
    );
    let admin_channel = backroom::client::connect(&url, "localhost", &sandbox.admin_bundle)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let denied = NodeServiceClient::new(admin_channel)
        .hello(pb::HelloRequest::default())
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(denied, Some(Code::PermissionDenied));

    shutdown(sandbox).await;
}

async fn flip_version_column(pool: &sqlx::SqlitePool, column: &str, version: i64) -> Vec<u8> {
    let original: Vec<u8> = sqlx::query_scalar(&format!(
        "SELECT {column} FROM model_versions WHERE version = ?"
    ))
    .bind(version)
    .fetch_one(pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut tampered = original.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    set_version_column(pool, column, version, &tampered).await;
    original
}

async fn set_version_column(pool: &sqlx::SqlitePool, column: &str, version: i64, value: &[u8]) {
    sqlx::query(&format!(
        "UPDATE model_versions SET {column} = ? WHERE version = ?"
    ))
    .bind(value)
    .bind(version)
    .execute(pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

async fn expect_refusal_keeping_v1(sandbox: &mut backroom::sandbox::Sandbox, what: &str) {
    sandbox
        .restart_node(2)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut status = sandbox.nodes[2].status.clone();
    tokio::time::timeout(
        Duration::from_secs(120),
        status.wait_for(|s| s.refused_models >= 1),
    )
    .await
    .unwrap_or_else(|_| panic!("node did not refuse a model with altered {what}"))
    .unwrap_or_else(|e| panic!("{e}"));
    let frames_before = status.borrow().frames_processed;
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| s.frames_processed > frames_before + 2),
    )
    .await
    .unwrap_or_else(|_| panic!("node stopped serving after refusing altered {what}"))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        status.borrow().installed_version,
        1,
        "altered {what} was installed"
    );
    sandbox
        .stop_node(2)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Waits until the coordinator last saw `node_id` more than `window` ago.
async fn wait_until_offline(
    sandbox: &mut backroom::sandbox::Sandbox,
    node_id: &str,
    window: Duration,
) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = sandbox
            .admin
            .list_nodes(pb::ListNodesRequest {})
            .await
            .unwrap_or_else(|s| panic!("{s}"))
            .into_inner()
            .nodes;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let last_seen = nodes
            .iter()
            .find(|n| n.node_id == node_id)
            .map_or(0, |n| n.last_seen_unix_ms);
        if now - last_seen > window.as_millis() as i64 + 500 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "{node_id} still looks online"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_model_altered_by_one_byte_and_keeps_its_old_one() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // Nodes count as online for 6 s after they were last seen and poll every 2 s, so a stopped
    // node soon drops out of sampling.
    let mut options = test_options(dir.path(), 3);
    options.poll_wait_secs = 2;
    options.coordinator = |c| c.online_window = Duration::from_secs(6);
    let mut sandbox = start(options).await;
    wait_installed(&sandbox, 1).await;
    sandbox
        .stop_node(2)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    wait_until_offline(&mut sandbox, "store-3", Duration::from_secs(6)).await;
    let round = run_round(&mut sandbox, spec(2, 0.0)).await;
    assert_eq!(round.published_version, 2);
    // Let the two running nodes install v2 before anything is altered.
    for index in 0..2 {
        let mut status = sandbox.nodes[index].status.clone();
        tokio::time::timeout(
            Duration::from_secs(120),
            status.wait_for(|s| s.installed_version == 2),
        )
        .await
        .unwrap_or_else(|_| panic!("node {index} did not install v2"))
        .unwrap_or_else(|e| panic!("{e}"));
    }

    // Weights altered by one byte. The coordinator checks weights against the digest it
    // recorded before serving them, so the altered bytes are recorded with their own digest
    // (storage and database both changed, the signing key not): the node's check must refuse.
    let pool = coordinator_db(&sandbox).await;
    let (reference, recorded_sha): (String, String) =
        sqlx::query_as("SELECT weights_path, weights_sha256 FROM model_versions WHERE version = 2")
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let blob = backroom_coordinator::blobs::local_blob_path(
        &sandbox.coordinator_dir.join("blobs"),
        reference.trim_start_matches("sha256:"),
    );
    let mut tampered = read(&blob);
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let altered = sandbox.coordinator_dir.join("altered-v2.safetensors");
    std::fs::write(&altered, &tampered).unwrap_or_else(|e| panic!("{e}"));
    sqlx::query("UPDATE model_versions SET weights_path = ?, weights_sha256 = ? WHERE version = 2")
        .bind(altered.display().to_string())
        .bind(hex::encode(Sha256::digest(&tampered)))
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    expect_refusal_keeping_v1(&mut sandbox, "weights").await;
    sqlx::query("UPDATE model_versions SET weights_path = ?, weights_sha256 = ? WHERE version = 2")
        .bind(&reference)
        .bind(&recorded_sha)
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Manifest and signature altered by one byte (the coordinator serves them from its database).
    for column in ["manifest", "signature"] {
        let original = flip_version_column(&pool, column, 2).await;
        expect_refusal_keeping_v1(&mut sandbox, column).await;
        set_version_column(&pool, column, 2, &original).await;
    }
    pool.close().await;

    // Untouched, the same version installs: the refusals were the tampering's doing.
    sandbox
        .restart_node(2)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    wait_installed(&sandbox, 2).await;
    shutdown(sandbox).await;
}

/// Long-polls as a node until the coordinator hands it a training task (at most 60 s).
async fn wait_for_task(client: &mut NodeServiceClient<tonic::transport::Channel>) -> pb::TrainTask {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let reply = client
                .poll_task(pb::PollTaskRequest {
                    lineage: "shelfnet".into(),
                    installed_version: 1,
                    wait_secs: 10,
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|s| panic!("{s}"))
                .into_inner();
            if let Some(task) = reply.task {
                return task;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the node was never sampled"))
}

fn to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

async fn upload(
    client: &mut NodeServiceClient<tonic::transport::Channel>,
    header: pb::UpdateHeader,
    data: Vec<Vec<u8>>,
    sha256: Vec<u8>,
) -> Result<pb::UploadUpdateResponse, tonic::Status> {
    use pb::update_chunk::Kind;
    let mut chunks = vec![pb::UpdateChunk {
        kind: Some(Kind::Header(header)),
    }];
    chunks.extend(data.into_iter().map(|d| pb::UpdateChunk {
        kind: Some(Kind::Data(d)),
    }));
    chunks.push(pb::UpdateChunk {
        kind: Some(Kind::Trailer(pb::UpdateTrailer { sha256 })),
    });
    client
        .upload_update(tokio_stream::iter(chunks))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_updates_are_refused_with_clear_statuses_and_the_round_continues() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut sandbox = sandbox(dir.path(), 3).await;
    wait_installed(&sandbox, 1).await;
    let bundle = issue_bundle(
        &sandbox.coordinator_dir,
        Role::Node,
        "store-rogue",
        &dir.path().join("rogue"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let channel = backroom::client::connect(&sandbox.coordinator_url, "localhost", &bundle)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut rogue = NodeServiceClient::new(channel).max_decoding_message_size(8 << 20);
    rogue
        .hello(pb::HelloRequest {
            lineage: "shelfnet".into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("{s}"));

    let round = sandbox
        .admin
        .start_round(pb::StartRoundRequest {
            lineage: "shelfnet".into(),
            spec: Some(pb::RoundSpec {
                min_clients: 3,
                ..spec(4, 0.0)
            }),
        })
        .await
        .unwrap_or_else(|s| panic!("{s}"))
        .into_inner();
    let task = wait_for_task(&mut rogue).await;
    assert_eq!(task.round_id, round.round_id);
    let n = usize::try_from(task.num_parameters).unwrap_or(0);
    let header = pb::UpdateHeader {
        round_id: task.round_id.clone(),
        base_version: task.base_version,
        num_parameters: task.num_parameters,
        num_examples: 10,
        within_clip_norm: true,
    };
    let sha = |bytes: &[u8]| Sha256::digest(bytes).to_vec();
    let mut refusals: Vec<(&str, tonic::Status)> = Vec::new();
    let mut refuse =
        |what: &'static str, result: Result<pb::UploadUpdateResponse, tonic::Status>| match result {
            Ok(_) => panic!("coordinator accepted an update with {what}"),
            Err(status) => refusals.push((what, status)),
        };

    // Wrong length, declared and actual.
    let short = to_bytes(&vec![0.0; n - 1]);
    refuse(
        "a wrong declared length",
        upload(
            &mut rogue,
            pb::UpdateHeader {
                num_parameters: task.num_parameters - 1,
                ..header.clone()
            },
            vec![short.clone()],
            sha(&short),
        )
        .await,
    );
    refuse(
        "too few values",
        upload(&mut rogue, header.clone(), vec![short.clone()], sha(&short)).await,
    );
    // NaN and infinity.
    let mut values = vec![0.0f32; n];
    values[17] = f32::NAN;
    let nan = to_bytes(&values);
    refuse(
        "a NaN",
        upload(
            &mut rogue,
            header.clone(),
            nan.chunks(1 << 20).map(<[u8]>::to_vec).collect(),
            sha(&nan),
        )
        .await,
    );
    values[17] = f32::INFINITY;
    let inf = to_bytes(&values);
    refuse(
        "an infinity",
        upload(&mut rogue, header.clone(), vec![inf.clone()], sha(&inf)).await,
    );
    // Norm above C.
    let big = to_bytes(&vec![0.01f32; n]);
    refuse(
        "a norm above C",
        upload(&mut rogue, header.clone(), vec![big.clone()], sha(&big)).await,
    );
    // More data than declared: refused at the chunk that overflows, not buffered.
    let zeros = to_bytes(&vec![0.0f32; n]);
    refuse(
        "extra data",
        upload(
            &mut rogue,
            header.clone(),
            vec![zeros.clone(), vec![0u8; 1 << 20], vec![0u8; 1 << 20]],
            sha(&zeros),
        )
        .await,
    );
    // A single message above the size limit, and a declared size above the limit.
    refuse(
        "an oversized chunk",
        upload(
            &mut rogue,
            header.clone(),
            vec![vec![0u8; 3 << 20]],
            sha(&zeros),
        )
        .await,
    );
    refuse(
        "an absurd declared length",
        upload(
            &mut rogue,
            pb::UpdateHeader {
                num_parameters: 1 << 40,
                ..header.clone()
            },
            vec![],
            sha(&zeros),
        )
        .await,
    );
    // A checksum that does not match.
    refuse(
        "a bad checksum",
        upload(
            &mut rogue,
            header.clone(),
            vec![zeros.clone()],
            vec![0u8; 32],
        )
        .await,
    );

    let expectations = [
        (
            "a wrong declared length",
            Code::InvalidArgument,
            "parameters",
        ),
        ("too few values", Code::InvalidArgument, "bytes"),
        ("a NaN", Code::InvalidArgument, "not finite"),
        ("an infinity", Code::InvalidArgument, "not finite"),
        ("a norm above C", Code::InvalidArgument, "clip norm"),
        ("extra data", Code::InvalidArgument, "longer than"),
        ("a bad checksum", Code::InvalidArgument, "SHA-256"),
        (
            "an absurd declared length",
            Code::InvalidArgument,
            "parameters",
        ),
    ];
    for (what, code, needle) in expectations {
        let status = &refusals
            .iter()
            .find(|(w, _)| *w == what)
            .unwrap_or_else(|| panic!("{what}"))
            .1;
        assert_eq!(status.code(), code, "{what}: {status}");
        assert!(
            status.message().contains(needle),
            "{what}: unclear message {:?}",
            status.message()
        );
    }
    let oversized = &refusals
        .iter()
        .find(|(w, _)| *w == "an oversized chunk")
        .unwrap_or_else(|| panic!("oversized"))
        .1;
    assert!(
        matches!(
            oversized.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument | Code::Internal
        ),
        "{oversized}"
    );

    // Every update refused for its content is quarantined, in order, with what arrived; the
    // bytes of the first three are kept, later ones are recorded without them. Header-level
    // refusals (nothing read yet) and a message the transport refused are not.
    let quarantined = sandbox
        .admin
        .list_quarantine(pb::ListQuarantineRequest {
            round_id: round.round_id.clone(),
        })
        .await
        .unwrap_or_else(|s| panic!("{s}"))
        .into_inner()
        .updates;
    let first_nan_chunk = &nan[..nan.len().min(1 << 20)];
    let overflowed = [zeros.as_slice(), &[0u8; 1 << 20]].concat();
    let expected: [(&str, &[u8], bool); 6] = [
        ("bytes", &short, true),
        ("not finite", first_nan_chunk, true),
        ("not finite", &inf, true),
        ("clip norm", &big, false),
        ("longer than", &overflowed, false),
        ("SHA-256", &zeros, false),
    ];
    assert_eq!(
        quarantined.len(),
        expected.len(),
        "quarantined: {:?}",
        quarantined.iter().map(|q| &q.reason).collect::<Vec<_>>()
    );
    for (q, (needle, sent, kept)) in quarantined.iter().zip(expected) {
        assert_eq!(q.round_id, round.round_id);
        assert_eq!(q.node_id, "store-rogue");
        assert!(q.reason.contains(needle), "{needle}: {}", q.reason);
        assert_eq!(q.received_bytes, sent.len() as u64, "{}", q.reason);
        assert_eq!(q.sha256, hex::encode(sha(sent)), "{}", q.reason);
        assert_eq!(!q.blob_path.is_empty(), kept, "{}", q.reason);
        if kept {
            // Kept in the blob store under its content's digest.
            assert_eq!(q.blob_path, format!("sha256:{}", q.sha256), "{}", q.reason);
            let blob = backroom_coordinator::blobs::local_blob_path(
                &sandbox.coordinator_dir.join("blobs"),
                &q.sha256,
            );
            assert_eq!(read(&blob), sent, "{}", q.reason);
        }
    }
    let all = sandbox
        .admin
        .list_quarantine(pb::ListQuarantineRequest::default())
        .await
        .unwrap_or_else(|s| panic!("{s}"))
        .into_inner()
        .updates;
    assert_eq!(all.len(), expected.len());
    let unknown = sandbox
        .admin
        .list_quarantine(pb::ListQuarantineRequest {
            round_id: "r-no-such-round".into(),
        })
        .await;
    assert_eq!(unknown.err().map(|s| s.code()), Some(Code::NotFound));

    // The round is still training, and a valid update from the same node is accepted.
    let current = sandbox
        .admin
        .get_round(pb::GetRoundRequest {
            round_id: round.round_id.clone(),
        })
        .await
        .unwrap_or_else(|s| panic!("{s}"))
        .into_inner();
    assert!(
        current.updates_refused >= 9,
        "refusals counted: {}",
        current.updates_refused
    );
    let mut small = vec![0.0f32; n];
    small[0] = 0.25;
    let good = to_bytes(&small);
    upload(
        &mut rogue,
        header.clone(),
        good.chunks(1 << 20).map(<[u8]>::to_vec).collect(),
        sha(&good),
    )
    .await
    .unwrap_or_else(|s| panic!("a valid update was refused: {s}"));
    let duplicate = upload(&mut rogue, header.clone(), vec![good.clone()], sha(&good)).await;
    assert_eq!(duplicate.err().map(|s| s.code()), Some(Code::AlreadyExists));

    let mut watch = sandbox
        .admin
        .watch_round(pb::GetRoundRequest {
            round_id: round.round_id.clone(),
        })
        .await
        .unwrap_or_else(|s| panic!("{s}"))
        .into_inner();
    let mut last = current;
    while let Some(update) = watch.message().await.unwrap_or_else(|s| panic!("{s}")) {
        last = update;
    }
    assert_eq!(
        last.state,
        pb::RoundState::Published as i32,
        "{}",
        last.failure_reason
    );
    assert_eq!(last.updates_accepted, 4);
    shutdown(sandbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_above_the_size_limit_is_refused_from_its_header() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut options = test_options(dir.path(), 0);
    // The model's update is ~287 KB; the limit is far below it.
    options.coordinator = |c| c.max_update_bytes = 64 * 1024;
    let mut sandbox = start(options).await;
    let bundle = issue_bundle(
        &sandbox.coordinator_dir,
        Role::Node,
        "store-big",
        &dir.path().join("big"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let channel = backroom::client::connect(&sandbox.coordinator_url, "localhost", &bundle)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut node = NodeServiceClient::new(channel);
    node.hello(pb::HelloRequest {
        lineage: "shelfnet".into(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|s| panic!("{s}"));
    sandbox
        .admin
        .start_round(pb::StartRoundRequest {
            lineage: "shelfnet".into(),
            spec: Some(spec(1, 0.0)),
        })
        .await
        .unwrap_or_else(|s| panic!("{s}"));
    let task = wait_for_task(&mut node).await;
    let header = pb::UpdateHeader {
        round_id: task.round_id.clone(),
        base_version: task.base_version,
        num_parameters: task.num_parameters,
        num_examples: 1,
        within_clip_norm: true,
    };
    // The data that follows the header is never read: the header alone is refused.
    let data = vec![vec![0u8; 1 << 20]; 4];
    let refused = upload(&mut node, header, data, vec![0u8; 32])
        .await
        .err()
        .unwrap_or_else(|| panic!("an update above the size limit was accepted"));
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("exceeds the limit"), "{refused}");
    shutdown(sandbox).await;
}
