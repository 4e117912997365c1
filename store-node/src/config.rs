//! Node configuration: a raw TOML layer that mirrors the file, and a validated [`NodeConfig`].
//!
//! Every setting is read and checked before anything is reported, so an operator sees all the
//! problems of a file at once ([`ConfigError`] lists each one).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backroom_models::BackendChoice;

pub use crate::frames::SlotGrid;

mod raw;

pub use raw::{
    RawCameraConfig, RawDataConfig, RawLocalStoreConfig, RawMetricsConfig, RawNodeConfig,
    RawSlotGrid,
};
use raw::{check_lineage, check_non_empty, check_url};

/// Default TLS server name checked against the coordinator's certificate.
pub const DEFAULT_TLS_SERVER_NAME: &str = "localhost";
/// Default model lineage.
pub const DEFAULT_LINEAGE: &str = "shelfnet";
/// Default length of a metric window.
pub const DEFAULT_METRIC_WINDOW_SECS: u32 = 3600;
/// Default long-poll wait.
pub const DEFAULT_POLL_WAIT_SECS: u32 = 20;
/// Longest long-poll wait the protocol allows.
pub const MAX_POLL_WAIT_SECS: u32 = 60;
/// Default limit on a model's weights.
pub const DEFAULT_MAX_MODEL_BYTES: u64 = 256 * 1024 * 1024;
/// Default number of local labelled samples.
pub const DEFAULT_TRAIN_SAMPLES: usize = 256;
/// Default zCDP cost of one window's release: 24 hourly releases (0.96) fit in the default day.
pub const DEFAULT_RHO_PER_RELEASE: f64 = 0.04;
/// Default zCDP budget per store and UTC day.
pub const DEFAULT_RHO_PER_DAY: f64 = 1.0;
/// Default suppression threshold on noised counts.
pub const DEFAULT_SUPPRESS_BELOW: u64 = 5;
/// Default bound on frames waiting for processing.
pub const DEFAULT_QUEUE_FRAMES: usize = 2;
/// Default of `camera.rescan_every_frames` (10 s at 30 frames/s).
pub const DEFAULT_RESCAN_EVERY_FRAMES: u32 = 300;
/// Default of `camera.settle_secs`: how long a part of the picture must be still before the
/// moving-region mask shows it.
pub const DEFAULT_SETTLE_SECS: u64 = 30;
/// Default retention of the local store: 7 days.
pub const DEFAULT_RETENTION_HOURS: u64 = 168;
/// Default spacing of kept frame images (capture time).
pub const DEFAULT_KEEP_IMAGE_EVERY_SECS: u64 = 300;
/// Default interval between retention sweeps.
pub const DEFAULT_SWEEP_INTERVAL_SECS: u64 = 600;
/// Default poll interval of a watched directory.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 200;
/// Largest ρ accepted for a release or a day: beyond it the noise is negligible and the "privacy"
/// meaningless, which is most likely a typo.
pub const MAX_RHO: f64 = 100.0;

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid node configuration ({} problem(s)):{}", .problems.len(), ProblemList(.problems))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

struct ProblemList<'a>(&'a [String]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in self.0 {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DataSettings {
    pub world_seed: u64,
    pub store_index: u32,
    pub train_samples: usize,
}

/// Where a camera's frames come from.
#[derive(Clone, Debug, PartialEq)]
pub enum FrameSourceSettings {
    /// The synthetic shelf replay (no people in it), rendered as frames.
    Synthetic,
    /// A drop directory of JPEG/PNG files, each deleted once read.
    Directory {
        dir: PathBuf,
        poll_interval: Duration,
    },
    /// A recorded image sequence (a directory's JPEG/PNG files in name order).
    Sequence { dir: PathBuf, repeat: bool },
}

impl FrameSourceSettings {
    pub fn name(&self) -> &'static str {
        match self {
            FrameSourceSettings::Synthetic => "synthetic",
            FrameSourceSettings::Directory { .. } => "directory",
            FrameSourceSettings::Sequence { .. } => "sequence",
        }
    }
}

