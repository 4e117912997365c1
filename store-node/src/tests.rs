//! Unit tests of the node's pure parts and its local stores.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use backroom_models::manifest::{MANIFEST_FORMAT, Manifest, sha256_hex, sign_manifest};
use backroom_models::{ARCHITECTURE_ID, BackendChoice, ShelfNetConfig};
use backroom_proto::MAX_CHUNK_BYTES;
use backroom_proto::v1::{
    ModelChunk, ModelHeader, ModelTrailer, UpdateHeader, model_chunk, update_chunk,
};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use crate::camera::{ClosedWindow, SLOT_EMPTY as E, SLOT_STOCKED as S, WindowAggregator};
use crate::config::NodeConfig;
use crate::metrics_sync::{MetricQueue, idempotency_key, to_batch};
use crate::model_store::{
    MANIFEST_FILE, ModelStore, ModelStoreError, SIGNATURE_FILE, WEIGHTS_FILE,
};
use crate::trainer::{
    ClipError, clip_l2, encode_delta, l2_norm, training_seed, update_chunks, weight_delta,
};
use crate::transport::{Backoff, TransportError, backoff_ceiling, load_bundle};
use crate::updater::{ChunkKind, ModelAssembler, StreamError};

// ---- configuration ----

const FULL_TOML: &str = r#"
coordinator_url = "https://127.0.0.1:7443"
tls_server_name = "coordinator.backroom"
bundle_dir = "bundle"
data_dir = "/var/lib/backroom"
lineage = "shelfnet"
backend = "cpu"
metric_window_secs = 600
poll_wait_secs = 10
max_model_bytes = 1048576

[data]
world_seed = 42
store_index = 3
train_samples = 128

[camera]
camera_id = 7
slots = 16
seconds_per_frame = 30
frame_interval_ms = 250
start_unix = 1704067200
"#;

#[test]
fn a_full_file_parses_and_resolves_relative_paths() {
    let config = NodeConfig::from_toml_str(FULL_TOML, Path::new("/etc/backroom")).expect("valid");
    assert_eq!(config.coordinator_url, "https://127.0.0.1:7443");
    assert_eq!(config.tls_server_name, "coordinator.backroom");
    assert_eq!(config.bundle_dir, Path::new("/etc/backroom/bundle"));
    assert_eq!(config.data_dir, Path::new("/var/lib/backroom"));
    assert_eq!(config.backend, BackendChoice::Cpu);
    assert_eq!(config.metric_window_secs, 600);
    assert_eq!(config.poll_wait_secs, 10);
    assert_eq!(config.max_model_bytes, 1_048_576);
    assert_eq!(
        (
            config.data.world_seed,
            config.data.store_index,
            config.data.train_samples
        ),
        (42, 3, 128)
    );
    assert_eq!(config.camera.camera_id, 7);
    assert_eq!(config.camera.slots, 16);
    assert_eq!(config.camera.seconds_per_frame, 30);
    assert_eq!(config.camera.frame_interval, Duration::from_millis(250));
    assert_eq!(config.camera.start_unix, 1_704_067_200);
    assert!(config.validate().is_ok());
}

#[test]
fn a_minimal_file_takes_the_defaults() {
    let text = "coordinator_url = \"https://c:7443\"\nbundle_dir = \"b\"\ndata_dir = \"d\"\n\
                [data]\nworld_seed = 1\nstore_index = 0\n";
    let config = NodeConfig::from_toml_str(text, Path::new("/x")).expect("valid");
    assert_eq!(config.tls_server_name, "localhost");
    assert_eq!(config.lineage, "shelfnet");
    assert_eq!(config.backend, BackendChoice::Auto);
    assert_eq!(config.metric_window_secs, 3600);
    assert_eq!(config.poll_wait_secs, 20);
    assert_eq!(config.max_model_bytes, 256 * 1024 * 1024);
    assert_eq!(config.data_dir, Path::new("/x/d"));
}

