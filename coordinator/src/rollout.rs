//! Staged rollout: which stores a canary reaches.
//!
//! A store's bucket is SHA-256(`backroom-rollout/<lineage>/<node id>`) reduced to 0..10 000; a
//! canary at `p`% reaches the stores whose bucket is below `p × 100`. The choice is deterministic
//! (the same stores every poll, on every coordinator), independent across lineages, and monotone:
//! raising the percentage only adds stores.

use sha2::{Digest, Sha256};

/// Number of buckets (0.01% each).
pub const BUCKETS: u64 = 10_000;

/// The store's bucket in `0..BUCKETS` for `lineage`.
pub fn bucket(lineage: &str, node_id: &str) -> u64 {
    let digest = Sha256::digest(format!("backroom-rollout/{lineage}/{node_id}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) % BUCKETS
}

/// Whether a canary at `percent` (1..=100) reaches the store.
pub fn in_canary(lineage: &str, node_id: &str, percent: u32) -> bool {
    bucket(lineage, node_id) < u64::from(percent.min(100)) * (BUCKETS / 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canaries_are_deterministic_monotone_and_about_the_asked_share() {
        let stores: Vec<String> = (0..5_000).map(|i| format!("store-{i}")).collect();
        let reached = |p| {
            stores
                .iter()
                .filter(|s| in_canary("shelfnet", s, p))
                .count()
        };
        let ten = reached(10);
        assert!((400..600).contains(&ten), "10% reached {ten} of 5000");
        assert_eq!(reached(100), stores.len());
        for store in &stores {
            if in_canary("shelfnet", store, 5) {
                assert!(in_canary("shelfnet", store, 6) && in_canary("shelfnet", store, 50));
            }
        }
        // Another lineage picks a different subset.
        let other = stores
            .iter()
            .filter(|s| in_canary("shelfnet", s, 10) && in_canary("other", s, 10))
            .count();
        assert!(other < ten / 2, "{other} of {ten} shared");
    }
}
