//! What leaves a store, byte for byte. The coordinator's wire tap records the decrypted bytes of
//! every connection; this test parses all of them (HTTP/2 frames, HPACK headers, gRPC messages)
//! after a DP training round with metric sync, and checks that every message a node sent is a
//! known request that re-encodes to exactly the bytes received (nothing hidden in unknown
//! fields), that every uploaded delta has L2 norm ≤ C, that metric batches carry only noised
//! releases, and that no training image appears anywhere in the stream.

use std::time::Duration;

use backroom_proto::v1 as pb;
use backroom_proto::v1::update_chunk::Kind;
use prost::Message;

use crate::http2::client_requests;
use crate::support::{run_round, shutdown, spec, start, test_options, wait_installed};

const NODE_SERVICE: &str = "/backroom.v1.NodeService/";

/// Decodes `bytes` as `M` and checks that re-encoding gives the same bytes back: a message with
/// unknown fields, or with trailing garbage, fails.
fn decode_exact<M: Message + Default>(bytes: &[u8], what: &str) -> M {
    let message = M::decode(bytes).unwrap_or_else(|e| panic!("{what} does not decode: {e}"));
    assert_eq!(
        message.encode_to_vec(),
        bytes,
        "{what} carries bytes outside its schema"
    );
    message
}