#[test]
fn every_problem_is_reported_together() {
    let text = r#"
coordinator_url = "http://plaintext:80"
lineage = "bad lineage!"
backend = "tpu"
poll_wait_secs = 600
metric_window_secs = 0
[data]
world_seed = -1
train_samples = 0
[camera]
slots = 0
frame_interval_ms = -5
"#;
    let error = NodeConfig::from_toml_str(text, Path::new("/")).expect_err("invalid");
    let all = error.problems.join("\n");
    for needle in [
        "coordinator_url must start with https://",
        "bundle_dir is required",
        "data_dir is required",
        "lineage must be",
        "backend must be one of",
        "poll_wait_secs must be between 1 and 60",
        "metric_window_secs must be between",
        "data.world_seed must not be negative",
        "data.store_index is required",
        "data.train_samples must be between",
        "camera.slots must be between",
        "camera.frame_interval_ms must be between",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert_eq!(error.problems.len(), 12, "{all}");
    let shown = error.to_string();
    assert!(
        shown.contains("12 problem(s)") && shown.contains("\n  - backend"),
        "{shown}"
    );
}

#[test]
fn unknown_fields_are_refused_at_every_level() {
    let top = format!("{FULL_TOML}\n");
    let top = top.replace(
        "lineage = \"shelfnet\"",
        "lineage = \"shelfnet\"\nlinage = \"typo\"",
    );
    let error = NodeConfig::from_toml_str(&top, Path::new("/")).expect_err("unknown field");
    assert!(error.problems[0].contains("linage"), "{error}");
    let nested = FULL_TOML.replace("slots = 16", "slots = 16\nfps = 3");
    let error = NodeConfig::from_toml_str(&nested, Path::new("/")).expect_err("unknown field");
    assert!(error.problems[0].contains("fps"), "{error}");
}

#[test]
fn a_config_built_in_code_is_validated_too() {
    let data = crate::DataSettings {
        world_seed: 1,
        store_index: 0,
        train_samples: 16,
    };
    let mut config = NodeConfig::new("https://127.0.0.1:1", "/b", "/d", data);
    assert!(config.validate().is_ok());
    config.poll_wait_secs = 0;
    config.camera.slots = 0;
    let error = config.validate().expect_err("invalid");
    assert_eq!(error.problems.len(), 2, "{error}");
}

// ---- clipping ----

#[test]
fn clipping_brings_the_norm_to_at_most_c() {
    for (n, c) in [(10usize, 1.0f32), (1_000, 0.1), (100_000, 2.5), (3, 1e-3)] {
        let mut delta: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 101) as f32 / 10.0 - 5.0)
            .collect();
        let before = l2_norm(&delta);
        assert!(before > f64::from(c));
        let outcome = clip_l2(&mut delta, c).expect("clip");
        assert!(
            l2_norm(&delta) <= f64::from(c),
            "n={n} c={c} after={}",
            l2_norm(&delta)
        );
        assert!(outcome.norm_after <= f64::from(c));
        assert!((outcome.norm_after - f64::from(c)).abs() / f64::from(c) < 1e-4);
        assert!((outcome.norm_before - before).abs() < 1e-9);
    }
}

#[test]
fn clipping_below_c_and_zero_vectors_are_no_ops() {
    let mut small = vec![0.1f32, -0.2, 0.05];
    let copy = small.clone();
    let outcome = clip_l2(&mut small, 1.0).expect("clip");
    assert_eq!(small, copy);
    assert_eq!(outcome.scale, 1.0);
    let mut zero = vec![0.0f32; 16];
    let outcome = clip_l2(&mut zero, 1.0).expect("clip");
    assert_eq!(zero, vec![0.0f32; 16]);
    assert_eq!(outcome.norm_after, 0.0);
    let mut empty: Vec<f32> = Vec::new();
    assert!(clip_l2(&mut empty, 1.0).is_ok());
}

