//! Signed model manifests: what a model version is, and the checks a node runs before it installs
//! one.
//!
//! The coordinator signs the exact manifest bytes with Ed25519 under a signing key of the current
//! [`KeySet`]; the node verifies the signature over the bytes it received and only then parses
//! them, so no canonicalisation step can differ between signer and verifier.

use ed25519_dalek::{Signature, Signer, SigningKey};

use crate::keys::{KeySet, KeySetError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Format number of [`Manifest`]; bumped on any incompatible change.
pub const MANIFEST_FORMAT: u32 = 1;

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;

/// Differential-privacy parameters of the round that produced a version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpParameters {
    /// L2 clip norm C applied to every client delta.
    pub clip_norm: f32,
    /// Noise multiplier z: the central noise is N(0, (zC)²) per coordinate on the sum.
    pub noise_multiplier: f32,
    /// Manifests from before privacy accounting: the exact number of updates aggregated. New
    /// manifests leave it out: with Poisson sampling that count is itself private (it moves by
    /// one with any one store), which is why the sum is divided by `expected_clients` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<u32>,
    /// Poisson sampling rate q of the round (the accountant's q).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_rate: Option<f64>,
    /// The fixed denominator: q × the population the round was drawn from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_clients: Option<f64>,
    /// `"central"` or `"distributed"`: where the noise was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_mode: Option<String>,
    /// The multiplier applied to the deltas (z_Δ; above z with adaptive clipping, which spends
    /// part of z on the noised count). `noise_multiplier` is what the accountant charged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_noise_multiplier: Option<f64>,
}

/// Everything a node needs to decide whether to install a version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub lineage: String,
    /// Strictly increasing per lineage, starting at 1.
    pub version: u64,
    /// 0 for the first version of a lineage.
    pub parent_version: u64,
    /// Empty for the initial version.
    pub round_id: String,
    pub architecture: String,
    /// The architecture's configuration as JSON (e.g. `ShelfNetConfig`).
    pub architecture_config: serde_json::Value,
    pub num_parameters: u64,
    /// Lower-case hex SHA-256 of the safetensors weights.
    pub weights_sha256: String,
    pub weights_size: u64,
    /// `None` for the initial version, which saw no client data.
    pub dp: Option<DpParameters>,
    /// ε spent by the lineage up to and including this version (at `delta`), as computed by
    /// the coordinator's accountant; `None` when infinite (no noise) or for the initial version.
    pub epsilon_spent: Option<f64>,
    /// The δ at which `epsilon_spent` holds (absent in manifests from before accounting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    pub created_unix_ms: i64,
    pub expires_unix_ms: i64,
    /// Set on a version published by `backroom models rollback`: the older version whose
    /// weights it carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
}

/// Why a model version was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VerifyError {
    #[error("manifest is {0} bytes, more than the limit of {MAX_MANIFEST_BYTES}")]
    ManifestTooLarge(usize),
    #[error("signature is malformed: {0}")]
    MalformedSignature(String),
    // Not a `#[source]`: the message already carries it, and error chains would print it twice.
    #[error("manifest signature refused: {0}")]
    Signer(KeySetError),
    #[error("manifest is not valid: {0}")]
    MalformedManifest(String),
    #[error("manifest format {found} is not supported (expected {MANIFEST_FORMAT})")]
    UnsupportedFormat { found: u32 },
    #[error("manifest is for lineage {found:?}, expected {expected:?}")]
    WrongLineage { expected: String, found: String },
    #[error("manifest is for architecture {found:?}, expected {expected:?}")]
    WrongArchitecture { expected: String, found: String },
    #[error(
        "version {offered} is not newer than the installed version {installed} (rollback refused)"
    )]
    NotNewer { installed: u64, offered: u64 },
    #[error("manifest expired at {expires_unix_ms} ms (now {now_unix_ms} ms)")]
    Expired {
        expires_unix_ms: i64,
        now_unix_ms: i64,
    },
    #[error("weights are {found} bytes, manifest says {expected}")]
    SizeMismatch { expected: u64, found: u64 },
    #[error("weights SHA-256 is {found}, manifest says {expected}")]
    HashMismatch { expected: String, found: String },
}

impl From<KeySetError> for VerifyError {
    fn from(error: KeySetError) -> Self {
        Self::Signer(error)
    }
}

/// What the verifier expects of a version offered to this node.
#[derive(Clone, Debug)]
pub struct Expectations<'a> {
    pub lineage: &'a str,
    pub architecture: &'a str,
    /// 0 when nothing is installed yet.
    pub installed_version: u64,
    pub now_unix_ms: i64,
}

