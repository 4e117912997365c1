//! Configuration parsing and validation.

use std::path::Path;
use std::time::Duration;

use backroom_models::BackendChoice;

use crate::config::{MetricPrivacySettings, NodeConfig};

// ---- configuration ----

const FULL_TOML: &str = r#"
coordinator_url = "https://127.0.0.1:7443"
tls_server_name = "coordinator.backroom"
bundle_dir = "bundle"
data_dir = "/var/lib/backroom"
lineage = "shelfnet"
backend = "cpu"
metric_window_secs = 600
poll_wait_secs = 10
max_model_bytes = 1048576

[data]
world_seed = 42
store_index = 3
train_samples = 128

[camera]
camera_id = 7
slots = 16
seconds_per_frame = 30
frame_interval_ms = 250
start_unix = 1704067200

[metrics]
rho_per_release = 0.02
rho_per_day = 0.5
suppress_below = 10
"#;

#[test]
fn a_full_file_parses_and_resolves_relative_paths() {
    let config = NodeConfig::from_toml_str(FULL_TOML, Path::new("/etc/backroom")).expect("valid");
    assert_eq!(config.coordinator_url, "https://127.0.0.1:7443");
    assert_eq!(config.tls_server_name, "coordinator.backroom");
    assert_eq!(config.bundle_dir, Path::new("/etc/backroom/bundle"));
    assert_eq!(config.data_dir, Path::new("/var/lib/backroom"));
    assert_eq!(config.backend, BackendChoice::Cpu);
    assert_eq!(config.metric_window_secs, 600);
    assert_eq!(config.poll_wait_secs, 10);
    assert_eq!(config.max_model_bytes, 1_048_576);
    assert_eq!(
        (
            config.data.world_seed,
            config.data.store_index,
            config.data.train_samples
        ),
        (42, 3, 128)
    );
    assert_eq!(config.camera.camera_id, 7);
    assert_eq!(config.camera.slots, 16);
    assert_eq!(config.camera.seconds_per_frame, 30);
    assert_eq!(config.camera.frame_interval, Duration::from_millis(250));
    assert_eq!(config.camera.start_unix, 1_704_067_200);
    assert_eq!(
        config.metrics,
        MetricPrivacySettings {
            rho_per_release: 0.02,
            rho_per_day: 0.5,
            suppress_below: 10
        }
    );
    assert!(config.validate().is_ok());
}

#[test]
fn a_minimal_file_takes_the_defaults() {
    let text = "coordinator_url = \"https://c:7443\"\nbundle_dir = \"b\"\ndata_dir = \"d\"\n\
                [data]\nworld_seed = 1\nstore_index = 0\n";
    let config = NodeConfig::from_toml_str(text, Path::new("/x")).expect("valid");
    assert_eq!(config.tls_server_name, "localhost");
    assert_eq!(config.lineage, "shelfnet");
    assert_eq!(config.backend, BackendChoice::Auto);
    assert_eq!(config.metric_window_secs, 3600);
    assert_eq!(config.poll_wait_secs, 20);
    assert_eq!(config.max_model_bytes, 256 * 1024 * 1024);
    assert_eq!(config.data_dir, Path::new("/x/d"));
    assert_eq!(config.metrics, MetricPrivacySettings::default());
    // The default day budget holds a whole day of default hourly releases.
    let defaults = MetricPrivacySettings::default();
    assert!(24.0 * defaults.rho_per_release <= defaults.rho_per_day);
}

