//! Making one labelled dataset non-IID across simulated stores, deterministically by seed:
//!
//! - [`partition_iid`]: a seeded shuffle cut into near-equal shares (every store sees the
//!   global label mix);
//! - [`partition_dirichlet`]: label skew as in Hsu et al. (2019): for every class, the share of
//!   each store is drawn from Dirichlet(α, …, α) and that class's items are dealt out in those
//!   proportions. Small α (0.1) gives stores dominated by one or two classes; large α (100)
//!   approaches IID;
//! - [`FeatureShift`]: feature shift, the other kind of non-IID data. Every store gets its own
//!   exposure, contrast, colour of light, camera roll, shear and zoom
//!   ([`FeatureShift::for_store`], seeded), applied to images that already exist: a real set such
//!   as Fashion-MNIST ([`crate::ImageSet`]) or shelf crops ([`crate::ShelfCrops::images`] with
//!   [`crate::CHANNELS`] and [`crate::IMAGE_SIZE`]). [`store_sets_with_feature_shift`] cuts a set
//!   by the shares of either partitioner above and shifts every store's share, so label skew and
//!   feature shift combine.
//!
//! Synthetic shelf crops get their feature shift at render time instead: each store's crops are
//! rendered with its own [`crate::store_profile`] (lighting gain and tint, camera offset and
//! zoom, sensor noise, back panel, SKU mix). [`FeatureShift`] is the after-the-fact counterpart
//! for pixels that were not rendered here, with ranges close to a profile's lighting and camera;
//! applied to rendered crops it adds a second, independent camera change on top of the profile.

mod feature_shift;

pub use feature_shift::{FeatureShift, store_sets_with_feature_shift};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Gamma};

use crate::real::ImageSetError;

/// Why a partition cannot be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PartitionError {
    #[error("the number of stores must be at least 1")]
    NoStores,
    #[error("the Dirichlet concentration alpha must be finite and > 0, got {0}")]
    InvalidAlpha(f64),
    #[error("{values} values are not whole {channels}x{height}x{width} images")]
    ImageShape {
        values: usize,
        channels: usize,
        height: usize,
        width: usize,
    },
    #[error("feature shift parameters must be finite, with zoom > 0: {0}")]
    InvalidFeatureShift(String),
    #[error(transparent)]
    Images(#[from] ImageSetError),
}

/// Item indices of each store: disjoint, covering `0..n_items`, sizes differing by at most one.
pub fn partition_iid(
    n_items: usize,
    n_stores: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>, PartitionError> {
    if n_stores == 0 {
        return Err(PartitionError::NoStores);
    }
    let mut order: Vec<usize> = (0..n_items).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let base = n_items / n_stores;
    let extra = n_items % n_stores;
    let mut shares = Vec::with_capacity(n_stores);
    let mut start = 0;
    for store in 0..n_stores {
        let len = base + usize::from(store < extra);
        shares.push(order[start..start + len].to_vec());
        start += len;
    }
    Ok(shares)
}

/// Item indices of each store under Dirichlet(α) label skew: disjoint and covering every item.
/// Within a class, items are shuffled (seeded) before being dealt out, and each store's list
/// is sorted.
pub fn partition_dirichlet(
    labels: &[u8],
    n_stores: usize,
    alpha: f64,
    seed: u64,
) -> Result<Vec<Vec<usize>>, PartitionError> {
    if n_stores == 0 {
        return Err(PartitionError::NoStores);
    }
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(PartitionError::InvalidAlpha(alpha));
    }
    let gamma = Gamma::new(alpha, 1.0).map_err(|_| PartitionError::InvalidAlpha(alpha))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); 256];
    for (index, &label) in labels.iter().enumerate() {
        by_class[usize::from(label)].push(index);
    }
    let mut shares = vec![Vec::new(); n_stores];
    for mut items in by_class.into_iter().filter(|c| !c.is_empty()) {
        items.shuffle(&mut rng);
        // Dirichlet(α) as normalised Gamma(α, 1) draws; a draw of all zeros (possible only in
        // floating point for tiny α) falls back to one store chosen uniformly.
        let weights: Vec<f64> = (0..n_stores).map(|_| gamma.sample(&mut rng)).collect();
        let total: f64 = weights.iter().sum();
        let proportions: Vec<f64> = if total > 0.0 && total.is_finite() {
            weights.iter().map(|w| w / total).collect()
        } else {
            let pick = rng.random_range(0..n_stores);
            (0..n_stores)
                .map(|s| f64::from(u8::from(s == pick)))
                .collect()
        };
        // Cut points from the cumulative proportions; the last store takes the rest.
        let n = items.len();
        let mut start = 0;
        let mut cumulative = 0.0;
        for (store, share) in proportions.iter().enumerate() {
            cumulative += share;
            let end = if store + 1 == n_stores {
                n
            } else {
                ((cumulative * n as f64).round() as usize).clamp(start, n)
            };
            shares[store].extend_from_slice(&items[start..end]);
            start = end;
        }
    }
    for share in &mut shares {
        share.sort_unstable();
    }
    Ok(shares)
}