/// `[camera]`: one camera and its shelf.
#[derive(Clone, Debug, PartialEq)]
pub struct CameraSettings {
    pub camera_id: u32,
    pub source: FrameSourceSettings,
    /// Slots on the shelf (the grid's cells for an image source).
    pub slots: usize,
    /// Where the slots are in an image source's frames (`None` for the synthetic replay,
    /// which lays out its own).
    pub slot_grid: Option<SlotGrid>,
    /// Seconds of shelf time one frame stands for: the capture interval of the camera. For the
    /// synthetic replay and a sequence it also advances each frame's capture time.
    pub seconds_per_frame: i64,
    /// Real time between two frames of the synthetic replay or a sequence (1 / fps).
    pub frame_interval: Duration,
    /// Capture time of the first frame of the synthetic replay or a sequence.
    pub start_unix: i64,
    /// Frames that may wait for processing; later arrivals are dropped and counted.
    pub queue_frames: usize,
    /// Motion-gated redaction: every part of the picture is rescanned at least once in this
    /// many frames even when it did not change; 1 scans every frame whole
    /// ([`crate::redact::motion`]).
    pub rescan_every_frames: u32,
    /// Fill whatever moves against the camera's learned background (people from any angle,
    /// [`crate::redact::moving`]) besides the faces. Default: on for image sources, off for
    /// the synthetic replay (rendered shelves, no people in them).
    pub mask_moving: bool,
    /// Capture time a part of the picture must stay still before the mask counts it as
    /// background and shows it.
    pub settle: Duration,
}

impl Default for CameraSettings {
    fn default() -> Self {
        Self {
            camera_id: 0,
            source: FrameSourceSettings::Synthetic,
            slots: 12,
            slot_grid: None,
            seconds_per_frame: 60,
            frame_interval: Duration::from_millis(1000),
            // 2024-01-01T00:00:00Z, aligned to the hour.
            start_unix: 1_704_067_200,
            queue_frames: DEFAULT_QUEUE_FRAMES,
            rescan_every_frames: DEFAULT_RESCAN_EVERY_FRAMES,
            mask_moving: false,
            settle: Duration::from_secs(DEFAULT_SETTLE_SECS),
        }
    }
}

/// `[local_store]`: the encrypted store of redacted frames and events, and its retention.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalStoreSettings {
    /// The data key (created with mode 0600 when absent). `None`: `<data_dir>/local-store.key`.
    pub key_file: Option<PathBuf>,
    /// Frames and events stored longer ago than this are deleted.
    pub retention: Duration,
    /// Keep one redacted image per camera per this much capture time (`None`: keep no images,
    /// events only).
    pub keep_image_every: Option<Duration>,
    /// How often retention runs.
    pub sweep_interval: Duration,
}

impl Default for LocalStoreSettings {
    fn default() -> Self {
        Self {
            key_file: None,
            retention: Duration::from_secs(DEFAULT_RETENTION_HOURS * 3600),
            keep_image_every: Some(Duration::from_secs(DEFAULT_KEEP_IMAGE_EVERY_SECS)),
            sweep_interval: Duration::from_secs(DEFAULT_SWEEP_INTERVAL_SECS),
        }
    }
}

/// `[metrics]`: differential privacy of the shelf-metric releases ([`crate::release`]).
#[derive(Clone, Debug, PartialEq)]
pub struct MetricPrivacySettings {
    /// zCDP cost ρ of one window's release.
    pub rho_per_release: f64,
    /// zCDP budget per UTC day of data; a release that would exceed it is refused.
    pub rho_per_day: f64,
    /// Noised counts below this are sent as suppressed.
    pub suppress_below: u64,
}

impl Default for MetricPrivacySettings {
    fn default() -> Self {
        Self {
            rho_per_release: DEFAULT_RHO_PER_RELEASE,
            rho_per_day: DEFAULT_RHO_PER_DAY,
            suppress_below: DEFAULT_SUPPRESS_BELOW,
        }
    }
}

impl MetricPrivacySettings {
    /// Records every problem of these settings.
    pub(crate) fn check(&self, problems: &mut Vec<String>) {
        for (name, rho) in [
            ("metrics.rho_per_release", self.rho_per_release),
            ("metrics.rho_per_day", self.rho_per_day),
        ] {
            if !(rho.is_finite() && rho > 0.0 && rho <= MAX_RHO) {
                problems.push(format!(
                    "{name} must be a number above 0 and at most {MAX_RHO}, got {rho}"
                ));
            }
        }
        if self.rho_per_release > self.rho_per_day {
            problems.push(format!(
                "metrics.rho_per_release ({}) exceeds metrics.rho_per_day ({}): every window would be refused",
                self.rho_per_release, self.rho_per_day
            ));
        }
        if self.suppress_below > 1_000_000 {
            problems.push(format!(
                "metrics.suppress_below must be between 0 and 1000000, got {}",
                self.suppress_below
            ));
        }
    }
}

