//! Model release verification, the node's gate before installing anything: the signed-manifest
//! file format, then manifests that *are* validly signed (the target signs what the fuzzer
//! writes, so every later check is reached: JSON, format, lineage, versions, expiry,
//! architecture config, weights size and hash, safetensors, parameter count). It must never
//! panic, and whatever it accepts must meet every expectation.
#![no_main]

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use backroom_models::keys::{KEY_SET_FORMAT, KeyEntry, KeySet, SignedKeySet};
use backroom_models::manifest::{
    Expectations, MANIFEST_FORMAT, Manifest, sha256_hex, sign_manifest,
};
use backroom_models::verify::{ReleaseParts, SignedManifestFile, Trust, verify_release};
use backroom_models::{ARCHITECTURE_ID, ShelfNetConfig, parameter_layout, to_safetensors};
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 5_000;
const INSTALLED: u64 = 3;

struct Keys {
    root: SigningKey,
    signer: SigningKey,
    key_set: SignedKeySet,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let root = SigningKey::from_bytes(&[7; 32]);
        let signer = SigningKey::from_bytes(&[9; 32]);
        let key_set = SignedKeySet::sign(
            KeySet {
                format: KEY_SET_FORMAT,
                version: 1,
                created_unix_ms: 0,
                expires_unix_ms: 1_000_000,
                keys: vec![KeyEntry::new(&signer.verifying_key())],
                revoked: vec![],
            },
            &root,
        );
        Keys {
            root,
            signer,
            key_set,
        }
    })
}

#[derive(Debug, Arbitrary)]
struct Config {
    conv_channels: Vec<u8>,
    hidden: u16,
    kernel_size: u8,
    input_channels: u8,
    image_size: u16,
    num_classes: u8,
}

#[derive(Debug, Arbitrary)]
enum ManifestInput<'a> {
    /// Any bytes, signed as they are.
    Raw(&'a [u8]),
    /// A manifest built field by field.
    Fields {
        format_is_current: bool,
        lineage_matches: bool,
        version: u64,
        parent_version: u64,
        architecture_matches: bool,
        config: Config,
        num_parameters: Option<u64>,
        created_unix_ms: i64,
        expires_unix_ms: i64,
        honest_weights: bool,
        weights_value: f32,
    },
}

fn shelf_weights(config: &ShelfNetConfig, value: f32) -> Option<(Vec<u8>, u64)> {
    if config.validate().is_err() {
        return None;
    }
    let layout = parameter_layout(config);
    let numel: usize = layout.iter().map(|t| t.numel()).sum();
    // Keep each run fast: the standard net has 71,666.
    if numel > 200_000 {
        return None;
    }
    let weights = to_safetensors(&layout, &vec![value; numel]).ok()?;
    Some((weights, numel as u64))
}

fuzz_target!(|data: &[u8]| {
    // The file a privacy officer or `backroom models verify` reads.
    let _ = SignedManifestFile::parse(data);

    let mut u = Unstructured::new(data);
    let Ok(input) = ManifestInput::arbitrary(&mut u) else {
        return;
    };
    let rest = u.take_rest();
    let (manifest, weights) = match input {
        ManifestInput::Raw(bytes) => (bytes.to_vec(), rest.to_vec()),
        ManifestInput::Fields {
            format_is_current,
            lineage_matches,
            version,
            parent_version,
            architecture_matches,
            config,
            num_parameters,
            created_unix_ms,
            expires_unix_ms,
            honest_weights,
            weights_value,
        } => {
            let config = ShelfNetConfig {
                conv_channels: config
                    .conv_channels
                    .iter()
                    .map(|&c| usize::from(c))
                    .collect(),
                hidden: usize::from(config.hidden),
                kernel_size: usize::from(config.kernel_size),
                input_channels: usize::from(config.input_channels),
                image_size: usize::from(config.image_size),
                num_classes: usize::from(config.num_classes),
            };
            let built = honest_weights
                .then(|| shelf_weights(&config, weights_value))
                .flatten();
            let (weights, count) = built.unwrap_or_else(|| (rest.to_vec(), 0));
            let manifest = Manifest {
                format: if format_is_current {
                    MANIFEST_FORMAT
                } else {
                    MANIFEST_FORMAT + 1
                },
                lineage: if lineage_matches {
                    "shelfnet".into()
                } else {
                    "other".into()
                },
                version,
                parent_version,
                round_id: "r-fuzz".into(),
                architecture: if architecture_matches {
                    ARCHITECTURE_ID.into()
                } else {
                    "resnet".into()
                },
                architecture_config: serde_json::to_value(&config).unwrap_or_default(),
                num_parameters: num_parameters.unwrap_or(count),
                weights_sha256: sha256_hex(&weights),
                weights_size: weights.len() as u64,
                dp: None,
                epsilon_spent: None,
                delta: None,
                created_unix_ms,
                expires_unix_ms,
                rollback_of: None,
            };
            (manifest.to_bytes(), weights)
        }
    };
    let keys = keys();
    let signature = sign_manifest(&manifest, &keys.signer);
    let root = keys.root.verifying_key();
    let expect = Expectations {
        lineage: "shelfnet",
        architecture: ARCHITECTURE_ID,
        installed_version: INSTALLED,
        now_unix_ms: NOW,
    };
    let verify = |key_set_signature: &[u8]| {
        verify_release(
            Trust {
                root: &root,
                held: None,
            },
            ReleaseParts {
                manifest: &manifest,
                signature: &signature,
                key_set: &keys.key_set.bytes,
                key_set_signature,
            },
            &weights,
            &expect,
        )
    };
    let verified = verify(&keys.key_set.signature);
    if let Ok(release) = verified {
        let m = &release.manifest;
        assert_eq!(m.lineage, "shelfnet");
        assert_eq!(m.architecture, ARCHITECTURE_ID);
        assert!(m.version > INSTALLED, "accepted version {}", m.version);
        assert!(m.expires_unix_ms > NOW, "accepted an expired manifest");
        assert_eq!(m.weights_size, weights.len() as u64);
        assert_eq!(m.weights_sha256, sha256_hex(&weights));
        assert!(release.config.validate().is_ok());
        assert!(release.config.is_shelf_classifier());
        assert_eq!(
            release.params.len() as u64,
            backroom_models::num_parameters(&release.config) as u64
        );
        assert_eq!(m.num_parameters, release.params.len() as u64);
    }
    // The same parts with the key set's signature broken are always refused.
    let mut bad = keys.key_set.signature.clone();
    bad[0] ^= 1;
    assert!(verify(&bad).is_err());
});
