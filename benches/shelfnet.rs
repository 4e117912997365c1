//! ShelfNet speed on this machine: one local training step and inference at batch 32, on the
//! CPU backend (and on wgpu when `BACKROOM_BENCH_WGPU=1` and an adapter exists).
//!
//! `cargo bench --bench shelfnet`. No peer comparison yet (PyTorch comes with its own issue).

use std::time::Instant;

use backroom_datasets::generate_store_split;
use backroom_models::{
    BackendChoice, ComputeDevice, LoadedModel, ShelfNetConfig, TrainSettings, init_parameters,
    select_device, train_local,
};

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn bench(device: &ComputeDevice) -> anyhow::Result<()> {
    let config = ShelfNetConfig::new();
    let base = init_parameters(&config, 1)?;
    let data = generate_store_split(7, 0, 256);
    let train = |steps: usize| -> anyhow::Result<f64> {
        let settings = TrainSettings {
            steps,
            batch_size: 32,
            learning_rate: 0.01,
            seed: 0,
        };
        let start = Instant::now();
        train_local(
            device,
            &config,
            &base,
            &data.images,
            &data.labels,
            &settings,
        )?;
        Ok(start.elapsed().as_secs_f64() * 1000.0)
    };
    train(2)?; // warm-up (kernels, caches)
    let mut per_step = Vec::new();
    for _ in 0..5 {
        let (short, long) = (train(5)?, train(25)?);
        per_step.push((long - short) / 20.0);
    }
    let model = LoadedModel::new(device, &config, &base)?;
    let batch = &data.images[..32 * backroom_models::IMAGE_NUMEL];
    model.predict(batch)?;
    let mut infer = Vec::new();
    for _ in 0..30 {
        let start = Instant::now();
        model.predict(batch)?;
        infer.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let step = median(per_step);
    println!(
        "{:<40} train step (batch 32): {step:7.1} ms ({:6.1} steps/s)   inference (batch 32): {:6.1} ms",
        device.description(),
        1000.0 / step,
        median(infer)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    bench(&select_device(BackendChoice::Cpu)?)?;
    if std::env::var("BACKROOM_BENCH_WGPU").is_ok_and(|v| v == "1") {
        match select_device(BackendChoice::Wgpu) {
            Ok(device) => bench(&device)?,
            Err(error) => println!("wgpu: not available ({error})"),
        }
    }
    Ok(())
}
