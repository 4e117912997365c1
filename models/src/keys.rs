//! The model-signing key hierarchy.
//!
//! A **root key** (Ed25519, meant to be kept offline) signs a **key set**: a versioned, expiring
//! list of the signing keys that may sign manifests, and the ids of keys that are revoked. Nodes
//! are enrolled with the root's public key only, so a signing key can be rotated or revoked by
//! publishing a new key set, without touching any node.
//!
//! Nodes move forward only: a key set older than the one a node holds is ignored (so an attacker
//! cannot replay the set from before a revocation), two different sets with the same version are
//! refused (the root key was misused), and an expired set is refused (freeze attack on the keys).
//! As with manifests, the root signs the exact bytes and the verifier parses only bytes whose
//! signature holds.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Format number of [`KeySet`].
pub const KEY_SET_FORMAT: u32 = 1;
/// Largest key set accepted, in bytes.
pub const MAX_KEY_SET_BYTES: usize = 64 * 1024;

/// One signing key: its id and public key (lower-case hex of the 32 bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub id: String,
    pub public_key: String,
}

/// The signing keys the root currently trusts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySet {
    pub format: u32,
    /// Strictly increasing with every change, starting at 1.
    pub version: u64,
    pub created_unix_ms: i64,
    pub expires_unix_ms: i64,
    /// Keys whose signatures are accepted (unless revoked).
    pub keys: Vec<KeyEntry>,
    /// Ids of keys whose signatures are refused, whenever they were made.
    pub revoked: Vec<String>,
}

/// Why a key set, or a signature under one, was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KeySetError {
    #[error("no key set was offered with the model")]
    Missing,
    #[error("key set is {0} bytes, more than the limit of {MAX_KEY_SET_BYTES}")]
    TooLarge(usize),
    #[error("key-set signature is malformed: {0}")]
    MalformedSignature(String),
    #[error("key set is not signed by the trusted root key")]
    BadRootSignature,
    #[error("key set is not valid: {0}")]
    Malformed(String),
    #[error("key set format {found} is not supported (expected {KEY_SET_FORMAT})")]
    UnsupportedFormat { found: u32 },
    #[error("key set version {version} expired at {expires_unix_ms} ms (now {now_unix_ms} ms)")]
    Expired {
        version: u64,
        expires_unix_ms: i64,
        now_unix_ms: i64,
    },
    #[error("two different key sets claim version {version} (root key misuse?)")]
    Conflict { version: u64 },
    #[error("signed by key {0}, which the key set revokes")]
    RevokedKey(String),
    #[error("signature does not verify against any signing key in key set version {version}")]
    UnknownSigner { version: u64 },
}

/// The id of a signing key: hex of the first 8 bytes of SHA-256 over its public key.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

impl KeyEntry {
    pub fn new(key: &VerifyingKey) -> Self {
        Self {
            id: key_id(key),
            public_key: hex::encode(key.as_bytes()),
        }
    }

    fn verifying_key(&self) -> Result<VerifyingKey, KeySetError> {
        let bytes: [u8; 32] = hex::decode(&self.public_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                KeySetError::Malformed(format!("key {} is not 32 hex bytes", self.id))
            })?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|e| KeySetError::Malformed(format!("key {}: {e}", self.id)))?;
        if key_id(&key) != self.id {
            return Err(KeySetError::Malformed(format!(
                "key id {} does not match its public key",
                self.id
            )));
        }
        Ok(key)
    }
}

