//! Choosing where tensors live: a wgpu GPU when one exists, else Burn's pure-Rust CPU backend
//! (`flex`).

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use burn::tensor::wgpu::wgpu;
use burn::tensor::{Device, Tensor};

use crate::{ModelError, panic_message};

/// Which backend to run on, as named on a command line or in a config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// wgpu when a hardware GPU adapter is present, otherwise the CPU.
    #[default]
    Auto,
    /// wgpu (any adapter it finds, software adapters included), or an error.
    Wgpu,
    /// Burn's `flex` CPU backend.
    Cpu,
}

impl FromStr for BackendChoice {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "wgpu" => Ok(Self::Wgpu),
            "cpu" => Ok(Self::Cpu),
            _ => Err(ModelError::UnknownBackend(s.to_string())),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Wgpu => "wgpu",
            Self::Cpu => "cpu",
        })
    }
}

/// A selected Burn device with a human-readable description, for logs and status reports.
#[derive(Clone, Debug)]
pub struct ComputeDevice {
    device: Device,
    description: String,
    is_gpu: bool,
    fallback_reason: Option<String>,
}

impl ComputeDevice {
    /// The CPU `flex` device.
    pub fn cpu() -> Self {
        Self {
            device: Device::flex(),
            description: "cpu (flex)".to_string(),
            is_gpu: false,
            fallback_reason: None,
        }
    }

    /// The Burn device (without autodiff; training enables it on a copy).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// E.g. `"cpu (flex)"` or `"wgpu: NVIDIA H100 (Vulkan)"`.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Whether this is a wgpu device (hardware or software adapter).
    pub fn is_gpu(&self) -> bool {
        self.is_gpu
    }

    /// For [`BackendChoice::Auto`] resolved to the CPU: why wgpu was not used.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }
}

/// Resolves a [`BackendChoice`] to a device.
///
/// Probing wgpu happens once per process, on a helper thread with a time limit, with panics
/// caught; it never hangs or panics the caller. `Auto` takes wgpu only for a hardware adapter
/// (a software rasteriser such as llvmpipe is slower than `flex`).
pub fn select_device(choice: BackendChoice) -> Result<ComputeDevice, ModelError> {
    match choice {
        BackendChoice::Cpu => Ok(ComputeDevice::cpu()),
        BackendChoice::Wgpu => match wgpu_probe() {
            Ok(probe) => Ok(probe.compute_device()),
            Err(reason) => Err(ModelError::DeviceUnavailable(format!("wgpu: {reason}"))),
        },
        BackendChoice::Auto => match wgpu_probe() {
            Ok(probe) if !probe.software => Ok(probe.compute_device()),
            Ok(probe) => Ok(ComputeDevice {
                fallback_reason: Some(format!(
                    "wgpu adapter {} is a software adapter",
                    probe.adapter_name
                )),
                ..ComputeDevice::cpu()
            }),
            Err(reason) => Ok(ComputeDevice {
                fallback_reason: Some(format!("no usable wgpu adapter: {reason}")),
                ..ComputeDevice::cpu()
            }),
        },
    }
}

/// How long the one-time wgpu probe may take (adapter discovery, device creation, one kernel).
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Outcome of initialising Burn's wgpu runtime on its default adapter.
struct WgpuProbe {
    device: Device,
    adapter_name: String,
    graphics_api: String,
    software: bool,
}

impl WgpuProbe {
    fn compute_device(&self) -> ComputeDevice {
        let software = if self.software { ", software" } else { "" };
        ComputeDevice {
            device: self.device.clone(),
            description: format!(
                "wgpu: {} ({}{software})",
                self.adapter_name, self.graphics_api
            ),
            is_gpu: true,
            fallback_reason: None,
        }
    }
}

static WGPU_PROBE: OnceLock<Result<WgpuProbe, String>> = OnceLock::new();

/// Initialises wgpu once per process. A runtime, once registered, cannot be registered again,
/// so the outcome (device or reason) is cached.
fn wgpu_probe() -> &'static Result<WgpuProbe, String> {
    WGPU_PROBE.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("backroom-wgpu-probe".to_string())
            .spawn(move || {
                let outcome = std::panic::catch_unwind(probe_wgpu).unwrap_or_else(|payload| {
                    Err(format!(
                        "initialisation panicked: {}",
                        panic_message(payload.as_ref())
                    ))
                });
                // The receiver may have given up waiting; nothing to do then.
                let _ = tx.send(outcome);
            });
        if let Err(err) = spawned {
            return Err(format!("cannot start the probe thread: {err}"));
        }
        match rx.recv_timeout(PROBE_TIMEOUT) {
            Ok(outcome) => outcome,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "initialisation did not finish within {} s",
                PROBE_TIMEOUT.as_secs()
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err("the probe thread ended without an answer".to_string())
            }
        }
    })
}

fn probe_wgpu() -> Result<WgpuProbe, String> {
    let (device, setup) = Device::wgpu_options()
        .init_with_setup()
        .map_err(|err| err.to_string())?;
    let info = setup.adapter.get_info();
    // Run one tiny kernel so a device that initialises but cannot compute is not selected.
    let sum = Tensor::<1>::from_floats([1.0f32, 2.0, 3.0], &device)
        .sum()
        .try_into_scalar::<f32>()
        .map_err(|err| format!("test kernel failed: {err}"))?;
    if sum != 6.0 {
        return Err(format!("test kernel returned {sum} instead of 6"));
    }
    Ok(WgpuProbe {
        device,
        adapter_name: info.name.clone(),
        graphics_api: format!("{:?}", info.backend),
        software: info.device_type == wgpu::DeviceType::Cpu,
    })
}