#[test]
fn clipping_refuses_non_finite_input_and_bad_clip_norms() {
    let mut nan = vec![1.0f32, f32::NAN, 2.0];
    assert_eq!(
        clip_l2(&mut nan, 1.0),
        Err(ClipError::NonFinite { index: 1 })
    );
    let mut inf = vec![f32::INFINITY];
    assert_eq!(
        clip_l2(&mut inf, 1.0),
        Err(ClipError::NonFinite { index: 0 })
    );
    let mut fine = vec![1.0f32];
    for bad in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            clip_l2(&mut fine, bad),
            Err(ClipError::InvalidClipNorm(_))
        ));
    }
}

#[test]
fn delta_is_fine_tuned_minus_base() {
    let delta = weight_delta(&[1.5, 2.0, -1.0], &[1.0, 2.0, 1.0]).expect("same shape");
    assert_eq!(delta, vec![0.5, 0.0, -2.0]);
    assert!(weight_delta(&[1.0], &[1.0, 2.0]).is_err());
}

#[test]
fn training_seed_depends_on_round_and_store() {
    let a = training_seed("round-1", "store-a", 0);
    assert_eq!(a, training_seed("round-1", "store-a", 0));
    assert_ne!(a, training_seed("round-2", "store-a", 0));
    assert_ne!(a, training_seed("round-1", "store-b", 0));
    assert_ne!(a, training_seed("round-1", "store-a", 1));
}

#[test]
fn update_stream_is_header_bounded_chunks_and_trailer() {
    let delta: Vec<f32> = (0..(MAX_CHUNK_BYTES / 4 * 2 + 10))
        .map(|i| i as f32)
        .collect();
    let (bytes, sha) = encode_delta(&delta);
    assert_eq!(sha, Sha256::digest(&bytes).to_vec());
    let header = UpdateHeader {
        round_id: "r".into(),
        base_version: 1,
        num_parameters: delta.len() as u64,
        num_examples: 5,
    };
    let chunks: Vec<_> = update_chunks(header, Arc::new(bytes.clone()), sha.clone()).collect();
    assert_eq!(chunks.len(), 1 + 3 + 1);
    assert!(matches!(
        chunks[0].kind,
        Some(update_chunk::Kind::Header(_))
    ));
    let mut joined = Vec::new();
    for chunk in &chunks[1..4] {
        let Some(update_chunk::Kind::Data(data)) = &chunk.kind else {
            panic!("data expected")
        };
        assert!(data.len() <= MAX_CHUNK_BYTES);
        joined.extend_from_slice(data);
    }
    assert_eq!(joined, bytes);
    assert_eq!(
        f32::from_le_bytes([joined[4], joined[5], joined[6], joined[7]]),
        1.0
    );
    let Some(update_chunk::Kind::Trailer(trailer)) = &chunks[4].kind else {
        panic!("trailer")
    };
    assert_eq!(trailer.sha256, sha);
}

// ---- windows ----

#[test]
fn frames_are_grouped_into_windows_and_closed_when_a_new_one_starts() {
    let mut agg = WindowAggregator::new(4, 3600);
    assert_eq!(agg.observe(7200, &[S, S, E]), None);
    assert_eq!(agg.observe(7200 + 1800, &[S, E, E]), None);
    assert_eq!(agg.observe(7200 + 3599, &[E, E, E]), None);
    let closed = agg.observe(10_800, &[E, S, S]).expect("window closed");
    assert_eq!(
        closed,
        ClosedWindow {
            camera_id: 4,
            window_start_unix: 7200,
            window_secs: 3600,
            frames: 3,
            slot_observations: 9,
            empty_slot_observations: 6,
            out_of_stock_events: 2,
        }
    );
    let current = agg.current().expect("open window");
    assert_eq!(
        (
            current.window_start_unix,
            current.frames,
            current.out_of_stock_events
        ),
        (10_800, 1, 0)
    );
    // A jump over several windows closes only the one that had frames.
    let closed = agg
        .observe(10_800 + 5 * 3600 + 10, &[S, E, S])
        .expect("closed");
    assert_eq!(
        (
            closed.window_start_unix,
            closed.frames,
            closed.out_of_stock_events
        ),
        (10_800, 1, 0)
    );
}