impl KeySet {
    /// The bytes the root signs: JSON with the struct's field order.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks key-set bytes (after the root signature over them held).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeySetError> {
        if bytes.len() > MAX_KEY_SET_BYTES {
            return Err(KeySetError::TooLarge(bytes.len()));
        }
        let set: Self =
            serde_json::from_slice(bytes).map_err(|e| KeySetError::Malformed(e.to_string()))?;
        if set.format != KEY_SET_FORMAT {
            return Err(KeySetError::UnsupportedFormat { found: set.format });
        }
        for entry in &set.keys {
            entry.verifying_key()?;
        }
        Ok(set)
    }

    pub fn is_revoked(&self, id: &str) -> bool {
        self.revoked.iter().any(|r| r == id)
    }

    /// Which key of this set made `signature` over `message`: its id, or why none counts.
    pub fn signer_of(&self, message: &[u8], signature: &Signature) -> Result<String, KeySetError> {
        for entry in &self.keys {
            let key = entry.verifying_key()?;
            if key.verify(message, signature).is_ok() {
                if self.is_revoked(&entry.id) {
                    return Err(KeySetError::RevokedKey(entry.id.clone()));
                }
                return Ok(entry.id.clone());
            }
        }
        Err(KeySetError::UnknownSigner {
            version: self.version,
        })
    }
}

/// A key set with the exact bytes and root signature it travels as.
#[derive(Clone, Debug, PartialEq)]
pub struct SignedKeySet {
    pub set: KeySet,
    pub bytes: Vec<u8>,
    pub signature: Vec<u8>,
}

impl SignedKeySet {
    /// Signs `set` with the root key.
    pub fn sign(set: KeySet, root: &SigningKey) -> Self {
        let bytes = set.to_bytes();
        let signature = root.sign(&bytes).to_bytes().to_vec();
        Self {
            set,
            bytes,
            signature,
        }
    }

    /// Checks the root signature, then parses. `now_unix_ms = i64::MIN` skips the expiry check
    /// (for re-reading a set this node already accepted).
    pub fn verify(
        bytes: &[u8],
        signature: &[u8],
        root: &VerifyingKey,
        now_unix_ms: i64,
    ) -> Result<Self, KeySetError> {
        if bytes.is_empty() {
            return Err(KeySetError::Missing);
        }
        if bytes.len() > MAX_KEY_SET_BYTES {
            return Err(KeySetError::TooLarge(bytes.len()));
        }
        let parsed_signature = Signature::from_slice(signature)
            .map_err(|e| KeySetError::MalformedSignature(e.to_string()))?;
        root.verify(bytes, &parsed_signature)
            .map_err(|_| KeySetError::BadRootSignature)?;
        let set = KeySet::from_bytes(bytes)?;
        if set.expires_unix_ms <= now_unix_ms {
            return Err(KeySetError::Expired {
                version: set.version,
                expires_unix_ms: set.expires_unix_ms,
                now_unix_ms,
            });
        }
        Ok(Self {
            set,
            bytes: bytes.to_vec(),
            signature: signature.to_vec(),
        })
    }
}

/// The key set to check a manifest against, given the one a node holds and the one offered.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedKeySet {
    pub signed: SignedKeySet,
    /// `true` when the offered set is newer than the held one (the node should persist it).
    pub is_new: bool,
}

/// Picks the key set to trust. The offered set must carry a valid root signature and must not
/// have expired; an offered set older than the held one is ignored in favour of the held one
/// (which must then not have expired either: a node that hears of nothing newer than an expired
/// set is frozen out and refuses).
pub fn resolve_key_set(
    root: &VerifyingKey,
    held: Option<&SignedKeySet>,
    offered_bytes: &[u8],
    offered_signature: &[u8],
    now_unix_ms: i64,
) -> Result<ResolvedKeySet, KeySetError> {
    let offered = SignedKeySet::verify(offered_bytes, offered_signature, root, now_unix_ms)?;
    let Some(held) = held else {
        return Ok(ResolvedKeySet {
            signed: offered,
            is_new: true,
        });
    };
    if offered.set.version > held.set.version {
        return Ok(ResolvedKeySet {
            signed: offered,
            is_new: true,
        });
    }
    if offered.set.version == held.set.version && offered.bytes != held.bytes {
        return Err(KeySetError::Conflict {
            version: held.set.version,
        });
    }
    if held.set.expires_unix_ms <= now_unix_ms {
        return Err(KeySetError::Expired {
            version: held.set.version,
            expires_unix_ms: held.set.expires_unix_ms,
            now_unix_ms,
        });
    }
    Ok(ResolvedKeySet {
        signed: held.clone(),
        is_new: false,
    })
}

