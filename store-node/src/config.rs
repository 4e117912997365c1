//! Node configuration: a raw TOML layer that mirrors the file, and a validated [`NodeConfig`].
//!
//! Every setting is read and checked before anything is reported, so an operator sees all the
//! problems of a file at once ([`ConfigError`] lists each one).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backroom_models::BackendChoice;
use serde::Deserialize;

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

/// The file as written. Numbers are wide signed integers so that a negative or oversized value
/// gets a precise message from validation instead of a type error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNodeConfig {
    pub coordinator_url: Option<String>,
    pub tls_server_name: Option<String>,
    pub bundle_dir: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub lineage: Option<String>,
    pub backend: Option<String>,
    pub metric_window_secs: Option<i64>,
    pub poll_wait_secs: Option<i64>,
    pub max_model_bytes: Option<i64>,
    pub data: Option<RawDataConfig>,
    pub camera: Option<RawCameraConfig>,
}

/// `[data]`: the node's local labelled samples.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDataConfig {
    pub world_seed: Option<i64>,
    pub store_index: Option<i64>,
    pub train_samples: Option<i64>,
}

/// `[camera]`: the simulated camera replay.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCameraConfig {
    pub camera_id: Option<i64>,
    pub slots: Option<i64>,
    pub seconds_per_frame: Option<i64>,
    pub frame_interval_ms: Option<i64>,
    pub start_unix: Option<i64>,
}

/// Where the node's local training data comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct DataSettings {
    pub world_seed: u64,
    pub store_index: u32,
    pub train_samples: usize,
}

/// The simulated camera.
#[derive(Clone, Debug, PartialEq)]
pub struct CameraSettings {
    pub camera_id: u32,
    pub slots: usize,
    /// Simulated seconds between two frames (advances `captured_unix`).
    pub seconds_per_frame: i64,
    /// Real time between two frames.
    pub frame_interval: Duration,
    /// `captured_unix` of the first frame.
    pub start_unix: i64,
}

