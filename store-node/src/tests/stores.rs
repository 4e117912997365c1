//! The model store and the bundle.

use std::path::Path;
use std::time::Duration;

use backroom_models::keys::{KEY_SET_FORMAT, KeyEntry, KeySet, SignedKeySet, key_id};
use backroom_models::manifest::{MANIFEST_FORMAT, Manifest, sha256_hex, sign_manifest};
use backroom_models::{ARCHITECTURE_ID, ShelfNetConfig};
use ed25519_dalek::SigningKey;

use crate::model_store::{
    MANIFEST_FILE, ModelStore, ModelStoreError, PREVIOUS_DIR, Release, SIGNATURE_FILE, WEIGHTS_FILE,
};
use crate::transport::{Backoff, TransportError, backoff_ceiling, load_bundle};

// ---- model store ----

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[11u8; 32])
}

fn root_key() -> SigningKey {
    SigningKey::from_bytes(&[13u8; 32])
}

fn key_set(version: u64, keys: &[&SigningKey], revoked: &[&SigningKey]) -> SignedKeySet {
    SignedKeySet::sign(
        KeySet {
            format: KEY_SET_FORMAT,
            version,
            created_unix_ms: 0,
            expires_unix_ms: i64::MAX,
            keys: keys
                .iter()
                .map(|k| KeyEntry::new(&k.verifying_key()))
                .collect(),
            revoked: revoked.iter().map(|k| key_id(&k.verifying_key())).collect(),
        },
        &root_key(),
    )
}

/// A signed, valid ShelfNet version under key set v1.
fn signed_version(version: u64, expires_unix_ms: i64) -> Release {
    signed_version_of(&ShelfNetConfig::new(), version, expires_unix_ms)
}

/// A signed version of any architecture configuration.
fn signed_version_of(config: &ShelfNetConfig, version: u64, expires_unix_ms: i64) -> Release {
    signed_with(
        config,
        version,
        expires_unix_ms,
        &signing_key(),
        &key_set(1, &[&signing_key()], &[]),
    )
}

fn signed_with(
    config: &ShelfNetConfig,
    version: u64,
    expires_unix_ms: i64,
    signer: &SigningKey,
    keys: &SignedKeySet,
) -> Release {
    let config = config.clone();
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
        delta: None,
        created_unix_ms: 1,
        expires_unix_ms,
        rollback_of: None,
    };
    let bytes = manifest.to_bytes();
    let signature = sign_manifest(&bytes, signer).to_vec();
    Release {
        manifest: bytes,
        signature,
        key_set: keys.bytes.clone(),
        key_set_signature: keys.signature.clone(),
        weights,
    }
}

fn store_in(dir: &Path) -> ModelStore {
    ModelStore::new(
        dir.join("model"),
        root_key().verifying_key(),
        "shelfnet".into(),
        1 << 30,
    )
}

#[test]
fn a_correctly_signed_model_for_other_images_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store_in(tmp.path());
    // Well-formed, signed and consistent, but it classifies 28x28 grey digits: a node has only
    // shelf crops to give it.
    let release = signed_version_of(&ShelfNetConfig::mcmahan_cnn(), 1, i64::MAX);
    let err = store
        .verify(release, 0, Some(1_000))
        .expect_err("a digit classifier is not a shelf model");
    assert!(
        err.to_string().contains("1x28x28 images into 10 classes"),
        "{err}"
    );
    assert!(store.load_installed(1_000).expect("empty dir").is_none());
}

#[test]
fn an_installed_model_reloads_and_a_tampered_one_falls_back_to_the_previous() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store_in(tmp.path());
    assert!(store.load_installed(0).expect("empty dir").is_none());

    let verified = store
        .verify(signed_version(1, i64::MAX), 0, Some(1_000))
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

    // With a version before it kept in previous/, that one serves instead.
    std::fs::write(&weights_path, weights_with_last_flipped(&weights)).expect("restore");
    let second = store
        .verify(signed_version(2, i64::MAX), 1, Some(1_000))
        .expect("v2");
    store.install(second).expect("install v2");
    assert!(store.dir().join(PREVIOUS_DIR).join(MANIFEST_FILE).exists());
    std::fs::write(&weights_path, &weights).expect("damage v2");
    let fallback = store
        .load_installed(1_000)
        .expect("fallback")
        .map(|m| m.version());
    assert_eq!(fallback, Some(1));
}

fn weights_with_last_flipped(weights: &[u8]) -> Vec<u8> {
    let mut restored = weights.to_vec();
    let last = restored.len() - 1;
    restored[last] ^= 0x40;
    restored
}