#[cfg(test)]
mod key_tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn set(version: u64, keys: &[&SigningKey], revoked: &[&SigningKey]) -> KeySet {
        KeySet {
            format: KEY_SET_FORMAT,
            version,
            created_unix_ms: 0,
            expires_unix_ms: 10_000,
            keys: keys
                .iter()
                .map(|k| KeyEntry::new(&k.verifying_key()))
                .collect(),
            revoked: revoked.iter().map(|k| key_id(&k.verifying_key())).collect(),
        }
    }

    #[test]
    fn signatures_resolve_to_their_key_and_revocation_wins() {
        let (a, b, c) = (key(1), key(2), key(3));
        let trusted = set(1, &[&a, &b], &[&b]);
        let sig_a = a.sign(b"m");
        assert_eq!(
            trusted.signer_of(b"m", &sig_a),
            Ok(key_id(&a.verifying_key()))
        );
        assert_eq!(
            trusted.signer_of(b"m", &b.sign(b"m")),
            Err(KeySetError::RevokedKey(key_id(&b.verifying_key())))
        );
        assert_eq!(
            trusted.signer_of(b"m", &c.sign(b"m")),
            Err(KeySetError::UnknownSigner { version: 1 })
        );
        assert!(trusted.signer_of(b"other", &sig_a).is_err());
    }

    #[test]
    fn nodes_move_forward_only_and_refuse_forged_conflicting_or_expired_sets() {
        let root = key(9);
        let vk = root.verifying_key();
        let a = key(1);
        let v1 = SignedKeySet::sign(set(1, &[&a], &[]), &root);
        let v2 = SignedKeySet::sign(set(2, &[&a, &key(2)], &[&a]), &root);

        let first = resolve_key_set(&vk, None, &v1.bytes, &v1.signature, 5_000);
        assert_eq!(first.as_ref().map(|r| r.is_new), Ok(true));
        let newer = resolve_key_set(&vk, Some(&v1), &v2.bytes, &v2.signature, 5_000);
        assert_eq!(
            newer.map(|r| (r.is_new, r.signed.set.version)),
            Ok((true, 2))
        );
        // Replaying v1 (from before the revocation) to a node holding v2 changes nothing.
        let replay = resolve_key_set(&vk, Some(&v2), &v1.bytes, &v1.signature, 5_000);
        assert_eq!(
            replay.map(|r| (r.is_new, r.signed.set.version)),
            Ok((false, 2))
        );

        let other_v2 = SignedKeySet::sign(set(2, &[&a], &[]), &root);
        assert_eq!(
            resolve_key_set(&vk, Some(&v2), &other_v2.bytes, &other_v2.signature, 5_000),
            Err(KeySetError::Conflict { version: 2 })
        );
        let forged = SignedKeySet::sign(set(3, &[&a], &[]), &key(8));
        assert_eq!(
            resolve_key_set(&vk, Some(&v2), &forged.bytes, &forged.signature, 5_000),
            Err(KeySetError::BadRootSignature)
        );
        assert!(matches!(
            resolve_key_set(&vk, Some(&v1), &v2.bytes, &v2.signature, 20_000),
            Err(KeySetError::Expired { .. })
        ));
        assert_eq!(
            resolve_key_set(&vk, None, &[], &[], 5_000),
            Err(KeySetError::Missing)
        );
        let mut tampered = v1.bytes.clone();
        let last = tampered.len() - 2;
        tampered[last] ^= 1;
        assert_eq!(
            resolve_key_set(&vk, None, &tampered, &v1.signature, 5_000),
            Err(KeySetError::BadRootSignature)
        );
    }
}
