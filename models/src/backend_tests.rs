//! The wgpu backend against the CPU backend: same logits, same training step, within stated
//! tolerances. On a machine without a wgpu adapter these tests print why they did not run,
//! unless a wgpu adapter is required: where the lavapipe software Vulkan driver is installed
//! (`.ci/run` installs it) or `BACKROOM_REQUIRE_WGPU=1`, a missing adapter is a failure.

#![allow(clippy::unwrap_used)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::*;

/// Logits may differ by `ATOL + RTOL * |cpu logit|`: the backends sum in different orders (and
/// GPUs may fuse multiply-adds), so f32 results agree to a few ulps per operation, not bit
/// for bit.
const LOGIT_ATOL: f32 = 1e-4;
const LOGIT_RTOL: f32 = 1e-4;
/// After a few SGD steps the backends' parameters may differ by this fraction of the largest
/// parameter change (rounding differences are amplified by every step).
const PARAM_RTOL: f32 = 1e-2;

/// The wgpu device, or `None` (with the reason printed) where none exists and none is required.
fn wgpu_device() -> Option<ComputeDevice> {
    match select_device(BackendChoice::Wgpu) {
        Ok(device) => {
            eprintln!("wgpu device: {}", device.description());
            Some(device)
        }
        Err(err) => {
            if let Some(why) = wgpu_required() {
                panic!("{why}, but wgpu is unavailable: {err}");
            }
            eprintln!("skipped: {err} (install mesa-vulkan-drivers for lavapipe, as .ci/run does)");
            None
        }
    }
}

/// Why this machine must have a wgpu adapter, if it must.
fn wgpu_required() -> Option<String> {
    if std::env::var("BACKROOM_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
        return Some("BACKROOM_REQUIRE_WGPU=1".to_owned());
    }
    let icd_dir = std::path::Path::new("/usr/share/vulkan/icd.d");
    let lavapipe = std::fs::read_dir(icd_dir)
        .ok()?
        .flatten()
        .find(|entry| entry.file_name().to_string_lossy().starts_with("lvp_icd"))?;
    Some(format!(
        "the lavapipe driver is installed ({})",
        lavapipe.path().display()
    ))
}

fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0.0f32..1.0)).collect()
}

fn assert_close(cpu: &[f32], gpu: &[f32], what: &str) -> f32 {
    assert_eq!(cpu.len(), gpu.len(), "{what}: lengths");
    let mut worst = 0.0f32;
    for (i, (&c, &g)) in cpu.iter().zip(gpu).enumerate() {
        let diff = (c - g).abs();
        assert!(
            diff <= LOGIT_ATOL + LOGIT_RTOL * c.abs(),
            "{what}: value {i}: cpu {c} vs wgpu {g} (|diff| {diff})"
        );
        worst = worst.max(diff);
    }
    worst
}

#[test]
fn wgpu_and_cpu_give_the_same_logits() {
    let Some(gpu) = wgpu_device() else { return };
    let cpu = select_device(BackendChoice::Cpu).unwrap();
    for config in [ShelfNetConfig::new(), ShelfNetConfig::mcmahan_cnn()] {
        let params = init_parameters(&config, 11).unwrap();
        // 37 images: not a multiple of any kernel's tile size.
        let images = uniform(37 * config.input_numel(), 5);
        let on_cpu = LoadedModel::new(&cpu, &config, &params)
            .unwrap()
            .logits(&images)
            .unwrap();
        let on_gpu = LoadedModel::new(&gpu, &config, &params)
            .unwrap()
            .logits(&images)
            .unwrap();
        assert_eq!(on_cpu.len(), 37 * config.num_classes);
        assert!(on_cpu.iter().any(|v| v.abs() > 1e-3), "logits all near 0");
        let worst = assert_close(&on_cpu, &on_gpu, &format!("{config:?}"));
        eprintln!(
            "{} parameters: max |cpu - wgpu| logit difference {worst:e}",
            num_parameters(&config)
        );
    }
}

#[test]
fn wgpu_and_cpu_train_alike() {
    let Some(gpu) = wgpu_device() else { return };
    let cpu = select_device(BackendChoice::Cpu).unwrap();
    let config = ShelfNetConfig::new();
    let base = init_parameters(&config, 3).unwrap();
    let n = 24;
    let images = uniform(n * config.input_numel(), 9);
    let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
    let settings = TrainSettings {
        steps: 3,
        batch_size: 8,
        learning_rate: 0.05,
        seed: 4,
        proximal_mu: 0.0,
    };
    let a = train_local(&cpu, &config, &base, &images, &labels, &settings).unwrap();
    let b = train_local(&gpu, &config, &base, &images, &labels, &settings).unwrap();
    assert!((a.mean_loss - b.mean_loss).abs() <= 1e-4, "{a:?} vs {b:?}");
    let moved = max_abs_diff(&a.params, &base);
    let worst = max_abs_diff(&a.params, &b.params);
    eprintln!("after 3 steps: largest parameter change {moved:e}, max |cpu - wgpu| {worst:e}");
    assert!(moved > 1e-3, "training barely moved: {moved}");
    assert!(
        worst <= PARAM_RTOL * moved,
        "parameters differ by {worst}, more than {PARAM_RTOL} of the largest change {moved}"
    );
}

/// A store node trains on the same device its camera loop runs inference on, from other
/// threads (each frame on whichever blocking thread is free). Training must come out as it
/// does alone.
#[test]
fn wgpu_training_is_unaffected_by_inference_on_other_threads() {
    let Some(gpu) = wgpu_device() else { return };
    let config = ShelfNetConfig::new();
    let base = init_parameters(&config, 5).unwrap();
    let n = 64;
    let images = uniform(n * config.input_numel(), 21);
    let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
    let settings = TrainSettings {
        steps: 12,
        batch_size: 16,
        learning_rate: 0.05,
        seed: 8,
        proximal_mu: 0.0,
    };
    let alone = train_local(&gpu, &config, &base, &images, &labels, &settings).unwrap();
    let frames = uniform(8 * config.input_numel(), 22);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (together, inferences) = std::thread::scope(|scope| {
        let camera = scope.spawn(|| {
            let model = LoadedModel::new(&gpu, &config, &base).unwrap();
            let mut count = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // A fresh thread per frame, like `spawn_blocking` under a busy runtime.
                std::thread::scope(|frame| {
                    frame
                        .spawn(|| model.predict(&frames).unwrap())
                        .join()
                        .unwrap();
                });
                count += 1;
            }
            count
        });
        let trained = train_local(&gpu, &config, &base, &images, &labels, &settings).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (trained, camera.join().unwrap())
    });
    let moved = max_abs_diff(&alone.params, &base);
    let worst = max_abs_diff(&alone.params, &together.params);
    eprintln!(
        "{inferences} inferences during training; largest change {moved:e}, \
         max |alone - with inference| {worst:e}, loss {} vs {}",
        alone.mean_loss, together.mean_loss
    );
    assert!(inferences > 0, "no inference ran during training");
    assert!(
        worst <= PARAM_RTOL * moved,
        "training with inference on other threads differs by {worst}, more than {PARAM_RTOL} of the largest change {moved}"
    );
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0f32, f32::max)
}
