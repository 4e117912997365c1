//! Opaque store tokens: what callers who may not see store ids (operations) see instead.
//!
//! A token is `s-` and the first 12 hex digits of HMAC-SHA-256(key, store id). The key is 32
//! random bytes kept in the PKI directory (`store-tokens.key`, mode 0600), created on first start;
//! replicas must share it, as they share the CA. Tokens are stable, so operations can follow one
//! store across queries, and cannot be turned back into ids without the key.

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::identity::IdentityError;

/// File name of the key in the PKI directory.
pub const KEY_FILE: &str = "store-tokens.key";

#[derive(Clone)]
pub struct StoreTokens {
    key: [u8; 32],
}

impl std::fmt::Debug for StoreTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreTokens(..)")
    }
}

impl StoreTokens {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// Reads `<pki_dir>/store-tokens.key`, creating it on first use.
    pub fn load_or_create(pki_dir: &Path) -> Result<Self, IdentityError> {
        let path = pki_dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; 32] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| IdentityError::StoreTokenKey {
                            path: path.clone(),
                            reason: format!(
                                "a store-token key is 32 bytes, this file has {}",
                                bytes.len()
                            ),
                        })?;
                Ok(Self::new(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                crate::identity::write_private(&path, &key)?;
                Ok(Self::new(key))
            }
            Err(e) => Err(IdentityError::StoreTokenKey {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// The token of `store_id`.
    pub fn token(&self, store_id: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(store_id.as_bytes());
        let digest = mac.finalize().into_bytes();
        format!("s-{}", hex::encode(&digest[..6]))
    }

    /// `store_id` as `role` may see it.
    pub fn shown(&self, store_id: &str, sees_ids: bool) -> String {
        if sees_ids {
            store_id.to_owned()
        } else {
            self.token(store_id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stable_distinct_and_keyed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let a = StoreTokens::load_or_create(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let again = StoreTokens::load_or_create(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.token("store-1"), again.token("store-1"));
        assert_ne!(a.token("store-1"), a.token("store-2"));
        assert!(a.token("store-1").starts_with("s-") && a.token("store-1").len() == 14);
        assert!(!a.token("store-1").contains("store"));
        let other = StoreTokens::new([7; 32]);
        assert_ne!(a.token("store-1"), other.token("store-1"));
        assert_eq!(a.shown("store-1", true), "store-1");
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap_or_else(|e| panic!("{e}"));
        assert!(StoreTokens::load_or_create(dir.path()).is_err());
    }
}
