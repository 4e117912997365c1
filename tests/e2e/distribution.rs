//! Secure model distribution over real mTLS: every update-channel threat refused with the old
//! model still serving, a live swap under continuous inference, and a staged rollout.
//!
//! The threats are planted the way an attacker with the coordinator's database and model files
//! (but not the root key) would: rows and files written behind the coordinator's back, some
//! signed with the real signing key, and promoted to stable so nodes are offered them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backroom::sandbox::Sandbox;
use backroom_coordinator::identity::{PkiPaths, Role};
use backroom_coordinator::signing_keys;
use backroom_models::manifest::{Manifest, sha256_hex, sign_manifest};
use backroom_models::{ARCHITECTURE_ID, ShelfNetConfig};
use backroom_proto::v1 as pb;
use backroom_proto::v1::node_service_client::NodeServiceClient;
use ed25519_dalek::SigningKey;

use crate::support::{coordinator_db, params_of, shutdown, start, test_options, wait_installed};

fn pki(sandbox: &Sandbox) -> PkiPaths {
    PkiPaths::new(sandbox.coordinator_dir.join("pki"))
}

fn now_ms() -> i64 {
    backroom::evaluate::now_unix_ms()
}

/// A well-formed release derived from v1: its parameters shifted by `shift`, so each planted
/// version has weights of its own.
fn release_from_v1(sandbox: &Sandbox, version: u64, shift: f32) -> (Manifest, Vec<u8>) {
    // Read as an attacker would, without verification (v1's signer may be revoked by now).
    let layout = backroom_models::parameter_layout(&ShelfNetConfig::new());
    let [v1_manifest, _] =
        backroom::evaluate::version_files(&sandbox.coordinator_dir, "shelfnet", 1);
    let v1_weights = backroom::evaluate::weights_file(
        &sandbox.coordinator_dir,
        "shelfnet",
        1,
        &read(&v1_manifest),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let params: Vec<f32> = backroom_models::from_safetensors(&layout, &read(&v1_weights))
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|p| p + shift)
        .collect();
    let weights =
        backroom_models::to_safetensors(&layout, &params).unwrap_or_else(|e| panic!("{e}"));
    let mut manifest = Manifest::from_bytes(&read(&v1_manifest)).unwrap_or_else(|e| panic!("{e}"));
    manifest.version = version;
    manifest.parent_version = version - 1;
    manifest.round_id = format!("planted-{version}");
    manifest.weights_sha256 = sha256_hex(&weights);
    manifest.weights_size = weights.len() as u64;
    manifest.created_unix_ms = now_ms();
    manifest.expires_unix_ms = now_ms() + 24 * 3600 * 1000;
    (manifest, weights)
}

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn active_key(sandbox: &Sandbox) -> SigningKey {
    signing_keys::load_current(&pki(sandbox))
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

/// Writes a version's files and row behind the coordinator's back; `promote` then points stable
/// at it through the admin API, as an operator would.
async fn plant(
    sandbox: &mut Sandbox,
    version: u64,
    manifest: &[u8],
    signature: &[u8],
    weights: &[u8],
    promote: bool,
) {
    let dir = sandbox.coordinator_dir.join("models/shelfnet");
    let weights_path = dir.join(format!("v{version}.safetensors"));
    std::fs::write(&weights_path, weights).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join(format!("v{version}.manifest.json")), manifest)
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join(format!("v{version}.manifest.sig")), signature)
        .unwrap_or_else(|e| panic!("{e}"));
    let pool = coordinator_db(sandbox).await;
    sqlx::query(
        "INSERT INTO model_versions (lineage, version, parent_version, round_id, weights_sha256, \
         weights_path, manifest, signature, created_unix_ms) VALUES ('shelfnet', ?, ?, '', ?, ?, \
         ?, ?, ?)",
    )
    .bind(i64::try_from(version).unwrap_or(i64::MAX))
    .bind(i64::try_from(version - 1).unwrap_or(0))
    .bind(sha256_hex(weights))
    .bind(weights_path.display().to_string())
    .bind(manifest)
    .bind(signature)
    .bind(now_ms())
    .execute(&pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    pool.close().await;
    if promote {
        sandbox
            .admin
            .promote_model(pb::PromoteModelRequest {
                lineage: "shelfnet".into(),
                version,
                channel: "stable".into(),
                percent: 0,
            })
            .await
            .unwrap_or_else(|s| panic!("promote v{version}: {s}"));
    }
}

