//! ShelfNet speed on this machine, Burn against PyTorch: one local training step and one
//! inference, for the standard net (train and inference at batch 32) and McMahan's CNN (train
//! at batch 10, inference at batch 32), on Burn's CPU backend (and on wgpu when
//! `BACKROOM_BENCH_WGPU=1` and an adapter exists), then the same nets in PyTorch on the CPU
//! (`benches/shelfnet_torch.py`, same method) and the ratios.
//!
//! `cargo bench --bench shelfnet`. PyTorch runs under `BACKROOM_PYTHON`, else
//! `/usr/bin/python3`, else `python3` (the first that imports torch); without one the bench
//! prints why and reports Burn's figures alone.
//!
//! Threads: the workspace builds Burn without its `rayon` feature, so the CPU backend (flex)
//! runs every op, matrix products included, on the calling thread. PyTorch is therefore given
//! one thread too (`torch.set_num_threads(1)`), the like-for-like comparison;
//! `BACKROOM_BENCH_TORCH_THREADS=N` gives it N instead (e.g. every core, PyTorch's own default).

#[path = "support/peer.rs"]
mod peer;

use std::process::Command;
use std::time::Instant;

use backroom_datasets::generate_store_split;
use backroom_models::{
    BackendChoice, ComputeDevice, LoadedModel, ShelfNetConfig, TrainSettings, init_parameters,
    select_device, train_local,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Examples the training steps draw their minibatches from.
const POOL: usize = 256;

/// One benchmarked net.
struct Net {
    name: &'static str,
    config: ShelfNetConfig,
    train_batch: usize,
    infer_batch: usize,
}

fn nets() -> [Net; 2] {
    [
        Net {
            name: "standard",
            config: ShelfNetConfig::new(),
            train_batch: 32,
            infer_batch: 32,
        },
        Net {
            name: "mcmahan_cnn",
            config: ShelfNetConfig::mcmahan_cnn(),
            train_batch: 10,
            infer_batch: 32,
        },
    ]
}

/// Median milliseconds of one training step and of one inference batch.
#[derive(Clone, Copy)]
struct Figures {
    train_step_ms: f64,
    inference_ms: f64,
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Training examples for `net`: rendered shelf crops for the shelf net, uniform noise with
/// random labels otherwise (speed does not depend on the pixel values).
fn examples(net: &Net) -> (Vec<f32>, Vec<u8>) {
    if net.config.is_shelf_classifier() {
        let data = generate_store_split(7, 0, POOL);
        return (data.images, data.labels);
    }
    let mut rng = StdRng::seed_from_u64(7);
    let images = (0..POOL * net.config.input_numel())
        .map(|_| rng.random::<f32>())
        .collect();
    let classes = net.config.num_classes as u8;
    let labels = (0..POOL).map(|_| rng.random_range(0..classes)).collect();
    (images, labels)
}

/// A training step: the median over five runs of (25 steps − 5 steps) / 20, after a warm-up
/// (each `train_local` call builds the model and optimiser afresh, which the difference
/// cancels). Inference: the median of 30 `predict` calls (forward, argmax, read-back).
fn bench(device: &ComputeDevice, net: &Net) -> anyhow::Result<Figures> {
    let config = &net.config;
    let base = init_parameters(config, 1)?;
    let (images, labels) = examples(net);
    let train = |steps: usize| -> anyhow::Result<f64> {
        let settings = TrainSettings {
            steps,
            batch_size: net.train_batch,
            learning_rate: 0.01,
            seed: 0,
            proximal_mu: 0.0,
        };
        let start = Instant::now();
        train_local(device, config, &base, &images, &labels, &settings)?;
        Ok(start.elapsed().as_secs_f64() * 1000.0)
    };
    train(2)?; // warm-up (kernels, caches)
    let mut per_step = Vec::new();
    for _ in 0..5 {
        let (short, long) = (train(5)?, train(25)?);
        per_step.push((long - short) / 20.0);
    }
    let model = LoadedModel::new(device, config, &base)?;
    let batch = &images[..net.infer_batch * config.input_numel()];
    model.predict(batch)?;
    let mut infer = Vec::new();
    for _ in 0..30 {
        let start = Instant::now();
        model.predict(batch)?;
        infer.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let figures = Figures {
        train_step_ms: median(per_step),
        inference_ms: median(infer),
    };
    println!(
        "{:<36} {:<12} train step (batch {:>2}): {:7.1} ms ({:6.1} steps/s)   inference (batch {}): {:6.1} ms",
        device.description(),
        net.name,
        net.train_batch,
        figures.train_step_ms,
        1000.0 / figures.train_step_ms,
        net.infer_batch,
        figures.inference_ms
    );
    Ok(figures)
}

/// A Python that imports torch, or why there is none.
fn python_with_torch() -> Result<String, String> {
    let candidates: Vec<String> = match std::env::var("BACKROOM_PYTHON") {
        Ok(python) => vec![python],
        Err(_) => vec!["/usr/bin/python3".into(), "python3".into()],
    };
    candidates
        .iter()
        .find(|python| {
            Command::new(python.as_str())
                .args(["-c", "import torch"])
                .output()
                .is_ok_and(|out| out.status.success())
        })
        .cloned()
        .ok_or_else(|| format!("no Python with torch among {candidates:?} (set BACKROOM_PYTHON)"))
}

/// PyTorch's figures for `nets`, in order, with its description line; or why there are none.
fn run_torch(nets: &[Net], threads: usize) -> Result<(String, Vec<Figures>), String> {
    let python = python_with_torch()?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/shelfnet_torch.py");
    let spec: Vec<serde_json::Value> = nets
        .iter()
        .map(|net| serde_json::json!([net.name, net.config, net.train_batch, net.infer_batch]))
        .collect();
    let mut command = Command::new(&python);
    command
        .arg(script)
        .args(["--threads", &threads.to_string()])
        .args(["--nets", &serde_json::Value::from(spec).to_string()]);
    let value = peer::run_peer(command, &python, script)?;
    let results = value["results"].as_array().cloned().unwrap_or_default();
    let figures = results
        .iter()
        .map(|r| {
            Some(Figures {
                train_step_ms: r.get("train_step_ms")?.as_f64()?,
                inference_ms: r.get("inference_ms")?.as_f64()?,
            })
        })
        .collect::<Option<Vec<_>>>()
        .filter(|f| f.len() == nets.len())
        .ok_or_else(|| format!("unexpected results {results:?}"))?;
    let description = format!(
        "PyTorch {} on the CPU, {} threads ({}), under {python}",
        value["torch"].as_str().unwrap_or("?"),
        value["threads"],
        value["parallel"].as_str().unwrap_or("?")
    );
    Ok((description, figures))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn main() -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "ShelfNet bench: {} ({cores} cores); Burn CPU (flex) single-threaded (built without \
         Burn's rayon feature)",
        cpu_model()
    );
    let nets = nets();
    let cpu = select_device(BackendChoice::Cpu)?;
    let mut burn = Vec::new();
    for net in &nets {
        burn.push(bench(&cpu, net)?);
    }
    if std::env::var("BACKROOM_BENCH_WGPU").is_ok_and(|v| v == "1") {
        match select_device(BackendChoice::Wgpu) {
            Ok(device) => {
                for net in &nets {
                    bench(&device, net)?;
                }
            }
            Err(error) => println!("wgpu: not available ({error})"),
        }
    }

    let torch_threads = std::env::var("BACKROOM_BENCH_TORCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(1);
    let (description, torch) = match run_torch(&nets, torch_threads) {
        Ok(result) => result,
        Err(reason) => {
            println!("PyTorch skipped: {reason}");
            return Ok(());
        }
    };
    println!("{description}");
    println!(
        "| net | train batch | Burn steps/s | PyTorch steps/s | Burn/PyTorch | inference batch | Burn batches/s | PyTorch batches/s | Burn/PyTorch |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for ((net, ours), theirs) in nets.iter().zip(&burn).zip(&torch) {
        let rate = |ms: f64| 1000.0 / ms;
        println!(
            "| {} | {} | {:.1} ({:.1} ms) | {:.1} ({:.1} ms) | {:.2}× | {} | {:.1} ({:.1} ms) | {:.1} ({:.1} ms) | {:.2}× |",
            net.name,
            net.train_batch,
            rate(ours.train_step_ms),
            ours.train_step_ms,
            rate(theirs.train_step_ms),
            theirs.train_step_ms,
            theirs.train_step_ms / ours.train_step_ms,
            net.infer_batch,
            rate(ours.inference_ms),
            ours.inference_ms,
            rate(theirs.inference_ms),
            theirs.inference_ms,
            theirs.inference_ms / ours.inference_ms,
        );
    }
    Ok(())
}