impl Default for CameraSettings {
    fn default() -> Self {
        Self {
            camera_id: 0,
            slots: 12,
            seconds_per_frame: 60,
            frame_interval: Duration::from_millis(1000),
            // 2024-01-01T00:00:00Z, aligned to the hour.
            start_unix: 1_704_067_200,
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
    /// Holds `ca.pem`, `cert.pem`, `key.pem` and `model-signing.pub.pem`.
    pub bundle_dir: PathBuf,
    /// Holds `node.db` and `model/`.
    pub data_dir: PathBuf,
    pub lineage: String,
    pub backend: BackendChoice,
    pub data: DataSettings,
    pub camera: CameraSettings,
    pub metric_window_secs: u32,
    pub poll_wait_secs: u32,
    pub max_model_bytes: u64,
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
            poll_wait_secs: DEFAULT_POLL_WAIT_SECS,
            max_model_bytes: DEFAULT_MAX_MODEL_BYTES,
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

    /// Checks a configuration built in code (the same rules as a file).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        check_url(&self.coordinator_url, &mut problems);
        check_non_empty("tls_server_name", &self.tls_server_name, &mut problems);
        check_lineage(&self.lineage, &mut problems);
        if self.metric_window_secs == 0 {
            problems.push("metric_window_secs must be at least 1".to_owned());
        }
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

impl RawNodeConfig {
    /// Turns the raw layer into a [`NodeConfig`], collecting every problem.
    pub fn validate(self, base_dir: &Path) -> Result<NodeConfig, ConfigError> {
        let mut problems = Vec::new();
        let p = &mut problems;

        let coordinator_url = required("coordinator_url", self.coordinator_url, p);
        if let Some(url) = &coordinator_url {
            check_url(url, p);
        }
        let tls_server_name = self
            .tls_server_name
            .unwrap_or_else(|| DEFAULT_TLS_SERVER_NAME.to_owned());
        check_non_empty("tls_server_name", &tls_server_name, p);
        let bundle_dir = required_dir("bundle_dir", self.bundle_dir, base_dir, p);
        let data_dir = required_dir("data_dir", self.data_dir, base_dir, p);
        let lineage = self.lineage.unwrap_or_else(|| DEFAULT_LINEAGE.to_owned());
        check_lineage(&lineage, p);
        let backend = match self.backend.as_deref() {
            None => Some(BackendChoice::Auto),
            Some(text) => match text.parse::<BackendChoice>() {
                Ok(choice) => Some(choice),
                Err(_) => {
                    p.push(format!(
                        "backend must be one of \"auto\", \"wgpu\", \"cpu\", got {text:?}"
                    ));
                    None
                }
            },
        };
        let window = DEFAULT_METRIC_WINDOW_SECS.into();
        let metric_window_secs = ranged(
            "metric_window_secs",
            self.metric_window_secs,
            window,
            1,
            7 * 86_400,
            p,
        );
        let poll = DEFAULT_POLL_WAIT_SECS.into();
        let max_poll = MAX_POLL_WAIT_SECS.into();
        let poll_wait_secs = ranged("poll_wait_secs", self.poll_wait_secs, poll, 1, max_poll, p);
        let max_model = i64::try_from(DEFAULT_MAX_MODEL_BYTES).unwrap_or(i64::MAX);
        let max_model_bytes = ranged(
            "max_model_bytes",
            self.max_model_bytes,
            max_model,
            1,
            i64::MAX,
            p,
        );

        let data = validate_data(self.data, p);
        let camera = validate_camera(self.camera.unwrap_or_default(), p);

        match (coordinator_url, bundle_dir, data_dir, backend, data, camera) {
            (
                Some(coordinator_url),
                Some(bundle_dir),
                Some(data_dir),
                Some(backend),
                Some(data),
                Some(camera),
            ) if problems.is_empty() => Ok(NodeConfig {
                coordinator_url,
                tls_server_name,
                bundle_dir,
                data_dir,
                lineage,
                backend,
                data,
                camera,
                metric_window_secs: u32::try_from(metric_window_secs).unwrap_or(0),
                poll_wait_secs: u32::try_from(poll_wait_secs).unwrap_or(0),
                max_model_bytes: u64::try_from(max_model_bytes).unwrap_or(0),
            }),
            _ => Err(ConfigError { problems }),
        }
    }
}

fn validate_data(raw: Option<RawDataConfig>, p: &mut Vec<String>) -> Option<DataSettings> {
    let Some(raw) = raw else {
        p.push("[data] section is missing (needs world_seed and store_index)".to_owned());
        return None;
    };
    let world_seed = required("data.world_seed", raw.world_seed, p);
    if world_seed.is_some_and(|s| s < 0) {
        p.push("data.world_seed must not be negative".to_owned());
    }
    let store_index = required("data.store_index", raw.store_index, p);
    let store_index =
        store_index.and_then(|v| in_range("data.store_index", v, 0, u32::MAX.into(), p));
    let default_samples = i64::try_from(DEFAULT_TRAIN_SAMPLES).unwrap_or(256);
    let samples = ranged(
        "data.train_samples",
        raw.train_samples,
        default_samples,
        1,
        1 << 20,
        p,
    );
    Some(DataSettings {
        world_seed: u64::try_from(world_seed?).ok()?,
        store_index: u32::try_from(store_index?).ok()?,
        train_samples: usize::try_from(samples).ok()?,
    })
}

fn validate_camera(raw: RawCameraConfig, p: &mut Vec<String>) -> Option<CameraSettings> {
    let d = CameraSettings::default();
    let camera_id = ranged(
        "camera.camera_id",
        raw.camera_id,
        d.camera_id.into(),
        0,
        u32::MAX.into(),
        p,
    );
    let slots = ranged("camera.slots", raw.slots, 12, 1, 4096, p);
    let spf = ranged(
        "camera.seconds_per_frame",
        raw.seconds_per_frame,
        d.seconds_per_frame,
        1,
        86_400,
        p,
    );
    let interval = ranged(
        "camera.frame_interval_ms",
        raw.frame_interval_ms,
        1000,
        1,
        3_600_000,
        p,
    );
    let start_unix = raw.start_unix.unwrap_or(d.start_unix);
    Some(CameraSettings {
        camera_id: u32::try_from(camera_id).ok()?,
        slots: usize::try_from(slots).ok()?,
        seconds_per_frame: spf,
        frame_interval: Duration::from_millis(u64::try_from(interval).ok()?),
        start_unix,
    })
}

fn required<T>(name: &str, value: Option<T>, problems: &mut Vec<String>) -> Option<T> {
    if value.is_none() {
        problems.push(format!("{name} is required"));
    }
    value
}

/// `value` (or `default` when absent) if it lies in `[min, max]`; otherwise records a problem and
/// returns `default` so later checks can go on.
fn ranged(
    name: &str,
    value: Option<i64>,
    default: i64,
    min: i64,
    max: i64,
    p: &mut Vec<String>,
) -> i64 {
    match value {
        None => default,
        Some(v) => in_range(name, v, min, max, p).unwrap_or(default),
    }
}

fn in_range(name: &str, value: i64, min: i64, max: i64, p: &mut Vec<String>) -> Option<i64> {
    if (min..=max).contains(&value) {
        Some(value)
    } else {
        p.push(format!(
            "{name} must be between {min} and {max}, got {value}"
        ));
        None
    }
}

fn check_url(url: &str, problems: &mut Vec<String>) {
    if !url.starts_with("https://") {
        problems.push(format!(
            "coordinator_url must start with https:// (no plaintext), got {url:?}"
        ));
    } else if tonic::transport::Endpoint::from_shared(url.to_owned()).is_err() {
        problems.push(format!("coordinator_url is not a valid URL: {url:?}"));
    }
}

fn check_non_empty(name: &str, value: &str, problems: &mut Vec<String>) {
    if value.trim().is_empty() {
        problems.push(format!("{name} must not be empty"));
    }
}

fn check_lineage(lineage: &str, problems: &mut Vec<String>) {
    let valid = lineage
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if lineage.is_empty() || !valid {
        problems.push(format!(
            "lineage must be non-empty and use only letters, digits, '-' and '_', got {lineage:?}"
        ));
    }
}

fn required_dir(
    name: &str,
    value: Option<PathBuf>,
    base_dir: &Path,
    problems: &mut Vec<String>,
) -> Option<PathBuf> {
    let path = required(name, value, problems)?;
    if path.as_os_str().is_empty() {
        problems.push(format!("{name} must not be empty"));
        return None;
    }
    Some(resolve(base_dir, path))
}

fn resolve(base_dir: &Path, path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        base_dir.join(path)
    }
}