#[test]
fn the_rollback_floor_survives_a_broken_install() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store_in(tmp.path());
    assert_eq!(store.rollback_floor(), 0);
    let verified = store
        .verify(signed_version(3, i64::MAX), 0, Some(1_000))
        .expect("valid version");
    store.install(verified).expect("install");
    assert_eq!(store.rollback_floor(), 3);
    // A crash part-way through the next install leaves no loadable model ...
    std::fs::remove_file(store.dir().join(WEIGHTS_FILE)).expect("remove");
    assert!(store.load_installed(1_000).is_err());
    // ... but an older signed version is still refused.
    let older = store.verify(
        signed_version(2, i64::MAX),
        store.rollback_floor(),
        Some(1_000),
    );
    assert!(older.is_err());
}

#[test]
fn a_tampered_manifest_or_foreign_root_is_refused_on_reload() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store_in(tmp.path());
    let release = signed_version(2, i64::MAX);
    let manifest = release.manifest.clone();
    let verified = store.verify(release, 0, Some(0)).expect("valid");
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
    let release = signed_version(3, i64::MAX);
    std::fs::write(store.dir().join(MANIFEST_FILE), &release.manifest).expect("write");
    std::fs::write(store.dir().join(SIGNATURE_FILE), &release.signature).expect("write");
    std::fs::write(store.dir().join(WEIGHTS_FILE), &release.weights).expect("write");
    assert!(store.load_installed(0).is_ok());
    assert!(other.load_installed(0).is_err(), "a root it does not trust");
}

#[test]
fn a_revocation_seen_once_holds_against_replayed_key_sets() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store_in(tmp.path());
    let config = ShelfNetConfig::new();
    let (old, new) = (signing_key(), SigningKey::from_bytes(&[14u8; 32]));
    let v1 = key_set(1, &[&old], &[]);
    let v2 = key_set(2, &[&old, &new], &[&old]);
    let first = store
        .verify(signed_with(&config, 1, i64::MAX, &old, &v1), 0, Some(0))
        .expect("v1 under key set 1");
    store.install(first).expect("install");
    // A release under key set 2, signed by the new key, installs and brings set 2 along.
    let second = store
        .verify(signed_with(&config, 2, i64::MAX, &new, &v2), 1, Some(0))
        .expect("v2 under key set 2");
    store.install(second).expect("install");
    assert_eq!(store.held_key_set().map(|k| k.set.version), Some(2));
    // The revoked key is refused even when the old key set is replayed with its release.
    let replayed = store.verify(signed_with(&config, 3, i64::MAX, &old, &v1), 2, Some(0));
    let error = replayed.expect_err("revoked key");
    assert!(error.to_string().contains("revokes"), "{error}");
    // And the installed v1 in previous/ is no longer trusted either: it was signed by the
    // revoked key.
    std::fs::remove_file(store.dir().join(WEIGHTS_FILE)).expect("remove");
    assert!(store.load_installed(0).is_err());
}

#[test]
fn expiry_refuses_a_download_but_only_warns_on_reload() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store_in(tmp.path());
    let refused = store.verify(signed_version(1, 5_000), 0, Some(6_000));
    assert!(refused.is_err());
    let verified = store
        .verify(signed_version(1, 5_000), 0, Some(1_000))
        .expect("not expired yet");
    store.install(verified).expect("install");
    let reloaded = store.load_installed(6_000).expect("expired but verified");
    assert_eq!(reloaded.map(|m| m.version()), Some(1));
}

#[test]
fn rollback_and_oversize_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store_in(tmp.path());
    let error = store.verify(signed_version(2, i64::MAX), 2, Some(0));
    assert!(error.is_err_and(|e| e.to_string().contains("not newer")));
    let small = ModelStore::new(
        tmp.path().join("m"),
        root_key().verifying_key(),
        "shelfnet".into(),
        16,
    );
    let error = small.verify(signed_version(2, i64::MAX), 0, Some(0));
    assert!(error.is_err_and(|e| e.to_string().contains("max_model_bytes")));
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
fn a_complete_bundle_loads_with_its_root_key() {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    let tmp = tempfile::tempdir().expect("tempdir");
    let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    std::fs::write(tmp.path().join("ca.pem"), cert).expect("write");
    std::fs::write(tmp.path().join("cert.pem"), cert).expect("write");
    let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    std::fs::write(tmp.path().join("key.pem"), key).expect("write");
    let error = load_bundle(tmp.path()).expect_err("no root key yet");
    assert!(error.to_string().contains("model-root.pub.pem"), "{error}");
    let public = root_key().verifying_key();
    let pem = public
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .expect("pem");
    std::fs::write(tmp.path().join("model-root.pub.pem"), pem).expect("write");
    let bundle = load_bundle(tmp.path()).expect("complete bundle");
    assert_eq!(bundle.model_root_key, public);
    assert!(!format!("{bundle:?}").contains("PRIVATE"));
}