#[test]
fn out_of_stock_counts_only_stocked_to_empty_transitions() {
    let mut agg = WindowAggregator::new(0, 60);
    agg.observe(0, &[S, S, E, E]);
    agg.observe(1, &[E, S, S, E]); // slot 0 stocked -> empty: 1 event
    agg.observe(2, &[E, E, S, E]); // slot 1: 1 event (slot 0 stays empty: none)
    agg.forget_previous(); // a skipped frame: no transition across the gap
    agg.observe(3, &[S, S, S, S]);
    agg.observe(4, &[E, E, E, E]); // 4 events
    // A transition across a window boundary counts in the new window.
    let closed = agg.observe(60, &[S, S, S, S]).expect("closed");
    assert_eq!(closed.out_of_stock_events, 6);
    assert_eq!(closed.frames, 5);
    let closed = {
        agg.observe(61, &[E, S, S, S]);
        agg.observe(120, &[E, E, E, E]).expect("closed")
    };
    assert_eq!(closed.out_of_stock_events, 1);
    assert_eq!(closed.window_start_unix, 60);
}

#[test]
fn window_start_floors_negative_times() {
    let agg = WindowAggregator::new(0, 3600);
    assert_eq!(agg.window_start(-1), -3600);
    assert_eq!(agg.window_start(0), 0);
    assert_eq!(agg.window_start(3599), 0);
}

// ---- model stream assembly ----

fn header(size: u64) -> ModelChunk {
    ModelChunk {
        kind: Some(model_chunk::Kind::Header(ModelHeader {
            manifest: b"{}".to_vec(),
            signature: vec![0; 64],
            weights_size: size,
        })),
    }
}

fn data(bytes: &[u8]) -> ModelChunk {
    ModelChunk {
        kind: Some(model_chunk::Kind::Data(bytes.to_vec())),
    }
}

fn trailer(bytes: &[u8]) -> ModelChunk {
    ModelChunk {
        kind: Some(model_chunk::Kind::Trailer(ModelTrailer {
            sha256: Sha256::digest(bytes).to_vec(),
        })),
    }
}

#[test]
fn a_well_formed_stream_assembles() {
    let mut asm = ModelAssembler::new(100);
    assert_eq!(asm.push(header(6)), Ok(ChunkKind::Header));
    assert_eq!(asm.push(data(b"abc")), Ok(ChunkKind::Data));
    assert_eq!(asm.push(data(b"def")), Ok(ChunkKind::Data));
    assert_eq!(asm.push(trailer(b"abcdef")), Ok(ChunkKind::Trailer));
    let model = asm.finish().expect("complete");
    assert_eq!(model.weights, b"abcdef");
    assert_eq!(model.manifest, b"{}");
}

