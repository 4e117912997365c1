//! The raw layer: the TOML file as written (unknown fields refused), and its validation into
//! [`NodeConfig`], collecting every problem.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backroom_models::BackendChoice;
use serde::Deserialize;

use super::{
    CameraSettings, ConfigError, DEFAULT_KEEP_IMAGE_EVERY_SECS, DEFAULT_LINEAGE,
    DEFAULT_MAX_MODEL_BYTES, DEFAULT_METRIC_WINDOW_SECS, DEFAULT_POLL_INTERVAL_MS,
    DEFAULT_POLL_WAIT_SECS, DEFAULT_QUEUE_FRAMES, DEFAULT_RESCAN_EVERY_FRAMES,
    DEFAULT_RETENTION_HOURS, DEFAULT_SETTLE_SECS, DEFAULT_SWEEP_INTERVAL_SECS,
    DEFAULT_TLS_SERVER_NAME, DEFAULT_TRAIN_SAMPLES, DataSettings, FrameSourceSettings,
    LocalStoreSettings, MAX_POLL_WAIT_SECS, MetricPrivacySettings, NodeConfig, SlotGrid,
};

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
    /// `host:port` for Prometheus `GET /metrics` (plain HTTP; off when absent).
    pub telemetry_listen: Option<String>,
    pub data: Option<RawDataConfig>,
    pub camera: Option<RawCameraConfig>,
    pub metrics: Option<RawMetricsConfig>,
    pub local_store: Option<RawLocalStoreConfig>,
}

/// `[local_store]`: the encrypted local store and its retention.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLocalStoreConfig {
    pub key_file: Option<PathBuf>,
    pub retention_hours: Option<i64>,
    pub keep_image_every_secs: Option<i64>,
    pub sweep_interval_secs: Option<i64>,
}

/// `[camera.slot_grid]`: the shelf slots of an image source, in pixels.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlotGrid {
    pub x: Option<i64>,
    pub y: Option<i64>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub rows: Option<i64>,
    pub cols: Option<i64>,
}

/// `[metrics]`: differential privacy of the shelf-metric releases.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetricsConfig {
    pub rho_per_release: Option<f64>,
    pub rho_per_day: Option<f64>,
    pub suppress_below: Option<i64>,
}

/// `[data]`: the node's local labelled samples.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDataConfig {
    pub world_seed: Option<i64>,
    pub store_index: Option<i64>,
    pub train_samples: Option<i64>,
}

/// `[camera]`: the camera, its frame source and its shelf slots.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCameraConfig {
    pub camera_id: Option<i64>,
    /// `"synthetic"` (default), `"directory"` or `"sequence"`.
    pub source: Option<String>,
    pub dir: Option<PathBuf>,
    pub poll_interval_ms: Option<i64>,
    pub repeat: Option<bool>,
    pub slots: Option<i64>,
    pub slot_grid: Option<RawSlotGrid>,
    pub seconds_per_frame: Option<i64>,
    pub frame_interval_ms: Option<i64>,
    pub fps: Option<f64>,
    pub start_unix: Option<i64>,
    pub queue_frames: Option<i64>,
    pub rescan_every_frames: Option<i64>,
    pub mask_moving: Option<bool>,
    pub settle_secs: Option<i64>,
}

/// Where the node's local training data comes from.
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

        let telemetry_listen = match self.telemetry_listen.as_deref() {
            None => None,
            Some(text) => match text.parse::<std::net::SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(e) => {
                    p.push(format!("telemetry_listen {text:?} is not an address: {e}"));
                    None
                }
            },
        };
        let data = validate_data(self.data, p);
        let camera = validate_camera(self.camera.unwrap_or_default(), base_dir, p);
        let metrics = validate_metrics(self.metrics.unwrap_or_default(), p);
        let local_store = validate_local_store(self.local_store.unwrap_or_default(), base_dir, p);

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
                metrics,
                local_store,
                poll_wait_secs: u32::try_from(poll_wait_secs).unwrap_or(0),
                max_model_bytes: u64::try_from(max_model_bytes).unwrap_or(0),
                telemetry_listen,
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