impl Manifest {
    /// The bytes that are signed: JSON with the struct's field order.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a struct of plain fields and a `serde_json::Value` cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses manifest bytes (after the signature over them has been checked).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, VerifyError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(VerifyError::ManifestTooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| VerifyError::MalformedManifest(e.to_string()))
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Signs manifest bytes.
pub fn sign_manifest(manifest_bytes: &[u8], key: &SigningKey) -> [u8; 64] {
    key.sign(manifest_bytes).to_bytes()
}

/// Checks a version offered to a node: signature first, then every field against the weights
/// and the node's state. Returns the parsed manifest only if everything holds.
pub fn verify_model(
    manifest_bytes: &[u8],
    signature: &[u8],
    weights: &[u8],
    keys: &KeySet,
    expect: &Expectations<'_>,
) -> Result<Manifest, VerifyError> {
    let manifest = verify_manifest(manifest_bytes, signature, keys, expect)?;
    check_weights(&manifest, weights)?;
    Ok(manifest)
}

/// The weights' size and SHA-256 against an already verified manifest.
pub fn check_weights(manifest: &Manifest, weights: &[u8]) -> Result<(), VerifyError> {
    let found_size = weights.len() as u64;
    if found_size != manifest.weights_size {
        return Err(VerifyError::SizeMismatch {
            expected: manifest.weights_size,
            found: found_size,
        });
    }
    let found_hash = sha256_hex(weights);
    if found_hash != manifest.weights_sha256 {
        return Err(VerifyError::HashMismatch {
            expected: manifest.weights_sha256.clone(),
            found: found_hash,
        });
    }
    Ok(())
}

/// Checks the signature and the manifest fields, before any weights are fetched.
pub fn verify_manifest(
    manifest_bytes: &[u8],
    signature: &[u8],
    keys: &KeySet,
    expect: &Expectations<'_>,
) -> Result<Manifest, VerifyError> {
    verify_manifest_signed_by(manifest_bytes, signature, keys, expect).map(|(m, _)| m)
}

/// [`verify_manifest`], also returning the id of the key that signed it.
pub fn verify_manifest_signed_by(
    manifest_bytes: &[u8],
    signature: &[u8],
    keys: &KeySet,
    expect: &Expectations<'_>,
) -> Result<(Manifest, String), VerifyError> {
    if manifest_bytes.len() > MAX_MANIFEST_BYTES {
        return Err(VerifyError::ManifestTooLarge(manifest_bytes.len()));
    }
    let signature = Signature::from_slice(signature)
        .map_err(|e| VerifyError::MalformedSignature(e.to_string()))?;
    let signed_by = keys.signer_of(manifest_bytes, &signature)?;
    let manifest = Manifest::from_bytes(manifest_bytes)?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(VerifyError::UnsupportedFormat {
            found: manifest.format,
        });
    }
    if manifest.lineage != expect.lineage {
        return Err(VerifyError::WrongLineage {
            expected: expect.lineage.to_owned(),
            found: manifest.lineage,
        });
    }
    if manifest.architecture != expect.architecture {
        return Err(VerifyError::WrongArchitecture {
            expected: expect.architecture.to_owned(),
            found: manifest.architecture,
        });
    }
    if manifest.version <= expect.installed_version {
        return Err(VerifyError::NotNewer {
            installed: expect.installed_version,
            offered: manifest.version,
        });
    }
    if manifest.expires_unix_ms <= expect.now_unix_ms {
        return Err(VerifyError::Expired {
            expires_unix_ms: manifest.expires_unix_ms,
            now_unix_ms: expect.now_unix_ms,
        });
    }
    Ok((manifest, signed_by))
}