#[test]
fn streams_that_break_the_protocol_are_refused() {
    let mut asm = ModelAssembler::new(100);
    assert_eq!(asm.push(data(b"x")), Err(StreamError::MissingHeader));
    assert_eq!(
        ModelAssembler::new(100).finish().err(),
        Some(StreamError::MissingHeader)
    );

    let mut asm = ModelAssembler::new(100);
    assert_eq!(
        asm.push(header(101)),
        Err(StreamError::AnnouncedTooLarge {
            announced: 101,
            limit: 100
        })
    );

    let mut asm = ModelAssembler::new(100);
    asm.push(header(4)).expect("header");
    asm.push(data(b"abc")).expect("data");
    assert_eq!(
        asm.push(data(b"de")),
        Err(StreamError::Oversize {
            announced: 4,
            received: 5
        })
    );

    let mut asm = ModelAssembler::new(100);
    asm.push(header(4)).expect("header");
    asm.push(data(b"abc")).expect("data");
    assert_eq!(
        asm.push(trailer(b"abc")),
        Err(StreamError::SizeMismatch {
            announced: 4,
            received: 3
        })
    );

    let mut asm = ModelAssembler::new(100);
    asm.push(header(3)).expect("header");
    asm.push(data(b"abc")).expect("data");
    assert!(matches!(
        asm.push(trailer(b"abd")),
        Err(StreamError::TrailerMismatch { .. })
    ));

    let mut asm = ModelAssembler::new(100);
    asm.push(header(3)).expect("header");
    asm.push(data(b"abc")).expect("data");
    assert_eq!(asm.finish().err(), Some(StreamError::MissingTrailer));

    let mut asm = ModelAssembler::new(100);
    asm.push(header(3)).expect("header");
    assert_eq!(asm.push(header(3)), Err(StreamError::DuplicateHeader));

    let mut asm = ModelAssembler::new(100);
    asm.push(header(0)).expect("header");
    asm.push(trailer(b"")).expect("trailer");
    assert_eq!(asm.push(data(b"")), Err(StreamError::ChunkAfterTrailer));
    assert_eq!(
        ModelAssembler::new(1).push(ModelChunk { kind: None }),
        Err(StreamError::EmptyChunk)
    );

    let big = u64::try_from(MAX_CHUNK_BYTES * 4).expect("fits");
    let mut asm = ModelAssembler::new(big);
    asm.push(header(big)).expect("header");
    let chunk = vec![0u8; MAX_CHUNK_BYTES + 1];
    assert_eq!(
        asm.push(data(&chunk)),
        Err(StreamError::ChunkTooLarge(MAX_CHUNK_BYTES + 1))
    );
}

// ---- model store ----

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[11u8; 32])
}

/// A signed, valid ShelfNet version: (manifest bytes, signature, weights).
fn signed_version(version: u64, expires_unix_ms: i64) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let config = ShelfNetConfig::new();
    let layout = backroom_models::parameter_layout(&config);
    let params = backroom_models::init_parameters(&config, 5).expect("init");
    let weights = backroom_models::to_safetensors(&layout, &params).expect("safetensors");
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        lineage: "shelfnet".into(),
        version,
        parent_version: version - 1,
        round_id: String::new(),
        architecture: ARCHITECTURE_ID.into(),
        architecture_config: serde_json::to_value(&config).expect("json"),
        num_parameters: backroom_models::num_parameters(&config) as u64,
        weights_sha256: sha256_hex(&weights),
        weights_size: weights.len() as u64,
        dp: None,
        epsilon_spent: None,
        created_unix_ms: 1,
        expires_unix_ms,
    };
    let bytes = manifest.to_bytes();
    let signature = sign_manifest(&bytes, &signing_key()).to_vec();
    (bytes, signature, weights)
}

fn store_in(dir: &Path) -> ModelStore {
    ModelStore::new(
        dir.join("model"),
        signing_key().verifying_key(),
        "shelfnet".into(),
        1 << 30,
    )
}

#[test]
fn an_installed_model_reloads_and_a_tampered_one_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store_in(tmp.path());
    assert!(store.load_installed(0).expect("empty dir").is_none());

    let (manifest, signature, weights) = signed_version(1, i64::MAX);
    let verified = store
        .verify(manifest, signature, weights, 0, Some(1_000))
        .expect("valid version");
    let installed = store.install(verified).expect("install");
    assert_eq!(installed.version(), 1);
    let reloaded = store
        .load_installed(1_000)
        .expect("reload")
        .expect("a model");
    assert_eq!(reloaded.version(), 1);
    assert_eq!(reloaded.params, installed.params);
    assert!(!store.dir().join(format!(".{WEIGHTS_FILE}.tmp")).exists());

    // One flipped byte in the weights: the hash no longer matches.
    let weights_path = store.dir().join(WEIGHTS_FILE);
    let mut weights = std::fs::read(&weights_path).expect("read");
    let last = weights.len() - 1;
    weights[last] ^= 0x40;
    std::fs::write(&weights_path, &weights).expect("write");
    let error = store.load_installed(1_000).expect_err("tampered weights");
    assert!(matches!(error, ModelStoreError::Refused { .. }), "{error}");
    assert!(error.to_string().contains("SHA-256"), "{error}");
}