fn validate_camera(
    raw: RawCameraConfig,
    base_dir: &Path,
    p: &mut Vec<String>,
) -> Option<CameraSettings> {
    let d = CameraSettings::default();
    let camera_id = ranged(
        "camera.camera_id",
        raw.camera_id,
        d.camera_id.into(),
        0,
        u32::MAX.into(),
        p,
    );
    let spf = ranged(
        "camera.seconds_per_frame",
        raw.seconds_per_frame,
        d.seconds_per_frame,
        1,
        86_400,
        p,
    );
    let interval = match (raw.fps, raw.frame_interval_ms) {
        (Some(_), Some(_)) => {
            p.push("camera.fps and camera.frame_interval_ms are alternatives: give one".to_owned());
            Duration::from_millis(1000)
        }
        (Some(fps), None) if fps.is_finite() && (1.0 / 3600.0..=1000.0).contains(&fps) => {
            Duration::from_secs_f64(1.0 / fps)
        }
        (Some(fps), None) => {
            p.push(format!(
                "camera.fps must be between 1/3600 and 1000, got {fps}"
            ));
            Duration::from_millis(1000)
        }
        (None, ms) => {
            let ms = ranged("camera.frame_interval_ms", ms, 1000, 1, 3_600_000, p);
            Duration::from_millis(u64::try_from(ms).unwrap_or(1000))
        }
    };
    let start_unix = raw.start_unix.unwrap_or(d.start_unix);
    let queue = i64::try_from(DEFAULT_QUEUE_FRAMES).unwrap_or(2);
    let queue_frames = ranged("camera.queue_frames", raw.queue_frames, queue, 1, 1024, p);
    let rescan = ranged(
        "camera.rescan_every_frames",
        raw.rescan_every_frames,
        i64::from(DEFAULT_RESCAN_EVERY_FRAMES),
        1,
        1_000_000,
        p,
    );
    let dir = raw.dir.map(|dir| resolve(base_dir, dir));
    let source_name = raw.source.as_deref().unwrap_or("synthetic");
    let source = match source_name {
        "synthetic" => {
            if dir.is_some() {
                p.push("camera.dir applies to source = \"directory\" or \"sequence\"".to_owned());
            }
            Some(FrameSourceSettings::Synthetic)
        }
        "directory" => {
            let default_poll = i64::try_from(DEFAULT_POLL_INTERVAL_MS).unwrap_or(200);
            let poll = ranged(
                "camera.poll_interval_ms",
                raw.poll_interval_ms,
                default_poll,
                1,
                60_000,
                p,
            );
            required("camera.dir", dir, p).map(|dir| FrameSourceSettings::Directory {
                dir,
                poll_interval: Duration::from_millis(u64::try_from(poll).unwrap_or(200)),
            })
        }
        "sequence" => required("camera.dir", dir, p).map(|dir| FrameSourceSettings::Sequence {
            dir,
            repeat: raw.repeat.unwrap_or(false),
        }),
        other => {
            p.push(format!(
                "camera.source must be one of \"synthetic\", \"directory\", \"sequence\", got {other:?}"
            ));
            None
        }
    };
    if raw.repeat.is_some() && source_name != "sequence" {
        p.push("camera.repeat applies to source = \"sequence\" only".to_owned());
    }
    if raw.poll_interval_ms.is_some() && source_name != "directory" {
        p.push("camera.poll_interval_ms applies to source = \"directory\" only".to_owned());
    }
    let settle_secs = ranged(
        "camera.settle_secs",
        raw.settle_secs,
        i64::try_from(DEFAULT_SETTLE_SECS).unwrap_or(30),
        1,
        86_400,
        p,
    );
    let mask_moving = raw.mask_moving.unwrap_or(source_name != "synthetic");
    if raw.settle_secs.is_some() && !mask_moving {
        p.push("camera.settle_secs applies when camera.mask_moving is on".to_owned());
    }
    let slot_grid = raw.slot_grid.and_then(|grid| validate_grid(grid, p));
    let default_slots = slot_grid.map_or(12, |g| i64::try_from(g.slots()).unwrap_or(0));
    let slots = ranged("camera.slots", raw.slots, default_slots, 1, 4096, p);
    Some(CameraSettings {
        camera_id: u32::try_from(camera_id).ok()?,
        source: source?,
        slots: usize::try_from(slots).ok()?,
        slot_grid,
        seconds_per_frame: spf,
        frame_interval: interval,
        start_unix,
        queue_frames: usize::try_from(queue_frames).ok()?,
        rescan_every_frames: u32::try_from(rescan).ok()?,
        mask_moving,
        settle: Duration::from_secs(u64::try_from(settle_secs).ok()?),
    })
}