/// Plants a correctly signed version (signed by `signer`) and promotes it.
async fn plant_signed(
    sandbox: &mut Sandbox,
    manifest: &Manifest,
    weights: &[u8],
    signer: &SigningKey,
) {
    let bytes = manifest.to_bytes();
    let signature = sign_manifest(&bytes, signer);
    plant(sandbox, manifest.version, &bytes, &signature, weights, true).await;
}

/// Waits for node 0 (which had refused nothing) to refuse a version, with `reason` in its
/// error, while still serving v1 (installed, live, and processing frames).
async fn expect_refused(sandbox: &Sandbox, threat: &str, reason: &str) {
    let mut status = sandbox.nodes[0].status.clone();
    tokio::time::timeout(
        Duration::from_secs(120),
        status.wait_for(|s| s.refused_models >= 1),
    )
    .await
    .unwrap_or_else(|_| panic!("{threat}: the node did not refuse the planted version"))
    .unwrap_or_else(|e| panic!("{e}"));
    let seen = status.borrow().clone();
    let error = seen.last_error.clone().unwrap_or_default();
    assert!(
        error.contains(reason),
        "{threat}: refused for the wrong reason: {error}"
    );
    assert_eq!(seen.installed_version, 1, "{threat}: installed anyway");
    let live = sandbox.nodes[0]
        .model
        .borrow()
        .as_ref()
        .map(|m| m.version());
    assert_eq!(live, Some(1), "{threat}: the live model changed");
    let frames = seen.frames_processed;
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| s.frames_processed > frames + 2),
    )
    .await
    .unwrap_or_else(|_| panic!("{threat}: the node stopped serving"))
    .unwrap_or_else(|e| panic!("{e}"));
}

/// The update-channel threats, each planted as version 2 on a node running v1.
#[derive(Clone, Copy, Debug)]
enum Threat {
    /// Weights signed by a key the key set does not hold.
    ArbitraryWeights,
    /// A correct signature, one weight byte changed afterwards.
    TamperedWeights,
    /// Version 2 served as v1's genuine, signed manifest and weights.
    Rollback,
    /// A genuinely signed manifest that has expired.
    Freeze,
    /// Version 2's signed manifest with the weights of another version.
    MixAndMatch,
    /// A signed manifest, then far more bytes than it names.
    EndlessData,
    /// Signed and consistent, for a network this node does not run (id, then config).
    WrongArchitecture,
    WrongArchitectureConfig,
    /// Signed by a key that a rotation revoked (the node is not re-enrolled).
    RevokedKey,
}