#[cfg(test)]
mod manifest_tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn keys_of(key: &SigningKey) -> KeySet {
        KeySet {
            format: crate::keys::KEY_SET_FORMAT,
            version: 1,
            created_unix_ms: 0,
            expires_unix_ms: i64::MAX,
            keys: vec![crate::keys::KeyEntry::new(&key.verifying_key())],
            revoked: vec![],
        }
    }

    fn manifest(weights: &[u8]) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            lineage: "shelfnet".into(),
            version: 2,
            parent_version: 1,
            round_id: "r1".into(),
            architecture: "shelfnet-v1".into(),
            architecture_config: serde_json::json!({"hidden": 32}),
            num_parameters: 3,
            weights_sha256: sha256_hex(weights),
            weights_size: weights.len() as u64,
            dp: Some(DpParameters {
                clip_norm: 1.0,
                noise_multiplier: 0.5,
                clients: None,
                sampling_rate: Some(1.0),
                expected_clients: Some(3.0),
                noise_mode: Some("central".into()),
                delta_noise_multiplier: Some(0.5),
            }),
            epsilon_spent: Some(1.5),
            delta: Some(1e-5),
            created_unix_ms: 1_000,
            expires_unix_ms: 10_000,
            rollback_of: None,
        }
    }

    fn expect(installed: u64) -> Expectations<'static> {
        Expectations {
            lineage: "shelfnet",
            architecture: "shelfnet-v1",
            installed_version: installed,
            now_unix_ms: 5_000,
        }
    }

    #[test]
    fn accepts_a_good_version_and_refuses_every_one_byte_change() {
        let weights = b"weights-bytes".to_vec();
        let bytes = manifest(&weights).to_bytes();
        let sig = sign_manifest(&bytes, &key());
        let vk = keys_of(&key());
        let ok = verify_model(&bytes, &sig, &weights, &vk, &expect(1));
        assert_eq!(ok.map(|m| m.version), Ok(2));

        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(verify_model(&bad, &sig, &weights, &vk, &expect(1)).is_err());
        }
        for i in 0..sig.len() {
            let mut bad = sig;
            bad[i] ^= 1;
            assert!(verify_model(&bytes, &bad, &weights, &vk, &expect(1)).is_err());
        }
        for i in 0..weights.len() {
            let mut bad = weights.clone();
            bad[i] ^= 1;
            assert!(matches!(
                verify_model(&bytes, &sig, &bad, &vk, &expect(1)),
                Err(VerifyError::HashMismatch { .. })
            ));
        }
    }

    #[test]
    fn refuses_rollback_expiry_other_key_and_size() {
        let weights = b"w".to_vec();
        let bytes = manifest(&weights).to_bytes();
        let sig = sign_manifest(&bytes, &key());
        let vk = keys_of(&key());
        assert!(matches!(
            verify_model(&bytes, &sig, &weights, &vk, &expect(2)),
            Err(VerifyError::NotNewer { .. })
        ));
        let late = Expectations {
            now_unix_ms: 20_000,
            ..expect(1)
        };
        assert!(matches!(
            verify_model(&bytes, &sig, &weights, &vk, &late),
            Err(VerifyError::Expired { .. })
        ));
        let other = keys_of(&SigningKey::from_bytes(&[9u8; 32]));
        assert_eq!(
            verify_model(&bytes, &sig, &weights, &other, &expect(1)).err(),
            Some(VerifyError::Signer(KeySetError::UnknownSigner {
                version: 1
            }))
        );
        let mut revoked = keys_of(&key());
        revoked.revoked.push(revoked.keys[0].id.clone());
        assert!(matches!(
            verify_model(&bytes, &sig, &weights, &revoked, &expect(1)),
            Err(VerifyError::Signer(KeySetError::RevokedKey(_)))
        ));
        let longer = b"w2".to_vec();
        assert!(matches!(
            verify_model(&bytes, &sig, &longer, &vk, &expect(1)),
            Err(VerifyError::SizeMismatch { .. })
        ));
        assert!(matches!(
            verify_model(&bytes, &sig[..10], &weights, &vk, &expect(1)),
            Err(VerifyError::MalformedSignature(_))
        ));
    }

    #[test]
    fn manifests_from_before_privacy_accounting_still_parse() {
        // A v2 manifest as the previous version wrote it: exact client count, no q, no δ.
        let old = br#"{"format":1,"lineage":"shelfnet","version":2,"parent_version":1,"round_id":"r","architecture":"shelfnet-v1","architecture_config":{},"num_parameters":3,"weights_sha256":"00","weights_size":1,"dp":{"clip_norm":1.0,"noise_multiplier":0.5,"clients":3},"epsilon_spent":null,"created_unix_ms":1,"expires_unix_ms":2}"#;
        let parsed = Manifest::from_bytes(old).unwrap_or_else(|e| panic!("{e}"));
        let dp = parsed.dp.unwrap_or_else(|| panic!("dp lost"));
        assert_eq!(
            (dp.clients, dp.sampling_rate, parsed.delta),
            (Some(3), None, None)
        );
        // New manifests leave the private count out entirely.
        let fresh = manifest(b"w").to_bytes();
        assert!(!String::from_utf8_lossy(&fresh).contains("\"clients\""));
    }
}