#[test]
fn a_tampered_manifest_or_foreign_signature_is_refused_on_reload() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store_in(tmp.path());
    let (manifest, signature, weights) = signed_version(2, i64::MAX);
    let verified = store
        .verify(manifest.clone(), signature, weights, 0, Some(0))
        .expect("valid");
    store.install(verified).expect("install");

    let text = String::from_utf8(manifest)
        .expect("utf8")
        .replace("\"version\":2", "\"version\":9");
    std::fs::write(store.dir().join(MANIFEST_FILE), text).expect("write");
    let error = store.load_installed(0).expect_err("tampered manifest");
    assert!(error.to_string().contains("signature"), "{error}");

    let other = ModelStore::new(
        store.dir().to_owned(),
        SigningKey::from_bytes(&[12u8; 32]).verifying_key(),
        "shelfnet".into(),
        1 << 30,
    );
    let (manifest, signature, weights) = signed_version(3, i64::MAX);
    std::fs::write(store.dir().join(MANIFEST_FILE), &manifest).expect("write");
    std::fs::write(store.dir().join(SIGNATURE_FILE), &signature).expect("write");
    std::fs::write(store.dir().join(WEIGHTS_FILE), &weights).expect("write");
    assert!(store.load_installed(0).is_ok());
    assert!(other.load_installed(0).is_err(), "a key it does not trust");
}

#[test]
fn expiry_refuses_a_download_but_only_warns_on_reload() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store_in(tmp.path());
    let (manifest, signature, weights) = signed_version(1, 5_000);
    let refused = store.verify(
        manifest.clone(),
        signature.clone(),
        weights.clone(),
        0,
        Some(6_000),
    );
    assert!(refused.is_err());
    let verified = store
        .verify(manifest, signature, weights, 0, Some(1_000))
        .expect("not expired yet");
    store.install(verified).expect("install");
    let reloaded = store.load_installed(6_000).expect("expired but verified");
    assert_eq!(reloaded.map(|m| m.version()), Some(1));
}

#[test]
fn rollback_and_oversize_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (manifest, signature, weights) = signed_version(2, i64::MAX);
    let store = store_in(tmp.path());
    let error = store.verify(
        manifest.clone(),
        signature.clone(),
        weights.clone(),
        2,
        Some(0),
    );
    assert!(error.is_err_and(|e| e.to_string().contains("not newer")));
    let small = ModelStore::new(
        tmp.path().join("m"),
        signing_key().verifying_key(),
        "shelfnet".into(),
        16,
    );
    let error = small.verify(manifest, signature, weights, 0, Some(0));
    assert!(error.is_err_and(|e| e.to_string().contains("max_model_bytes")));
}

// ---- metric queue ----

fn window(start: i64) -> ClosedWindow {
    ClosedWindow {
        camera_id: 2,
        window_start_unix: start,
        window_secs: 3600,
        frames: 60,
        slot_observations: 720,
        empty_slot_observations: 40,
        out_of_stock_events: 3,
    }
}