#[cfg(test)]
mod partition_tests {
    use super::*;

    fn labels(n: usize, classes: u8) -> Vec<u8> {
        (0..n).map(|i| (i % usize::from(classes)) as u8).collect()
    }

    fn assert_disjoint_cover(shares: &[Vec<usize>], n: usize) {
        let mut all: Vec<usize> = shares.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>(), "not a partition of 0..{n}");
    }

    /// Mean over stores of the largest class fraction in the store (1.0: one class per store).
    fn mean_top_class_fraction(shares: &[Vec<usize>], labels: &[u8]) -> f64 {
        let mut sum = 0.0;
        let mut counted = 0;
        for share in shares.iter().filter(|s| !s.is_empty()) {
            let mut counts = [0usize; 256];
            for &i in share {
                counts[usize::from(labels[i])] += 1;
            }
            sum += *counts.iter().max().unwrap_or(&0) as f64 / share.len() as f64;
            counted += 1;
        }
        sum / f64::from(counted)
    }

    #[test]
    fn iid_is_a_balanced_seeded_partition() {
        let shares = partition_iid(1003, 10, 7).unwrap_or_default();
        assert_disjoint_cover(&shares, 1003);
        assert!(shares.iter().all(|s| s.len() == 100 || s.len() == 101));
        assert_eq!(shares, partition_iid(1003, 10, 7).unwrap_or_default());
        assert_ne!(shares, partition_iid(1003, 10, 8).unwrap_or_default());
        assert_eq!(partition_iid(5, 0, 1), Err(PartitionError::NoStores));
    }

    #[test]
    fn dirichlet_skew_grows_as_alpha_shrinks() {
        let labels = labels(10_000, 10);
        let skewed = partition_dirichlet(&labels, 20, 0.1, 3).unwrap_or_default();
        let mild = partition_dirichlet(&labels, 20, 100.0, 3).unwrap_or_default();
        assert_disjoint_cover(&skewed, labels.len());
        assert_disjoint_cover(&mild, labels.len());
        // IID would give 0.1 (ten balanced classes). α = 100 stays close to it; α = 0.1 makes
        // most stores dominated by one class (the expected top fraction is about 0.7).
        let (top_skewed, top_mild) = (
            mean_top_class_fraction(&skewed, &labels),
            mean_top_class_fraction(&mild, &labels),
        );
        assert!(top_mild < 0.16, "alpha 100: {top_mild}");
        assert!(top_skewed > 0.5, "alpha 0.1: {top_skewed}");
        assert_eq!(
            skewed,
            partition_dirichlet(&labels, 20, 0.1, 3).unwrap_or_default()
        );
    }

    #[test]
    fn dirichlet_refuses_bad_parameters() {
        let labels = labels(10, 2);
        assert_eq!(
            partition_dirichlet(&labels, 0, 1.0, 1),
            Err(PartitionError::NoStores)
        );
        for alpha in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                partition_dirichlet(&labels, 3, alpha, 1),
                Err(PartitionError::InvalidAlpha(_))
            ));
        }
        // More stores than items: still a partition (some stores get nothing).
        let shares = partition_dirichlet(&labels, 50, 1.0, 1).unwrap_or_default();
        assert_disjoint_cover(&shares, 10);
    }
}
