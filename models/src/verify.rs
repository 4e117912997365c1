//! Every check a store node runs on a model release before it installs it, in one place, so the
//! node and `backroom models verify` cannot drift apart.
//!
//! Order: the key set (root signature, not expired, not older than the held one), the manifest
//! (signed by a non-revoked key of that set, lineage, architecture, strictly newer, not expired),
//! the announced size against the manifest's (before any weights are fetched), then the weights
//! (size, SHA-256) and finally that they fit the architecture.

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::ShelfNetConfig;
use crate::keys::{KeySetError, ResolvedKeySet, SignedKeySet, resolve_key_set};
use crate::manifest::{
    Expectations, Manifest, VerifyError, check_weights, verify_manifest_signed_by,
};

/// Why a release was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refusal {
    // The messages carry their causes, so these are not `#[source]`s (chains would repeat them).
    #[error("key set refused: {0}")]
    KeySet(KeySetError),
    #[error(transparent)]
    Manifest(#[from] VerifyError),
    #[error("the download announces {announced} bytes of weights, the manifest says {manifest}")]
    AnnouncedSize { announced: u64, manifest: u64 },
    #[error("unusable architecture_config: {0}")]
    ArchitectureConfig(String),
    #[error("weights do not fit the architecture: {0}")]
    Weights(String),
    #[error(
        "manifest says {manifest} parameters, the architecture has {layout}, the weights hold {weights}"
    )]
    ParameterCount {
        manifest: u64,
        layout: usize,
        weights: usize,
    },
}

impl From<KeySetError> for Refusal {
    fn from(error: KeySetError) -> Self {
        Self::KeySet(error)
    }
}

/// What a node trusts: the root key it was enrolled with and the newest key set it accepted.
#[derive(Clone, Copy, Debug)]
pub struct Trust<'a> {
    pub root: &'a VerifyingKey,
    pub held: Option<&'a SignedKeySet>,
}

/// The signed parts of a release as they arrived.
#[derive(Clone, Copy, Debug)]
pub struct ReleaseParts<'a> {
    pub manifest: &'a [u8],
    pub signature: &'a [u8],
    pub key_set: &'a [u8],
    pub key_set_signature: &'a [u8],
}

/// A header that passed: the manifest and the key set it was checked against.
#[derive(Clone, Debug)]
pub struct CheckedHeader {
    pub manifest: Manifest,
    pub key_set: ResolvedKeySet,
    /// Id of the signing key that signed the manifest.
    pub signed_by: String,
}

/// A release that passed every check.
#[derive(Clone, Debug)]
pub struct VerifiedRelease {
    pub manifest: Manifest,
    pub config: ShelfNetConfig,
    pub params: Vec<f32>,
    pub key_set: ResolvedKeySet,
    /// Id of the signing key that signed the manifest.
    pub signed_by: String,
}

/// The checks possible before the weights arrive. `announced_size` is what the download's header
/// says is coming (`None` when checking files).
pub fn check_header(
    trust: Trust<'_>,
    parts: ReleaseParts<'_>,
    announced_size: Option<u64>,
    expect: &Expectations<'_>,
) -> Result<CheckedHeader, Refusal> {
    let key_set = resolve_key_set(
        trust.root,
        trust.held,
        parts.key_set,
        parts.key_set_signature,
        expect.now_unix_ms,
    )?;
    let (manifest, signed_by) =
        verify_manifest_signed_by(parts.manifest, parts.signature, &key_set.signed.set, expect)?;
    if let Some(announced) = announced_size
        && announced != manifest.weights_size
    {
        return Err(Refusal::AnnouncedSize {
            announced,
            manifest: manifest.weights_size,
        });
    }
    Ok(CheckedHeader {
        manifest,
        key_set,
        signed_by,
    })
}