/// Reassembles one UploadUpdate stream; returns the delta.
fn upload_delta(messages: &[Vec<u8>]) -> (pb::UpdateHeader, Vec<f32>) {
    let mut header = None;
    let mut data = Vec::new();
    let mut trailer = None;
    for (i, bytes) in messages.iter().enumerate() {
        let chunk: pb::UpdateChunk = decode_exact(bytes, "an UpdateChunk");
        match chunk.kind {
            Some(Kind::Header(h)) if i == 0 => header = Some(h),
            Some(Kind::Data(d)) if header.is_some() && trailer.is_none() => {
                data.extend_from_slice(&d);
            }
            Some(Kind::Trailer(t)) if header.is_some() => trailer = Some(t),
            other => panic!("update chunk {i} is out of order: {other:?}"),
        }
    }
    let header = header.unwrap_or_else(|| panic!("upload without a header"));
    assert!(trailer.is_some(), "upload without a trailer");
    assert_eq!(data.len() % 4, 0);
    let delta = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (header, delta)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_byte_a_node_sends_is_a_known_request_a_clipped_delta_or_a_noised_release() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut options = test_options(dir.path(), 3);
    options.tap_connections = true;
    options.privacy_budget = backroom_coordinator::ledger::Budget {
        epsilon_max: Some(1e6),
        delta: 1e-5,
    };
    let (world_seed, train_samples) = (options.world_seed, options.train_samples);
    // The largest raw value each metric can take in one window; a larger value on the wire can
    // only be a noised one.
    let window_secs = i64::from(backroom_store_node::config::DEFAULT_METRIC_WINDOW_SECS);
    let frames_per_window = (window_secs / options.camera.seconds_per_frame) as f64;
    let slots = options.camera.slots as f64;
    let raw_max = [
        ("frames", frames_per_window),
        ("out_of_stock_events", slots * (frames_per_window - 1.0)),
        (
            "out_of_stock_minutes",
            slots * frames_per_window * options.camera.seconds_per_frame as f64 / 60.0,
        ),
    ];
    let mut sandbox = start(options).await;
    wait_installed(&sandbox, 1).await;
    let clip_norm = 0.5_f32;
    let round = run_round(
        &mut sandbox,
        pb::RoundSpec {
            clip_norm,
            ..spec(3, 0.5)
        },
    )
    .await;
    assert_eq!(round.state, pb::RoundState::Published as i32, "{round:?}");
    // Let every node sync at least 20 metric windows before the tap is read.
    for node in &sandbox.nodes {
        let mut status = node.status.clone();
        tokio::time::timeout(
            Duration::from_secs(120),
            status.wait_for(|s| s.windows_synced >= 20),
        )
        .await
        .unwrap_or_else(|_| panic!("{} synced no metric window", node.store_id))
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let tap = sandbox
        .wire_tap
        .clone()
        .unwrap_or_else(|| panic!("the sandbox was asked to tap connections"));
    shutdown(sandbox).await;

    let mut uploads = 0;
    let mut metric_batches = 0;
    let mut beyond_raw = [0usize; 3];
    let mut scanned_bytes = 0;
    let node_connections: Vec<_> = tap
        .connections()
        .into_iter()
        .filter(|c| c.peer.starts_with("node/"))
        .collect();
    assert!(!node_connections.is_empty(), "no node connection recorded");
    let mut all_bytes = Vec::new();
    for connection in &node_connections {
        let bytes = connection.received();
        scanned_bytes += bytes.len();
        let requests = client_requests(&bytes)
            .unwrap_or_else(|e| panic!("{}: unreadable HTTP/2 stream: {e}", connection.peer));
        for request in requests {
            let method = request
                .path
                .strip_prefix(NODE_SERVICE)
                .unwrap_or_else(|| panic!("a node called {:?}", request.path));
            for (name, value) in &request.headers {
                // Only protocol headers with protocol values: no metadata that could carry
                // data around the schema.
                let value = String::from_utf8_lossy(value);
                let allowed = match name.as_str() {
                    ":method" => value == "POST",
                    ":scheme" => value == "https",
                    ":path" => value.starts_with(NODE_SERVICE),
                    ":authority" => value.starts_with("127.0.0.1:"),
                    "content-type" => value == "application/grpc",
                    "te" => value == "trailers",
                    "user-agent" => value.starts_with("tonic/"),
                    "grpc-timeout" => {
                        value.len() <= 9
                            && value[..value.len().saturating_sub(1)]
                                .bytes()
                                .all(|b| b.is_ascii_digit())
                            && value.ends_with(['H', 'M', 'S', 'm', 'u', 'n'])
                    }
                    _ => false,
                };
                assert!(allowed, "{method}: unexpected header {name}: {value:?}");
            }
            match method {
                "UploadUpdate" => {
                    let (header, delta) = upload_delta(&request.messages);
                    assert_eq!(header.round_id, round.round_id);
                    let norm = delta
                        .iter()
                        .map(|v| f64::from(*v) * f64::from(*v))
                        .sum::<f64>()
                        .sqrt();
                    assert!(
                        norm <= f64::from(clip_norm),
                        "{} sent a delta of norm {norm} > C = {clip_norm}",
                        connection.peer
                    );
                    uploads += 1;
                    // Positive control for the image scan below: a 16-value run of data the
                    // node did send is found by the same search.
                    let run: Vec<u8> = delta[1000..1016]
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect();
                    assert!(contains(&bytes, &run), "the byte scan misses sent data");
                }
                "SyncMetrics" => {
                    for bytes in &request.messages {
                        let sync: pb::SyncMetricsRequest = decode_exact(bytes, "SyncMetrics");
                        for batch in &sync.batches {
                            for (name, value) in crate::support::assert_noised_release(batch) {
                                for (i, (metric, max)) in raw_max.iter().enumerate() {
                                    if name == *metric && value > *max {
                                        beyond_raw[i] += 1;
                                    }
                                }
                            }
                            metric_batches += 1;
                        }
                    }
                }
                "Hello" => request.messages.iter().for_each(|m| {
                    decode_exact::<pb::HelloRequest>(m, "Hello");
                }),
                "Heartbeat" => request.messages.iter().for_each(|m| {
                    decode_exact::<pb::HeartbeatRequest>(m, "Heartbeat");
                }),
                "PollTask" => request.messages.iter().for_each(|m| {
                    decode_exact::<pb::PollTaskRequest>(m, "PollTask");
                }),
                "DownloadModel" => request.messages.iter().for_each(|m| {
                    decode_exact::<pb::DownloadModelRequest>(m, "DownloadModel");
                }),
                other => panic!("a node called an unknown method {other}"),
            }
        }
        all_bytes.extend_from_slice(&bytes);
    }
    assert_eq!(uploads, 3, "every sampled store uploads exactly one delta");
    assert!(
        metric_batches >= 60,
        "only {metric_batches} metric batches were sent"
    );
    // A raw value never exceeds its window maximum (4 frames, 36 events, 720 slot-minutes
    // here); noised ones do. With the default release (ρ = 0.04 split 0.2/0.4/0.4: noise
    // scales ≈ 7.9 frames, 67 events, 1006 slot-minutes) each window's noised value exceeds
    // its maximum with probability at least 0.45, 0.29 and 0.23 (whatever the raw value), so
    // over 60 windows a node sending noised values fails this check with probability below
    // 0.77^60 ≈ 1.5e-7, while a node sending any metric raw always fails it.
    for ((metric, max), beyond) in raw_max.iter().zip(beyond_raw) {
        assert!(
            beyond > 0,
            "no {metric} value above its raw maximum {max} in {metric_batches} releases: raw?"
        );
    }

    // No training image (nor a 16-value run of one) appears in anything a node sent, in the f32
    // layout the node trains on.
    for store_index in 0..3 {
        let crops = backroom_datasets::generate_store_split(world_seed, store_index, train_samples);
        let numel = crops.images.len() / crops.labels.len().max(1);
        for image in crops.images.chunks(numel) {
            let middle = &image[numel / 2..numel / 2 + 16];
            let needle: Vec<u8> = middle.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert!(
                !contains(&all_bytes, &needle),
                "image data of store {store_index} left the store"
            );
        }
    }
    eprintln!(
        "scanned {scanned_bytes} decrypted bytes from {} node connections: {uploads} uploads, \
         {metric_batches} metric batches",
        node_connections.len()
    );
}
