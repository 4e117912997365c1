//! Backroom and PyTorch agree: weights exported by [`to_torch_safetensors`] give the same logits
//! in PyTorch (`deploy/torch/backroom_shelfnet.py`) as in Burn, and PyTorch-made weights
//! imported by [`from_torch_safetensors`] give the same logits in Burn as in PyTorch.
//!
//! Needs a Python with `torch` (`BACKROOM_PYTHON`, else `/usr/bin/python3`, else `python3`) and
//! the `safetensors` package: when that Python lacks it, a virtual environment with system site
//! packages is made once under `BACKROOM_PYENV` (default
//! `${XDG_CACHE_HOME:-$HOME/.cache}/backroom/torch-pyenv`) and `safetensors` is installed into
//! it with pip. Without torch, or when the environment cannot be made, the tests print why and
//! pass; `BACKROOM_REQUIRE_TORCH=1` makes that a failure.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use backroom_models::{
    BackendChoice, LoadedModel, ShelfNetConfig, TrainSettings, from_torch_safetensors,
    num_parameters, select_device, to_torch_safetensors, train_local,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Largest accepted absolute difference between Burn's and PyTorch's logits. Both compute in
/// f32 with different summation orders (im2col/GEMM blocking); observed differences are
/// around 1e-7 to 1e-6 on logits of magnitude ~0.1-1.
const TOLERANCE: f32 = 1e-4;

/// The `safetensors` release installed into the virtual environment.
const SAFETENSORS_REQUIREMENT: &str = "safetensors==0.8.0";

/// Images per comparison.
const IMAGES: usize = 16;

/// A Python that has `torch` and `safetensors`, and the Backroom module.
struct Torch {
    python: PathBuf,
    script: PathBuf,
}

/// The Python environment, made once per test process; `Err` holds the reason to skip.
fn torch_env() -> &'static Result<Torch, String> {
    static ENV: OnceLock<Result<Torch, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/torch/backroom_shelfnet.py");
        let python = python_with_safetensors(&python_with_torch()?)?;
        Ok(Torch { python, script })
    })
}

/// The environment, or `None` after printing why the test is skipped.
fn torch_or_skip(test: &str) -> Option<&'static Torch> {
    match torch_env() {
        Ok(torch) => Some(torch),
        Err(reason) if std::env::var("BACKROOM_REQUIRE_TORCH").is_ok_and(|v| v == "1") => {
            panic!("{test}: BACKROOM_REQUIRE_TORCH=1 but PyTorch is unusable: {reason}")
        }
        Err(reason) => {
            eprintln!("{test}: skipped: {reason}");
            None
        }
    }
}

fn succeeds(python: &Path, code: &str) -> bool {
    Command::new(python)
        .args(["-c", code])
        .output()
        .is_ok_and(|out| out.status.success())
}

fn python_with_torch() -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = match std::env::var_os("BACKROOM_PYTHON") {
        Some(python) => vec![python.into()],
        None => vec!["/usr/bin/python3".into(), "python3".into()],
    };
    candidates
        .iter()
        .find(|python| succeeds(python, "import torch"))
        .cloned()
        .ok_or_else(|| format!("no Python with torch among {candidates:?} (set BACKROOM_PYTHON)"))
}

/// `base` when it already has `safetensors`, else the cached virtual environment's Python,
/// made on first use.
fn python_with_safetensors(base: &Path) -> Result<PathBuf, String> {
    const CHECK: &str = "import torch, safetensors.torch";
    if succeeds(base, CHECK) {
        return Ok(base.to_path_buf());
    }
    let dir = match std::env::var_os("BACKROOM_PYENV") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
                .ok_or("neither XDG_CACHE_HOME nor HOME is set")?;
            cache.join("backroom/torch-pyenv")
        }
    };
    let venv_python = dir.join("bin/python");
    if succeeds(&venv_python, CHECK) {
        return Ok(venv_python);
    }
    // Build beside the final place and rename, so a concurrent test process never sees a
    // half-made environment.
    let parent = dir.parent().ok_or("the environment path has no parent")?;
    std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    let staging = parent.join(format!("torch-pyenv.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    eprintln!(
        "making a Python environment with {SAFETENSORS_REQUIREMENT} at {}",
        dir.display()
    );
    let made = run(
        Command::new(base)
            .args(["-m", "venv", "--system-site-packages"])
            .arg(&staging),
        "python -m venv",
    )
    .and_then(|()| {
        run(
            Command::new(staging.join("bin/python")).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--timeout",
                "30",
                "--retries",
                "1",
                SAFETENSORS_REQUIREMENT,
            ]),
            "pip install",
        )
    });
    if let Err(reason) = made {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(reason);
    }
    if !succeeds(&venv_python, CHECK) {
        // Absent or broken: replace it. (If another process just finished making it, the
        // check above passed and this is skipped.)
        let _ = std::fs::remove_dir_all(&dir);
        if std::fs::rename(&staging, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
    } else {
        let _ = std::fs::remove_dir_all(&staging);
    }
    if succeeds(&venv_python, CHECK) {
        Ok(venv_python)
    } else {
        Err(format!(
            "the environment at {} cannot import torch and safetensors",
            dir.display()
        ))
    }
}