/// Every check on a whole release (blocking: hashes and parses the weights).
pub fn verify_release(
    trust: Trust<'_>,
    parts: ReleaseParts<'_>,
    weights: &[u8],
    expect: &Expectations<'_>,
) -> Result<VerifiedRelease, Refusal> {
    // One signature check (in the header check), then the weights against the manifest.
    let header = check_header(trust, parts, Some(weights.len() as u64), expect)?;
    let manifest = header.manifest;
    check_weights(&manifest, weights)?;
    let signed_by = header.signed_by;
    let config: ShelfNetConfig = serde_json::from_value(manifest.architecture_config.clone())
        .map_err(|e| Refusal::ArchitectureConfig(e.to_string()))?;
    config
        .validate()
        .map_err(|e| Refusal::ArchitectureConfig(e.to_string()))?;
    if !config.is_shelf_classifier() {
        return Err(Refusal::ArchitectureConfig(format!(
            "the model takes {}x{}x{} images into {} classes; nodes classify 3x64x64 shelf \
             crops into 2",
            config.input_channels, config.image_size, config.image_size, config.num_classes
        )));
    }
    let layout = crate::parameter_layout(&config);
    let layout_parameters = crate::num_parameters(&config);
    let params =
        crate::from_safetensors(&layout, weights).map_err(|e| Refusal::Weights(e.to_string()))?;
    if params.len() != layout_parameters || manifest.num_parameters != layout_parameters as u64 {
        return Err(Refusal::ParameterCount {
            manifest: manifest.num_parameters,
            layout: layout_parameters,
            weights: params.len(),
        });
    }
    Ok(VerifiedRelease {
        manifest,
        config,
        params,
        key_set: header.key_set,
        signed_by,
    })
}

/// Format number of [`SignedManifestFile`].
pub const SIGNED_MANIFEST_FILE_FORMAT: u32 = 1;

/// A signed manifest as one file (what `backroom models export` writes and `models verify`
/// reads): the exact signed texts and their signatures, so nothing needs re-encoding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifestFile {
    pub format: u32,
    /// The manifest's signed bytes (UTF-8 JSON) as text.
    pub manifest: String,
    /// Hex Ed25519 signature over `manifest` by a signing key of `key_set`.
    pub signature: String,
    /// The key set's signed bytes as text.
    pub key_set: String,
    /// Hex Ed25519 signature over `key_set` by the root key.
    pub key_set_signature: String,
}

/// The decoded byte parts of a [`SignedManifestFile`].
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedParts {
    pub manifest: Vec<u8>,
    pub signature: Vec<u8>,
    pub key_set: Vec<u8>,
    pub key_set_signature: Vec<u8>,
}

impl OwnedParts {
    pub fn as_parts(&self) -> ReleaseParts<'_> {
        ReleaseParts {
            manifest: &self.manifest,
            signature: &self.signature,
            key_set: &self.key_set,
            key_set_signature: &self.key_set_signature,
        }
    }
}