/// Plants `threat` as version 2, checks the node refuses it for the right reason while v1
/// keeps serving, then checks a good version 3 installs (so the refusal was the fault's doing)
/// and returns the sandbox.
async fn refused_with_old_model_serving(threat: Threat, dir: &std::path::Path) -> Sandbox {
    let mut options = test_options(dir, 1);
    options.poll_wait_secs = 2;
    let mut sandbox = start(options).await;
    wait_installed(&sandbox, 1).await;
    let key = active_key(&sandbox);
    let (mut m, mut w) = release_from_v1(&sandbox, 2, 0.01);
    let reason = match threat {
        Threat::ArbitraryWeights => {
            plant_signed(&mut sandbox, &m, &w, &SigningKey::from_bytes(&[99; 32])).await;
            "does not verify against any signing key"
        }
        Threat::TamperedWeights => {
            let bytes = m.to_bytes();
            let signature = sign_manifest(&bytes, &key);
            let middle = w.len() / 2;
            w[middle] ^= 0x10;
            plant(&mut sandbox, 2, &bytes, &signature, &w, true).await;
            "SHA-256"
        }
        Threat::Rollback => {
            let [m1, s1] =
                backroom::evaluate::version_files(&sandbox.coordinator_dir, "shelfnet", 1);
            let (manifest, signature) = (read(&m1), read(&s1));
            let w1 = backroom::evaluate::weights_file(
                &sandbox.coordinator_dir,
                "shelfnet",
                1,
                &manifest,
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
            let weights = read(&w1);
            plant(&mut sandbox, 2, &manifest, &signature, &weights, true).await;
            "rollback refused"
        }
        Threat::Freeze => {
            m.expires_unix_ms = now_ms() - 60_000;
            plant_signed(&mut sandbox, &m, &w, &key).await;
            "expired"
        }
        Threat::MixAndMatch => {
            let (_, other_weights) = release_from_v1(&sandbox, 2, 0.05);
            plant_signed(&mut sandbox, &m, &other_weights, &key).await;
            "SHA-256"
        }
        Threat::EndlessData => {
            let bytes = m.to_bytes();
            let signature = sign_manifest(&bytes, &key);
            w.extend(std::iter::repeat_n(0u8, 1 << 20));
            plant(&mut sandbox, 2, &bytes, &signature, &w, true).await;
            "announces"
        }
        Threat::WrongArchitecture => {
            m.architecture = "resnet-50".into();
            plant_signed(&mut sandbox, &m, &w, &key).await;
            "manifest is for architecture \"resnet-50\""
        }
        Threat::WrongArchitectureConfig => {
            let digits = ShelfNetConfig::mcmahan_cnn();
            m.architecture_config = serde_json::to_value(&digits).unwrap_or_default();
            plant_signed(&mut sandbox, &m, &w, &key).await;
            "unusable architecture_config"
        }
        Threat::RevokedKey => {
            let paths = pki(&sandbox);
            let change = signing_keys::rotate(&paths, &paths.root_key(), true)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                change.revoked,
                vec![backroom_models::keys::key_id(&key.verifying_key())]
            );
            // The new key set reaches the node with its polls, before any new version exists.
            let held = sandbox.nodes[0].config.data_dir.join("model/keyset.json");
            let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
            while !String::from_utf8_lossy(&std::fs::read(&held).unwrap_or_default())
                .contains("\"version\":2")
            {
                assert!(
                    tokio::time::Instant::now() < give_up,
                    "key set v2 did not reach the node with its polls"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            plant_signed(&mut sandbox, &m, &w, &key).await;
            "which the key set revokes"
        }
    };
    expect_refused(&sandbox, &format!("{threat:?}"), reason).await;

    let (good, weights) = release_from_v1(&sandbox, 3, 0.02);
    let signer = active_key(&sandbox);
    plant_signed(&mut sandbox, &good, &weights, &signer).await;
    wait_installed(&sandbox, 3).await;
    assert_eq!(sandbox.nodes[0].status.borrow().refused_models, 1);
    sandbox
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_weights_signed_by_an_unknown_key_are_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    shutdown(refused_with_old_model_serving(Threat::ArbitraryWeights, dir.path()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    shutdown(refused_with_old_model_serving(Threat::TamperedWeights, dir.path()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_signed_version_offered_as_new_is_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    shutdown(refused_with_old_model_serving(Threat::Rollback, dir.path()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    shutdown(refused_with_old_model_serving(Threat::Freeze, dir.path()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_with_another_versions_weights_is_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    shutdown(refused_with_old_model_serving(Threat::MixAndMatch, dir.path()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_longer_than_its_manifest_is_refused_from_the_header() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    shutdown(refused_with_old_model_serving(Threat::EndlessData, dir.path()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_model_of_another_architecture_is_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    shutdown(refused_with_old_model_serving(Threat::WrongArchitecture, dir.path()).await).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    shutdown(refused_with_old_model_serving(Threat::WrongArchitectureConfig, dir.path()).await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_signed_by_a_revoked_key_is_refused_after_rotation_without_reenrolment() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sandbox = refused_with_old_model_serving(Threat::RevokedKey, dir.path()).await;
    // The revocation reached the node and is kept.
    let held = std::fs::read(sandbox.nodes[0].config.data_dir.join("model/keyset.json"))
        .unwrap_or_default();
    let held = String::from_utf8_lossy(&held);
    assert!(
        held.contains("\"version\":2") && held.contains("\"revoked\":[\""),
        "{held}"
    );
    // `backroom models verify`'s checks agree with the node on the exported files of v3, which
    // the new key signed.
    let out = dir.path().join("export");
    let files = backroom::evaluate::export_version(&sandbox.coordinator_dir, "shelfnet", 3, &out)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let parts = backroom_models::verify::SignedManifestFile::parse(&read(&files.manifest))
        .unwrap_or_else(|e| panic!("{e}"));
    let root =
        backroom::evaluate::load_verifying_key(&files.root).unwrap_or_else(|e| panic!("{e}"));
    let verified = backroom::evaluate::verify_parts(&parts, &read(&files.weights), &root, None, 0)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(verified.manifest.version, 3);
    shutdown(sandbox).await;
}

/// Logits of a fixed batch under `params`.
fn logits_of(device: &backroom_models::ComputeDevice, params: &[f32], images: &[f32]) -> Vec<f32> {
    backroom_models::LoadedModel::new(device, &ShelfNetConfig::new(), params)
        .and_then(|m| m.logits(images))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_never_sees_a_half_installed_model_across_three_swaps() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut options = test_options(dir.path(), 1);
    options.poll_wait_secs = 2;
    let mut sandbox = start(options).await;
    wait_installed(&sandbox, 1).await;
    let key = active_key(&sandbox);
    let images = backroom_datasets::generate_test_split(7, 8).images;

    // Inference on the node's live model, continuously, on a thread of its own.
    let stop = Arc::new(AtomicBool::new(false));
    let live = sandbox.nodes[0].model.clone();
    let worker = {
        let (stop, images) = (stop.clone(), images.clone());
        std::thread::spawn(move || {
            let device = backroom_models::select_device(backroom_models::BackendChoice::Cpu)
                .unwrap_or_else(|e| panic!("{e}"));
            let mut results = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // One request: a snapshot of the live model, used whole.
                let Some(model) = live.borrow().clone() else {
                    results.push(Err("no model".to_owned()));
                    continue;
                };
                let outcome =
                    backroom_models::LoadedModel::new(&device, &model.config, &model.params)
                        .and_then(|m| m.logits(&images))
                        .map(|logits| (model.version(), logits))
                        .map_err(|e| e.to_string());
                results.push(outcome);
            }
            results
        })
    };

    let frames_before = sandbox.nodes[0].status.borrow().frames_processed;
    for (version, shift) in [(2u64, 0.02f32), (3, -0.03), (4, 0.05)] {
        let (m, w) = release_from_v1(&sandbox, version, shift);
        plant_signed(&mut sandbox, &m, &w, &key).await;
        wait_installed(&sandbox, version).await;
        // Let inference run on each version for a while.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let results = tokio::task::spawn_blocking(move || worker.join())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|_| panic!("inference thread panicked"));

    let device = backroom_models::select_device(backroom_models::BackendChoice::Cpu)
        .unwrap_or_else(|e| panic!("{e}"));
    let reference: Vec<Vec<f32>> = (1..=4)
        .map(|v| logits_of(&device, &params_of(&sandbox, v), &images))
        .collect();
    let mut seen = BTreeSet::new();
    let mut last_version = 0;
    for (i, result) in results.iter().enumerate() {
        let (version, logits) = result
            .as_ref()
            .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert!(
            *version >= last_version,
            "request {i} went back to v{version}"
        );
        last_version = *version;
        seen.insert(*version);
        let index = usize::try_from(*version - 1).unwrap_or(usize::MAX);
        for (other, expected) in reference.iter().enumerate() {
            let distance = logits
                .iter()
                .zip(expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            if other == index {
                assert!(
                    distance < 1e-4,
                    "request {i} on v{version} is not v{version}'s output"
                );
            } else {
                assert!(
                    distance > 1e-3,
                    "request {i}: v{version} indistinguishable from v{}",
                    other + 1
                );
            }
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from([1, 2, 3, 4]),
        "{} requests",
        results.len()
    );
    eprintln!(
        "{} inference requests across versions {seen:?}, none failed",
        results.len()
    );
    // The node's own camera inference went on through the swaps.
    let status = sandbox.nodes[0].status.borrow().clone();
    assert!(status.frames_processed > frames_before + 5, "{status:?}");
    assert_eq!(status.refused_models, 0);
    // The version before the current one is kept whole for fallback.
    let previous = sandbox.nodes[0]
        .config
        .data_dir
        .join("model/previous/manifest.json");
    let previous = Manifest::from_bytes(&read(&previous)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(previous.version, 3);
    shutdown(sandbox).await;
}

/// A simulated store: its own enrolled certificate, polling and downloading over mTLS, checking
/// every release with the node's own verification.
struct SimulatedStore {
    id: String,
    client: NodeServiceClient<tonic::transport::Channel>,
    installed: u64,
}

impl SimulatedStore {
    /// One poll; installs the offered version if it is newer. Returns the version it runs.
    async fn poll_and_update(&mut self, root: &ed25519_dalek::VerifyingKey) -> u64 {
        let offered = self
            .client
            .poll_task(pb::PollTaskRequest {
                lineage: "shelfnet".into(),
                installed_version: self.installed,
                wait_secs: 0,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("{}: {s}", self.id))
            .into_inner()
            .offered_version;
        if offered <= self.installed {
            return self.installed;
        }
        let mut stream = self
            .client
            .download_model(pb::DownloadModelRequest {
                lineage: "shelfnet".into(),
                version: offered,
            })
            .await
            .unwrap_or_else(|s| panic!("{}: {s}", self.id))
            .into_inner();
        let (mut header, mut weights) = (None, Vec::new());
        while let Some(chunk) = stream.message().await.unwrap_or_else(|s| panic!("{s}")) {
            match chunk.kind {
                Some(pb::model_chunk::Kind::Header(h)) => header = Some(h),
                Some(pb::model_chunk::Kind::Data(d)) => weights.extend(d),
                _ => {}
            }
        }
        let header = header.unwrap_or_else(|| panic!("no header"));
        let parts = backroom_models::verify::OwnedParts {
            manifest: header.manifest,
            signature: header.signature,
            key_set: header.key_set,
            key_set_signature: header.key_set_signature,
        };
        let verified = backroom::evaluate::verify_parts(
            &parts,
            &weights,
            root,
            Some("shelfnet"),
            self.installed,
        )
        .unwrap_or_else(|e| panic!("{}: v{offered} refused: {e}", self.id));
        self.installed = verified.manifest.version;
        self.installed
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_reaches_exactly_its_deterministic_share_of_twenty_stores() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut sandbox = start(test_options(dir.path(), 0)).await;
    let root = backroom::evaluate::load_verifying_key(&sandbox.model_root_key())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut stores = Vec::new();
    for n in 1..=20 {
        let id = format!("store-{n}");
        let bundle = backroom::sandbox::issue_bundle(
            &sandbox.coordinator_dir,
            Role::Node,
            &id,
            &dir.path().join("bundles").join(&id),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        let channel = backroom::client::connect(&sandbox.coordinator_url, "localhost", &bundle)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        stores.push(SimulatedStore {
            id,
            client: NodeServiceClient::new(channel),
            installed: 0,
        });
    }
    for store in &mut stores {
        assert_eq!(store.poll_and_update(&root).await, 1);
    }

    // v2 published but not promoted: nobody moves.
    let (m, w) = release_from_v1(&sandbox, 2, 0.01);
    let bytes = m.to_bytes();
    let signature = sign_manifest(&bytes, &active_key(&sandbox));
    plant(&mut sandbox, 2, &bytes, &signature, &w, false).await;
    for store in &mut stores {
        assert_eq!(store.poll_and_update(&root).await, 1, "{}", store.id);
    }

    let mut previous: BTreeSet<String> = BTreeSet::new();
    for percent in [10u32, 50] {
        let channels = sandbox
            .admin
            .promote_model(pb::PromoteModelRequest {
                lineage: "shelfnet".into(),
                version: 2,
                channel: "canary".into(),
                percent,
            })
            .await
            .unwrap_or_else(|s| panic!("{s}"))
            .into_inner();
        assert_eq!((channels.stable_version, channels.canary_version), (1, 2));
        let expected: BTreeSet<String> = stores
            .iter()
            .filter(|s| backroom_coordinator::rollout::in_canary("shelfnet", &s.id, percent))
            .map(|s| s.id.clone())
            .collect();
        assert!(
            !expected.is_empty() && expected.len() < stores.len(),
            "{percent}%: {expected:?}"
        );
        let mut updated = BTreeSet::new();
        for store in &mut stores {
            if store.poll_and_update(&root).await == 2 {
                updated.insert(store.id.clone());
            }
        }
        assert_eq!(updated, expected, "at {percent}%");
        assert!(
            previous.is_subset(&updated),
            "raising the share dropped stores"
        );
        previous = updated;
    }

    // Promoting to stable reaches the rest and ends the canary.
    let channels = sandbox
        .admin
        .promote_model(pb::PromoteModelRequest {
            lineage: "shelfnet".into(),
            version: 2,
            channel: "stable".into(),
            percent: 0,
        })
        .await
        .unwrap_or_else(|s| panic!("{s}"))
        .into_inner();
    assert_eq!((channels.stable_version, channels.canary_version), (2, 0));
    for store in &mut stores {
        assert_eq!(store.poll_and_update(&root).await, 2, "{}", store.id);
    }
    // Stable never moves back; a rollback goes forward with old weights.
    let back = sandbox
        .admin
        .promote_model(pb::PromoteModelRequest {
            lineage: "shelfnet".into(),
            version: 1,
            channel: "stable".into(),
            percent: 0,
        })
        .await
        .expect_err("stable moved backwards");
    assert_eq!(back.code(), tonic::Code::FailedPrecondition);
    let rolled = sandbox
        .admin
        .rollback_model(pb::RollbackModelRequest {
            lineage: "shelfnet".into(),
            to_version: 1,
        })
        .await
        .unwrap_or_else(|s| panic!("{s}"))
        .into_inner();
    assert_eq!(rolled.version, 3);
    for store in &mut stores {
        assert_eq!(store.poll_and_update(&root).await, 3, "{}", store.id);
    }
    assert_eq!(params_of(&sandbox, 3), params_of(&sandbox, 1));
    let manifest = Manifest::from_bytes(&rolled.manifest).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (manifest.rollback_of, manifest.architecture.as_str()),
        (Some(1), ARCHITECTURE_ID)
    );
    shutdown(sandbox).await;
}