impl Torch {
    /// Runs `backroom_shelfnet.py` with `args`; panics with its stderr on failure.
    fn run(&self, args: &[&str]) {
        let out = Command::new(&self.python)
            .arg(&self.script)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "backroom_shelfnet.py {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// PyTorch's logits for `images` with the model file `model`.
    fn logits(&self, dir: &Path, model: &Path, images: &[f32]) -> Vec<f32> {
        let images_path = dir.join("images.f32");
        let logits_path = dir.join("logits.f32");
        std::fs::write(&images_path, f32_bytes(images)).unwrap();
        self.run(&[
            "logits",
            "--model",
            path_str(model),
            "--images",
            path_str(&images_path),
            "--out",
            path_str(&logits_path),
        ]);
        std::fs::read(&logits_path)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A fresh scratch folder for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("torch_interop")
        .join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn random_images(config: &ShelfNetConfig, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n * config.input_numel())
        .map(|_| rng.random::<f32>())
        .collect()
}

fn burn_logits(config: &ShelfNetConfig, params: &[f32], images: &[f32]) -> Vec<f32> {
    let cpu = select_device(BackendChoice::Cpu).unwrap();
    LoadedModel::new(&cpu, config, params)
        .unwrap()
        .logits(images)
        .unwrap()
}

/// Asserts the two logit vectors agree within [`TOLERANCE`] and prints the largest difference.
fn assert_close(what: &str, burn: &[f32], torch: &[f32]) {
    assert_eq!(burn.len(), torch.len(), "{what}: logit counts differ");
    let max_diff = burn
        .iter()
        .zip(torch)
        .map(|(b, t)| (b - t).abs())
        .fold(0.0f32, f32::max);
    let max_logit = burn.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    eprintln!(
        "{what}: {} logits, max |burn - torch| = {max_diff:.3e} (largest |logit| {max_logit:.3}, \
         tolerance {TOLERANCE:.0e})",
        burn.len()
    );
    assert!(
        max_diff <= TOLERANCE,
        "{what}: max |burn - torch| = {max_diff:e} exceeds {TOLERANCE:e}"
    );
}

fn configs() -> [(&'static str, ShelfNetConfig); 2] {
    [
        ("standard", ShelfNetConfig::new()),
        ("mcmahan_cnn", ShelfNetConfig::mcmahan_cnn()),
    ]
}

#[test]
fn burn_weights_give_the_same_logits_in_pytorch() {
    let Some(torch) = torch_or_skip("burn_weights_give_the_same_logits_in_pytorch") else {
        return;
    };
    let dir = scratch("export");
    for (name, config) in configs() {
        let params = backroom_models::init_parameters(&config, 11).unwrap();
        let model = dir.join(format!("{name}.safetensors"));
        std::fs::write(&model, to_torch_safetensors(&config, &params).unwrap()).unwrap();
        let images = random_images(&config, IMAGES, 21);
        let torch_logits = torch.logits(&dir, &model, &images);
        assert_close(
            &format!("{name}: Burn init, exported"),
            &burn_logits(&config, &params, &images),
            &torch_logits,
        );
    }
}

#[test]
fn pytorch_weights_give_the_same_logits_in_burn() {
    let Some(torch) = torch_or_skip("pytorch_weights_give_the_same_logits_in_burn") else {
        return;
    };
    let dir = scratch("import");
    for (name, config) in configs() {
        let model = dir.join(format!("{name}.safetensors"));
        let config_json = serde_json::to_string(&config).unwrap();
        torch.run(&[
            "init",
            "--config",
            &config_json,
            "--seed",
            "5",
            "--out",
            path_str(&model),
        ]);
        let (imported_config, params) =
            from_torch_safetensors(&std::fs::read(&model).unwrap(), Some(&config)).unwrap();
        assert_eq!(imported_config, config);
        assert_eq!(params.len(), num_parameters(&config));
        let images = random_images(&config, IMAGES, 22);
        assert_close(
            &format!("{name}: PyTorch init, imported"),
            &burn_logits(&config, &params, &images),
            &torch.logits(&dir, &model, &images),
        );
    }
}

#[test]
fn pytorch_seeded_training_goes_back_to_pytorch() {
    let Some(torch) = torch_or_skip("pytorch_seeded_training_goes_back_to_pytorch") else {
        return;
    };
    let dir = scratch("train");
    let config = ShelfNetConfig::new();
    let seed_model = dir.join("seed.safetensors");
    torch.run(&[
        "init",
        "--config",
        &serde_json::to_string(&config).unwrap(),
        "--seed",
        "6",
        "--out",
        path_str(&seed_model),
    ]);
    let (_, base) = from_torch_safetensors(&std::fs::read(&seed_model).unwrap(), None).unwrap();
    let images = random_images(&config, IMAGES, 23);
    let labels: Vec<u8> = (0..IMAGES).map(|i| (i % 2) as u8).collect();
    let cpu = select_device(BackendChoice::Cpu).unwrap();
    let settings = TrainSettings {
        steps: 2,
        batch_size: 8,
        learning_rate: 0.05,
        seed: 1,
        proximal_mu: 0.0,
    };
    let trained = train_local(&cpu, &config, &base, &images, &labels, &settings).unwrap();
    assert_ne!(trained.params, base);
    let trained_model = dir.join("trained.safetensors");
    std::fs::write(
        &trained_model,
        to_torch_safetensors(&config, &trained.params).unwrap(),
    )
    .unwrap();
    assert_close(
        "standard: PyTorch init, trained 2 steps in Burn, exported",
        &burn_logits(&config, &trained.params, &images),
        &torch.logits(&dir, &trained_model, &images),
    );
}