#[tokio::test]
async fn the_metric_queue_is_idempotent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let queue = MetricQueue::open(tmp.path()).await.expect("open");
    let key = idempotency_key("store-1", 2, 3600);
    assert_eq!(key, "store-1:2:3600");
    assert!(queue.enqueue(&key, &window(3600), 1).await.expect("insert"));
    assert!(
        !queue
            .enqueue(&key, &window(3600), 2)
            .await
            .expect("ignored")
    );
    let other = idempotency_key("store-1", 2, 7200);
    assert!(
        queue
            .enqueue(&other, &window(7200), 3)
            .await
            .expect("insert")
    );

    let pending = queue.unsynced(100).await.expect("read");
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].idempotency_key, key);
    assert_eq!(pending[0].window, window(3600));
    let batch = to_batch(&pending[0]);
    assert_eq!(
        (batch.frames, batch.out_of_stock_events, batch.camera_id),
        (60, 3, 2)
    );
    assert_eq!(queue.unsynced(1).await.expect("read").len(), 1);

    assert_eq!(
        queue
            .mark_synced(std::slice::from_ref(&key), 10)
            .await
            .expect("mark"),
        1
    );
    assert_eq!(
        queue
            .mark_synced(std::slice::from_ref(&key), 11)
            .await
            .expect("mark"),
        0
    );
    assert_eq!(queue.pending_count().await.expect("count"), 1);
    // Closing the same window again after it was synced changes nothing.
    assert!(
        !queue
            .enqueue(&key, &window(3600), 12)
            .await
            .expect("ignored")
    );
    assert_eq!(queue.pending_count().await.expect("count"), 1);
    queue.close().await;

    // Reopening keeps the state (and runs no migration twice).
    let queue = MetricQueue::open(tmp.path()).await.expect("reopen");
    assert_eq!(queue.unsynced(100).await.expect("read").len(), 1);
    assert_eq!(queue.stored_node_id().await.expect("read"), None);
    queue.store_node_id("store-1", 1).await.expect("store");
    queue.store_node_id("store-2", 2).await.expect("store");
    assert_eq!(
        queue.stored_node_id().await.expect("read").as_deref(),
        Some("store-2")
    );
    queue.close().await;
}

// ---- transport ----

#[test]
fn backoff_grows_and_is_capped() {
    let base = Duration::from_millis(500);
    let max = Duration::from_secs(30);
    assert_eq!(backoff_ceiling(0, base, max), base);
    assert_eq!(backoff_ceiling(3, base, max), Duration::from_secs(4));
    assert_eq!(backoff_ceiling(40, base, max), max);
    let mut backoff = Backoff::new(base, max);
    for attempt in 0..50 {
        let delay = backoff.next_delay();
        let ceiling = backoff_ceiling(attempt, base, max);
        assert!(
            delay <= ceiling && delay >= ceiling / 2,
            "attempt {attempt}: {delay:?}"
        );
    }
    backoff.reset();
    assert!(backoff.next_delay() <= base);
}

#[test]
fn a_missing_bundle_file_is_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let error = load_bundle(tmp.path()).expect_err("empty bundle");
    assert!(matches!(error, TransportError::ReadBundleFile { .. }));
    assert!(error.to_string().contains("ca.pem"), "{error}");
    std::fs::write(tmp.path().join("ca.pem"), "not a pem").expect("write");
    let error = load_bundle(tmp.path()).expect_err("bad ca");
    assert!(
        error.to_string().contains("ca.pem") && error.to_string().contains("PEM"),
        "{error}"
    );
}

#[test]
fn a_complete_bundle_loads_with_its_signing_key() {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    let tmp = tempfile::tempdir().expect("tempdir");
    let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    std::fs::write(tmp.path().join("ca.pem"), cert).expect("write");
    std::fs::write(tmp.path().join("cert.pem"), cert).expect("write");
    let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    std::fs::write(tmp.path().join("key.pem"), key).expect("write");
    let error = load_bundle(tmp.path()).expect_err("no signing key yet");
    assert!(
        error.to_string().contains("model-signing.pub.pem"),
        "{error}"
    );
    let public = signing_key().verifying_key();
    let pem = public
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .expect("pem");
    std::fs::write(tmp.path().join("model-signing.pub.pem"), pem).expect("write");
    let bundle = load_bundle(tmp.path()).expect("complete bundle");
    assert_eq!(bundle.model_signing_key, public);
    assert!(!format!("{bundle:?}").contains("PRIVATE"));
}