#[test]
fn bad_privacy_settings_are_each_reported() {
    let base = "coordinator_url = \"https://c:7443\"\nbundle_dir = \"b\"\ndata_dir = \"d\"\n\
                [data]\nworld_seed = 1\nstore_index = 0\n[metrics]\n";
    for (section, needles) in [
        (
            "rho_per_release = -0.1\nrho_per_day = 0.0\nsuppress_below = -1",
            vec![
                "metrics.rho_per_release must be a number above 0",
                "metrics.rho_per_day must be a number above 0",
                "metrics.suppress_below must be between 0 and 1000000, got -1",
            ],
        ),
        (
            "rho_per_release = 0.5\nrho_per_day = 0.2",
            vec!["metrics.rho_per_release (0.5) exceeds metrics.rho_per_day (0.2)"],
        ),
        (
            "rho_per_release = nan\nrho_per_day = inf",
            vec![
                "metrics.rho_per_release must be a number above 0 and at most 100, got NaN",
                "metrics.rho_per_day must be a number above 0 and at most 100, got inf",
            ],
        ),
        ("rho_per_day = 1e9", vec!["metrics.rho_per_day must be"]),
    ] {
        let error = NodeConfig::from_toml_str(&format!("{base}{section}"), Path::new("/"))
            .expect_err(section);
        let all = error.problems.join("\n");
        for needle in &needles {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(error.problems.len(), needles.len(), "{all}");
    }
    let error = NodeConfig::from_toml_str(&format!("{base}epsilon = 1"), Path::new("/"))
        .expect_err("unknown field");
    assert!(error.problems[0].contains("epsilon"), "{error}");
}

#[test]
fn every_problem_is_reported_together() {
    let text = r#"
coordinator_url = "http://plaintext:80"
lineage = "bad lineage!"
backend = "tpu"
poll_wait_secs = 600
metric_window_secs = 0
[data]
world_seed = -1
train_samples = 0
[camera]
slots = 0
frame_interval_ms = -5
"#;
    let error = NodeConfig::from_toml_str(text, Path::new("/")).expect_err("invalid");
    let all = error.problems.join("\n");
    for needle in [
        "coordinator_url must start with https://",
        "bundle_dir is required",
        "data_dir is required",
        "lineage must be",
        "backend must be one of",
        "poll_wait_secs must be between 1 and 60",
        "metric_window_secs must be between",
        "data.world_seed must not be negative",
        "data.store_index is required",
        "data.train_samples must be between",
        "camera.slots must be between",
        "camera.frame_interval_ms must be between",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert_eq!(error.problems.len(), 12, "{all}");
    let shown = error.to_string();
    assert!(
        shown.contains("12 problem(s)") && shown.contains("\n  - backend"),
        "{shown}"
    );
}

#[test]
fn unknown_fields_are_refused_at_every_level() {
    let top = format!("{FULL_TOML}\n");
    let top = top.replace(
        "lineage = \"shelfnet\"",
        "lineage = \"shelfnet\"\nlinage = \"typo\"",
    );
    let error = NodeConfig::from_toml_str(&top, Path::new("/")).expect_err("unknown field");
    assert!(error.problems[0].contains("linage"), "{error}");
    let nested = FULL_TOML.replace("slots = 16", "slots = 16\nfps = 3");
    let error = NodeConfig::from_toml_str(&nested, Path::new("/")).expect_err("unknown field");
    assert!(error.problems[0].contains("fps"), "{error}");
}

#[test]
fn a_config_built_in_code_is_validated_too() {
    let data = crate::DataSettings {
        world_seed: 1,
        store_index: 0,
        train_samples: 16,
    };
    let mut config = NodeConfig::new("https://127.0.0.1:1", "/b", "/d", data);
    assert!(config.validate().is_ok());
    config.poll_wait_secs = 0;
    config.camera.slots = 0;
    config.metrics.rho_per_release = -1.0;
    let error = config.validate().expect_err("invalid");
    assert_eq!(error.problems.len(), 3, "{error}");
}

#[test]
fn the_example_file_is_valid() {
    let text = include_str!("../../node.example.toml");
    let config = NodeConfig::from_toml_str(text, Path::new("/srv/node")).expect("valid example");
    assert_eq!(config.bundle_dir, Path::new("/srv/node/bundle"));
    assert_eq!(config.max_model_bytes, 256 * 1024 * 1024);
}

const IMAGE_SOURCE_TOML: &str = r#"
coordinator_url = "https://127.0.0.1:7443"
bundle_dir = "bundle"
data_dir = "data"

[data]
world_seed = 1
store_index = 0

[camera]
camera_id = 4
source = "directory"
dir = "incoming"
poll_interval_ms = 100
seconds_per_frame = 10
queue_frames = 3
rescan_every_frames = 90

[camera.slot_grid]
x = 10
y = 20
width = 600
height = 200
rows = 2
cols = 6

[local_store]
key_file = "/etc/backroom/local-store.key"
retention_hours = 48
keep_image_every_secs = 0
sweep_interval_secs = 60
"#;

#[test]
fn an_image_source_with_its_slot_grid_and_the_local_store_parse() {
    use crate::config::FrameSourceSettings;
    use crate::frames::SlotGrid;
    let config =
        NodeConfig::from_toml_str(IMAGE_SOURCE_TOML, Path::new("/srv/node")).expect("valid");
    assert_eq!(
        config.camera.source,
        FrameSourceSettings::Directory {
            dir: "/srv/node/incoming".into(),
            poll_interval: Duration::from_millis(100),
        }
    );
    assert_eq!(
        config.camera.slot_grid,
        Some(SlotGrid {
            x: 10,
            y: 20,
            width: 600,
            height: 200,
            rows: 2,
            cols: 6
        })
    );
    assert_eq!(config.camera.slots, 12, "slots default to the grid's cells");
    assert_eq!(config.camera.queue_frames, 3);
    assert_eq!(config.camera.rescan_every_frames, 90);
    assert!(
        config.camera.mask_moving,
        "on by default for an image source"
    );
    assert_eq!(config.camera.settle, Duration::from_secs(30));
    assert_eq!(
        config.key_file(),
        Path::new("/etc/backroom/local-store.key")
    );
    assert_eq!(config.local_store.retention, Duration::from_secs(48 * 3600));
    assert_eq!(config.local_store.keep_image_every, None);
    assert_eq!(config.local_store.sweep_interval, Duration::from_secs(60));
    assert!(config.validate().is_ok());

    // Defaults: the key beside the data, a week's retention, an image every five minutes.
    let plain = NodeConfig::from_toml_str(FULL_TOML, Path::new("/etc/backroom")).expect("valid");
    assert_eq!(
        plain.key_file(),
        Path::new("/var/lib/backroom/local-store.key")
    );
    assert_eq!(
        plain.local_store.retention,
        Duration::from_secs(7 * 24 * 3600)
    );
    assert_eq!(
        plain.local_store.keep_image_every,
        Some(Duration::from_secs(300))
    );
    assert_eq!(plain.camera.source, FrameSourceSettings::Synthetic);
    assert!(
        !plain.camera.mask_moving,
        "off by default for the synthetic replay"
    );
}

#[test]
fn the_moving_region_mask_is_configurable_and_checked() {
    let with = |lines: &str| {
        IMAGE_SOURCE_TOML.replace(
            "rescan_every_frames = 90",
            &format!("rescan_every_frames = 90\n{lines}"),
        )
    };
    let config =
        NodeConfig::from_toml_str(&with("settle_secs = 8"), Path::new("/")).expect("valid");
    assert!(config.camera.mask_moving);
    assert_eq!(config.camera.settle, Duration::from_secs(8));
    let off =
        NodeConfig::from_toml_str(&with("mask_moving = false"), Path::new("/")).expect("valid");
    assert!(!off.camera.mask_moving);

    let problems = NodeConfig::from_toml_str(&with("settle_secs = 0"), Path::new("/"))
        .expect_err("must be refused")
        .problems;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("camera.settle_secs must be between 1")),
        "{problems:?}"
    );
    let problems = NodeConfig::from_toml_str(
        &with("mask_moving = false\nsettle_secs = 8"),
        Path::new("/"),
    )
    .expect_err("must be refused")
    .problems;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("camera.settle_secs applies when camera.mask_moving is on")),
        "{problems:?}"
    );
}