/// A validated node configuration. Fields are public so that in-process callers (the pilot,
/// tests) can build one directly with [`NodeConfig::new`] and adjust it.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// `https://host:port` of the coordinator.
    pub coordinator_url: String,
    /// Name the coordinator's certificate must carry.
    pub tls_server_name: String,
    /// Holds `ca.pem`, `cert.pem`, `key.pem` and `model-root.pub.pem`.
    pub bundle_dir: PathBuf,
    /// Holds `node.db`, `model/`, `frames/` and (by default) `local-store.key`.
    pub data_dir: PathBuf,
    pub lineage: String,
    pub backend: BackendChoice,
    pub data: DataSettings,
    pub camera: CameraSettings,
    pub metric_window_secs: u32,
    pub metrics: MetricPrivacySettings,
    pub local_store: LocalStoreSettings,
    pub poll_wait_secs: u32,
    pub max_model_bytes: u64,
    /// Where Prometheus scrapes `GET /metrics` (plain HTTP, counters only; see
    /// [`crate::telemetry`]). Off when `None`.
    pub telemetry_listen: Option<std::net::SocketAddr>,
}

impl NodeConfig {
    /// A configuration with every optional setting at its default.
    pub fn new(
        coordinator_url: impl Into<String>,
        bundle_dir: impl Into<PathBuf>,
        data_dir: impl Into<PathBuf>,
        data: DataSettings,
    ) -> Self {
        Self {
            coordinator_url: coordinator_url.into(),
            tls_server_name: DEFAULT_TLS_SERVER_NAME.to_owned(),
            bundle_dir: bundle_dir.into(),
            data_dir: data_dir.into(),
            lineage: DEFAULT_LINEAGE.to_owned(),
            backend: BackendChoice::Auto,
            data,
            camera: CameraSettings::default(),
            metric_window_secs: DEFAULT_METRIC_WINDOW_SECS,
            metrics: MetricPrivacySettings::default(),
            local_store: LocalStoreSettings::default(),
            poll_wait_secs: DEFAULT_POLL_WAIT_SECS,
            max_model_bytes: DEFAULT_MAX_MODEL_BYTES,
            telemetry_listen: None,
        }
    }

    /// Parses and validates a TOML file's text; relative paths are resolved against `base_dir`
    /// (normally the directory holding the file).
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<NodeConfig, ConfigError> {
        let raw: RawNodeConfig = toml::from_str(text).map_err(|e| ConfigError {
            problems: vec![format!("TOML: {}", e.message().trim())],
        })?;
        raw.validate(base_dir)
    }

    /// The local store's key file.
    pub fn key_file(&self) -> PathBuf {
        self.local_store
            .key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("local-store.key"))
    }

    /// Checks a configuration built in code (the same rules as a file).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        check_url(&self.coordinator_url, &mut problems);
        check_non_empty("tls_server_name", &self.tls_server_name, &mut problems);
        check_lineage(&self.lineage, &mut problems);
        if self.metric_window_secs == 0 {
            problems.push("metric_window_secs must be at least 1".to_owned());
        }
        self.metrics.check(&mut problems);
        if self.poll_wait_secs == 0 || self.poll_wait_secs > MAX_POLL_WAIT_SECS {
            problems.push(format!(
                "poll_wait_secs must be between 1 and {MAX_POLL_WAIT_SECS}, got {}",
                self.poll_wait_secs
            ));
        }
        if self.max_model_bytes == 0 {
            problems.push("max_model_bytes must be at least 1".to_owned());
        }
        if self.data.train_samples == 0 {
            problems.push("data.train_samples must be at least 1".to_owned());
        }
        if self.camera.slots == 0 {
            problems.push("camera.slots must be at least 1".to_owned());
        }
        match (&self.camera.source, &self.camera.slot_grid) {
            (FrameSourceSettings::Synthetic, Some(_)) => problems.push(
                "camera.slot_grid applies to image sources only (the synthetic replay lays out its own slots)"
                    .to_owned(),
            ),
            (FrameSourceSettings::Synthetic, None) => {}
            (_, None) => problems.push(format!(
                "camera.slot_grid is required for source = \"{}\"",
                self.camera.source.name()
            )),
            (_, Some(grid)) => {
                if grid.slots() != self.camera.slots {
                    problems.push(format!(
                        "camera.slots ({}) differs from the slot grid's {} x {} cells",
                        self.camera.slots, grid.rows, grid.cols
                    ));
                }
                if grid.rows == 0 || grid.cols == 0 || grid.width < grid.cols || grid.height < grid.rows {
                    problems.push("camera.slot_grid needs at least one pixel per cell".to_owned());
                }
            }
        }
        if self.camera.queue_frames == 0 {
            problems.push("camera.queue_frames must be at least 1".to_owned());
        }
        if self.local_store.retention.is_zero() {
            problems.push("local_store.retention_hours must be at least 1".to_owned());
        }
        if self.local_store.sweep_interval.is_zero() {
            problems.push("local_store.sweep_interval_secs must be at least 1".to_owned());
        }
        if self.camera.seconds_per_frame <= 0 {
            problems.push("camera.seconds_per_frame must be at least 1".to_owned());
        }
        if self.camera.frame_interval.is_zero() {
            problems.push("camera.frame_interval_ms must be at least 1".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}