/// Why a signed-manifest file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestFileError {
    #[error("not a signed manifest file: {0}")]
    Parse(String),
    #[error("signed manifest file format {0} is not supported")]
    Format(u32),
    #[error("{field} is not UTF-8 JSON text")]
    NotText { field: &'static str },
    #[error("{field} is not hex: {reason}")]
    Hex { field: &'static str, reason: String },
}

impl SignedManifestFile {
    pub fn new(parts: ReleaseParts<'_>) -> Result<Self, ManifestFileError> {
        let text = |bytes: &[u8], field| {
            String::from_utf8(bytes.to_vec()).map_err(|_| ManifestFileError::NotText { field })
        };
        Ok(Self {
            format: SIGNED_MANIFEST_FILE_FORMAT,
            manifest: text(parts.manifest, "manifest")?,
            signature: hex::encode(parts.signature),
            key_set: text(parts.key_set, "key_set")?,
            key_set_signature: hex::encode(parts.key_set_signature),
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn parse(bytes: &[u8]) -> Result<OwnedParts, ManifestFileError> {
        let file: Self =
            serde_json::from_slice(bytes).map_err(|e| ManifestFileError::Parse(e.to_string()))?;
        if file.format != SIGNED_MANIFEST_FILE_FORMAT {
            return Err(ManifestFileError::Format(file.format));
        }
        let unhex = |text: &str, field| {
            hex::decode(text).map_err(|e| ManifestFileError::Hex {
                field,
                reason: e.to_string(),
            })
        };
        Ok(OwnedParts {
            signature: unhex(&file.signature, "signature")?,
            key_set_signature: unhex(&file.key_set_signature, "key_set_signature")?,
            manifest: file.manifest.into_bytes(),
            key_set: file.key_set.into_bytes(),
        })
    }
}

#[cfg(test)]
mod release_tests {
    use super::*;
    use crate::keys::{KEY_SET_FORMAT, KeyEntry, KeySet};
    use crate::manifest::{MANIFEST_FORMAT, sha256_hex, sign_manifest};
    use ed25519_dalek::SigningKey;

    struct Release {
        root: SigningKey,
        keys: SignedKeySet,
        manifest: Vec<u8>,
        signature: Vec<u8>,
        weights: Vec<u8>,
    }

    fn release(config: &ShelfNetConfig) -> Release {
        let root = SigningKey::from_bytes(&[1; 32]);
        let signer = SigningKey::from_bytes(&[2; 32]);
        let keys = SignedKeySet::sign(
            KeySet {
                format: KEY_SET_FORMAT,
                version: 1,
                created_unix_ms: 0,
                expires_unix_ms: 10_000,
                keys: vec![KeyEntry::new(&signer.verifying_key())],
                revoked: vec![],
            },
            &root,
        );
        let layout = crate::parameter_layout(config);
        let params = vec![0.01f32; crate::num_parameters(config)];
        let weights = crate::to_safetensors(&layout, &params).unwrap_or_else(|e| panic!("{e}"));
        let manifest = crate::manifest::Manifest {
            format: MANIFEST_FORMAT,
            lineage: "shelfnet".into(),
            version: 2,
            parent_version: 1,
            round_id: "r".into(),
            architecture: crate::ARCHITECTURE_ID.into(),
            architecture_config: serde_json::to_value(config).unwrap_or_default(),
            num_parameters: params.len() as u64,
            weights_sha256: sha256_hex(&weights),
            weights_size: weights.len() as u64,
            dp: None,
            epsilon_spent: None,
            delta: None,
            created_unix_ms: 0,
            expires_unix_ms: 10_000,
            rollback_of: None,
        }
        .to_bytes();
        let signature = sign_manifest(&manifest, &signer).to_vec();
        Release {
            root,
            keys,
            manifest,
            signature,
            weights,
        }
    }

    fn check(r: &Release) -> Result<VerifiedRelease, Refusal> {
        let root = r.root.verifying_key();
        let parts = ReleaseParts {
            manifest: &r.manifest,
            signature: &r.signature,
            key_set: &r.keys.bytes,
            key_set_signature: &r.keys.signature,
        };
        let expect = Expectations {
            lineage: "shelfnet",
            architecture: crate::ARCHITECTURE_ID,
            installed_version: 1,
            now_unix_ms: 5_000,
        };
        verify_release(
            Trust {
                root: &root,
                held: None,
            },
            parts,
            &r.weights,
            &expect,
        )
    }

    #[test]
    fn a_release_passes_whole_and_round_trips_through_its_file() {
        let r = release(&ShelfNetConfig::new());
        let verified = check(&r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(verified.signed_by, r.keys.set.keys[0].id);
        let file = SignedManifestFile::new(ReleaseParts {
            manifest: &r.manifest,
            signature: &r.signature,
            key_set: &r.keys.bytes,
            key_set_signature: &r.keys.signature,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let parts =
            SignedManifestFile::parse(file.to_json().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (parts.manifest, parts.key_set),
            (r.manifest.clone(), r.keys.bytes.clone())
        );
    }

    #[test]
    fn weights_for_another_architecture_are_refused_even_when_signed() {
        let mut other = ShelfNetConfig::new();
        other.num_classes = 5;
        assert!(matches!(
            check(&release(&other)),
            Err(Refusal::ArchitectureConfig(_))
        ));
        let mut r = release(&ShelfNetConfig::new());
        r.keys = SignedKeySet::sign(r.keys.set.clone(), &SigningKey::from_bytes(&[3; 32]));
        assert_eq!(
            check(&r).err(),
            Some(Refusal::KeySet(KeySetError::BadRootSignature))
        );
    }
}