#[test]
fn frame_source_mistakes_are_all_reported() {
    let text = IMAGE_SOURCE_TOML
        .replace(
            "source = \"directory\"",
            "source = \"sequence\"\nfps = 5.0\nframe_interval_ms = 100",
        )
        .replace("rows = 2", "rows = 0")
        .replace("retention_hours = 48", "retention_hours = 0");
    let problems = NodeConfig::from_toml_str(&text, Path::new("/"))
        .expect_err("must be refused")
        .problems;
    let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
    assert!(
        has("camera.fps and camera.frame_interval_ms are alternatives"),
        "{problems:?}"
    );
    assert!(
        has("camera.poll_interval_ms applies to source = \"directory\" only"),
        "{problems:?}"
    );
    assert!(
        has("camera.slot_grid.rows must be between 1"),
        "{problems:?}"
    );
    assert!(
        has("local_store.retention_hours must be between 1"),
        "{problems:?}"
    );

    let no_grid = IMAGE_SOURCE_TOML.replace("[camera.slot_grid]", "[unused]");
    let problems = NodeConfig::from_toml_str(&no_grid, Path::new("/"))
        .expect_err("must be refused")
        .problems;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("unknown field") || p.contains("unused")),
        "{problems:?}"
    );

    let mut config = NodeConfig::from_toml_str(IMAGE_SOURCE_TOML, Path::new("/")).expect("valid");
    config.camera.slot_grid = None;
    let problems = config.validate().expect_err("must be refused").problems;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("camera.slot_grid is required for source = \"directory\"")),
        "{problems:?}"
    );

    let unknown = IMAGE_SOURCE_TOML.replace("source = \"directory\"", "source = \"rtsp\"");
    let problems = NodeConfig::from_toml_str(&unknown, Path::new("/"))
        .expect_err("must be refused")
        .problems;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("camera.source must be one of")),
        "{problems:?}"
    );
}

#[test]
fn the_example_configuration_parses() {
    let text = include_str!("../../../deploy/examples/node.toml");
    let config = NodeConfig::from_toml_str(text, Path::new("/srv/backroom/deploy/examples"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.camera.source,
        crate::config::FrameSourceSettings::Synthetic
    );
    assert_eq!(
        config.local_store.retention,
        Duration::from_secs(168 * 3600)
    );
}