fn validate_grid(raw: RawSlotGrid, p: &mut Vec<String>) -> Option<SlotGrid> {
    let max = i64::from(u32::MAX / 2);
    let mut field = |name: &str, value: Option<i64>, min: i64| {
        let name = format!("camera.slot_grid.{name}");
        required(&name, value, p).and_then(|v| in_range(&name, v, min, max, p))
    };
    let grid = (
        field("x", raw.x, 0),
        field("y", raw.y, 0),
        field("width", raw.width, 1),
        field("height", raw.height, 1),
        field("rows", raw.rows, 1),
        field("cols", raw.cols, 1),
    );
    let (Some(x), Some(y), Some(width), Some(height), Some(rows), Some(cols)) = grid else {
        return None;
    };
    if rows * cols > 4096 {
        p.push(format!(
            "camera.slot_grid has {} cells; at most 4096",
            rows * cols
        ));
        return None;
    }
    let as_u32 = |v: i64| u32::try_from(v).unwrap_or(0);
    Some(SlotGrid {
        x: as_u32(x),
        y: as_u32(y),
        width: as_u32(width),
        height: as_u32(height),
        rows: as_u32(rows),
        cols: as_u32(cols),
    })
}

fn validate_local_store(
    raw: RawLocalStoreConfig,
    base_dir: &Path,
    p: &mut Vec<String>,
) -> LocalStoreSettings {
    let retention = i64::try_from(DEFAULT_RETENTION_HOURS).unwrap_or(168);
    let retention_hours = ranged(
        "local_store.retention_hours",
        raw.retention_hours,
        retention,
        1,
        24 * 3650,
        p,
    );
    let keep = i64::try_from(DEFAULT_KEEP_IMAGE_EVERY_SECS).unwrap_or(300);
    let keep_every = ranged(
        "local_store.keep_image_every_secs",
        raw.keep_image_every_secs,
        keep,
        0,
        86_400 * 365,
        p,
    );
    let sweep = i64::try_from(DEFAULT_SWEEP_INTERVAL_SECS).unwrap_or(600);
    let sweep_secs = ranged(
        "local_store.sweep_interval_secs",
        raw.sweep_interval_secs,
        sweep,
        1,
        86_400,
        p,
    );
    let secs = |v: i64| Duration::from_secs(u64::try_from(v).unwrap_or(0));
    LocalStoreSettings {
        key_file: raw.key_file.map(|f| resolve(base_dir, f)),
        retention: secs(retention_hours.saturating_mul(3600)),
        keep_image_every: (keep_every > 0).then(|| secs(keep_every)),
        sweep_interval: secs(sweep_secs),
    }
}

fn validate_metrics(raw: RawMetricsConfig, p: &mut Vec<String>) -> MetricPrivacySettings {
    let d = MetricPrivacySettings::default();
    let default_suppress = i64::try_from(d.suppress_below).unwrap_or(0);
    let suppress_below = ranged(
        "metrics.suppress_below",
        raw.suppress_below,
        default_suppress,
        0,
        1_000_000,
        p,
    );
    let settings = MetricPrivacySettings {
        rho_per_release: raw.rho_per_release.unwrap_or(d.rho_per_release),
        rho_per_day: raw.rho_per_day.unwrap_or(d.rho_per_day),
        suppress_below: u64::try_from(suppress_below).unwrap_or(d.suppress_below),
    };
    settings.check(p);
    settings
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

pub(super) fn check_url(url: &str, problems: &mut Vec<String>) {
    if !url.starts_with("https://") {
        problems.push(format!(
            "coordinator_url must start with https:// (no plaintext), got {url:?}"
        ));
    } else if tonic::transport::Endpoint::from_shared(url.to_owned()).is_err() {
        problems.push(format!("coordinator_url is not a valid URL: {url:?}"));
    }
}

pub(super) fn check_non_empty(name: &str, value: &str, problems: &mut Vec<String>) {
    if value.trim().is_empty() {
        problems.push(format!("{name} must not be empty"));
    }
}

pub(super) fn check_lineage(lineage: &str, problems: &mut Vec<String>) {
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
