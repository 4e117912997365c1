//! Coordinator configuration: a raw TOML layer (unknown fields refused) and a validated layer.
//! Every problem is collected and reported together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use backroom_models::ShelfNetConfig;

use crate::ledger::Budget;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    blob_store: Option<String>,
    blob_store_options: Option<std::collections::BTreeMap<String, String>>,
    server_names: Option<Vec<String>>,
    lineage: Option<String>,
    init_seed: Option<u64>,
    heartbeat_interval_secs: Option<u32>,
    model_expiry_secs: Option<u64>,
    max_update_bytes: Option<u64>,
    sampling_timeout_secs: Option<u64>,
    overselect: Option<f32>,
    online_window_secs: Option<u64>,
    max_export_bytes: Option<u64>,
    publish_rounds_to: Option<String>,
    round_lease_secs: Option<u64>,
    privacy: Option<RawPrivacy>,
    model: Option<RawModel>,
    /// Store groups for metric queries: `north = ["store-1", "store-2"]`.
    store_groups: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

/// The lineage's network. Nodes only take shelf crops (3×64×64) and answer stocked/empty, so
/// only the widths are configurable.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawModel {
    conv_channels: Option<Vec<usize>>,
    hidden: Option<usize>,
    kernel_size: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPrivacy {
    epsilon_max: Option<f64>,
    delta: Option<f64>,
    /// Must be `true` to run the lineage without an ε budget (no `epsilon_max`).
    unlimited: Option<bool>,
}

/// Validated coordinator settings.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Address of the TLS listener (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://USER@HOST:PORT/DATABASE`; defaults to
    /// `<data_dir>/coordinator.db` (embedded SQLite).
    pub database_url: String,
    /// Where weights and update blobs go: `None` is `<data_dir>/blobs`; else a directory,
    /// `file:///DIR` or `s3://BUCKET/PREFIX` ([`crate::blobs`]).
    pub blob_store: Option<String>,
    /// S3 settings beyond the `AWS_*` environment (`endpoint`, `region`, `allow_http`, …).
    pub blob_store_options: Vec<(String, String)>,
    /// Extra DNS names / IPs for the server certificate.
    pub server_names: Vec<String>,
    /// The model lineage this coordinator trains (created at first start).
    pub lineage: String,
    pub init_seed: u64,
    pub heartbeat_interval_secs: u32,
    pub model_expiry_secs: u64,
    pub max_update_bytes: u64,
    pub sampling_timeout: Duration,
    pub overselect: f32,
    pub online_window: Duration,
    /// The lineage's privacy budget (ε_max, δ), written to the database at every start.
    pub privacy_budget: Budget,
    /// Largest sealed frame export a node may deliver for a frame request.
    pub max_export_bytes: u64,
    /// How often expired frame requests are closed and their exports deleted.
    pub frame_request_sweep: Duration,
    /// `true` (`publish_rounds_to = "stable"`, the default): a round's new version goes to every
    /// store at once. `false` (`"none"`): it waits for `backroom models promote`.
    pub publish_rounds_to_stable: bool,
    /// How long a replica's lease on a round lasts unless renewed: after a replica dies, another
    /// sharing the database resumes its rounds within about this long.
    pub round_lease: Duration,
    /// Store id → the group operations see it in (`[store_groups]`; metric queries by group).
    pub store_groups: std::collections::BTreeMap<String, String>,
    /// The network of the lineage's first version (`[model]`; default: the standard shelf net,
    /// [`ShelfNetConfig::new`]). Fixed for a lineage once published: a coordinator whose
    /// configuration disagrees with the lineage's versions refuses to start.
    pub model: ShelfNetConfig,
}

/// Default budget: ε ≤ 10 at δ = 1e-5 per lineage.
pub const DEFAULT_BUDGET: Budget = Budget {
    epsilon_max: Some(10.0),
    delta: 1e-5,
};

#[derive(Debug, thiserror::Error)]
#[error("invalid coordinator configuration:\n  - {}", problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl CoordinatorConfig {
    /// Defaults for a data directory: loopback listener on a free port, embedded SQLite.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: default_database_url(&data_dir),
            blob_store: None,
            blob_store_options: Vec::new(),
            data_dir,
            server_names: Vec::new(),
            lineage: "shelfnet".into(),
            init_seed: 42,
            heartbeat_interval_secs: 10,
            model_expiry_secs: 30 * 24 * 3600,
            max_update_bytes: 64 << 20,
            sampling_timeout: Duration::from_secs(120),
            overselect: 1.0,
            online_window: Duration::from_secs(60),
            privacy_budget: DEFAULT_BUDGET,
            max_export_bytes: 256 << 20,
            frame_request_sweep: Duration::from_secs(10),
            publish_rounds_to_stable: true,
            round_lease: Duration::from_secs(10),
            store_groups: std::collections::BTreeMap::new(),
            model: ShelfNetConfig::new(),
        }
    }

    /// Parses a TOML file's text; relative paths are taken from `base_dir`.
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            problems: vec![e.to_string()],
        })?;
        let mut problems = Vec::new();
        let data_dir = match raw.data_dir {
            Some(dir) if dir.is_absolute() => dir,
            Some(dir) => base_dir.join(dir),
            None => {
                problems.push("data_dir is required".to_owned());
                PathBuf::new()
            }
        };
        let mut config = Self::for_data_dir(&data_dir);
        if let Some(listen) = raw.listen {
            match listen.parse() {
                Ok(addr) => config.listen = addr,
                Err(e) => problems.push(format!("listen {listen:?} is not an address: {e}")),
            }
        }
        if let Some(url) = raw.database_url {
            match crate::store::Backend::of_url(&url) {
                Ok(_) => config.database_url = url,
                Err(e) => problems.push(e.to_string()),
            }
        }
        if let Some(secs) = raw.round_lease_secs {
            if !(1..=3600).contains(&secs) {
                problems.push(format!("round_lease_secs must be in 1..=3600, got {secs}"));
            }
            config.round_lease = Duration::from_secs(secs);
        }
        if let Some(store) = raw.blob_store {
            let known = ["s3://", "file://"];
            if store.contains("://") && !known.iter().any(|k| store.starts_with(k)) {
                problems.push(format!(
                    "blob_store {store:?}: use a directory, file:///DIR or s3://BUCKET/PREFIX"
                ));
            }
            // A relative directory is taken from the configuration file's directory.
            config.blob_store = Some(
                if store.contains("://") || Path::new(&store).is_absolute() {
                    store
                } else {
                    base_dir.join(store).display().to_string()
                },
            );
        }
        if let Some(options) = raw.blob_store_options {
            if !config
                .blob_store
                .as_deref()
                .is_some_and(|s| s.starts_with("s3://"))
            {
                problems.push("blob_store_options need an s3:// blob_store".to_owned());
            }
            config.blob_store_options = options.into_iter().collect();
        }
        if let Some(names) = raw.server_names {
            config.server_names = names;
        }
        if let Some(lineage) = raw.lineage {
            if crate::identity::validate_name(&lineage).is_err() {
                problems.push(format!(
                    "lineage {lineage:?} must use a-z, 0-9, '-', '_', '.'"
                ));
            }
            config.lineage = lineage;
        }
        if let Some(seed) = raw.init_seed {
            config.init_seed = seed;
        }
        if let Some(secs) = raw.heartbeat_interval_secs {
            if !(1..=3600).contains(&secs) {
                problems.push(format!(
                    "heartbeat_interval_secs must be in 1..=3600, got {secs}"
                ));
            }
            config.heartbeat_interval_secs = secs;
        }
        if let Some(secs) = raw.model_expiry_secs {
            if secs < 60 {
                problems.push(format!("model_expiry_secs must be at least 60, got {secs}"));
            }
            config.model_expiry_secs = secs;
        }
        if let Some(bytes) = raw.max_update_bytes {
            if bytes < 1024 {
                problems.push(format!(
                    "max_update_bytes must be at least 1024, got {bytes}"
                ));
            }
            config.max_update_bytes = bytes;
        }
        if let Some(secs) = raw.sampling_timeout_secs {
            if secs == 0 {
                problems.push("sampling_timeout_secs must be > 0".to_owned());
            }
            config.sampling_timeout = Duration::from_secs(secs);
        }
        if let Some(factor) = raw.overselect {
            if !(1.0..=4.0).contains(&factor) {
                problems.push(format!("overselect must be in 1.0..=4.0, got {factor}"));
            }
            config.overselect = factor;
        }
        if let Some(secs) = raw.online_window_secs {
            if secs == 0 {
                problems.push("online_window_secs must be > 0".to_owned());
            }
            config.online_window = Duration::from_secs(secs);
        }
        if let Some(bytes) = raw.max_export_bytes {
            if bytes == 0 {
                problems.push("max_export_bytes must be > 0".to_owned());
            }
            config.max_export_bytes = bytes;
        }
        match raw.publish_rounds_to.as_deref() {
            None | Some("stable") => {}
            Some("none") => config.publish_rounds_to_stable = false,
            Some(other) => problems.push(format!(
                "publish_rounds_to must be \"stable\" or \"none\", got {other:?}"
            )),
        }
        if let Some(privacy) = raw.privacy {
            let unlimited = privacy.unlimited.unwrap_or(false);
            if unlimited && privacy.epsilon_max.is_some() {
                problems
                    .push("privacy: set either epsilon_max or unlimited = true, not both".into());
            }
            let budget = Budget {
                epsilon_max: if unlimited {
                    None
                } else {
                    privacy.epsilon_max.or(DEFAULT_BUDGET.epsilon_max)
                },
                delta: privacy.delta.unwrap_or(DEFAULT_BUDGET.delta),
            };
            if let Err(problem) = budget.validate() {
                problems.push(format!("privacy: {problem}"));
            }
            config.privacy_budget = budget;
        }
        if let Some(model) = raw.model {
            let mut net = ShelfNetConfig::new();
            if let Some(channels) = model.conv_channels {
                net = net.with_conv_channels(channels);
            }
            if let Some(hidden) = model.hidden {
                net = net.with_hidden(hidden);
            }
            if let Some(kernel) = model.kernel_size {
                net = net.with_kernel_size(kernel);
            }
            if let Err(problem) = net.validate() {
                problems.push(format!("model: {problem}"));
            }
            config.model = net;
        }
        for (group, stores) in raw.store_groups.unwrap_or_default() {
            if crate::identity::validate_name(&group).is_err() {
                problems.push(format!(
                    "store_groups: group {group:?} must use a-z, 0-9, '-', '_', '.'"
                ));
            }
            for store in stores {
                if let Some(other) = config.store_groups.get(&store) {
                    problems.push(format!(
                        "store_groups: store {store:?} is in both {other:?} and {group:?}"
                    ));
                }
                config.store_groups.insert(store, group.clone());
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.data_dir.join("pki")
    }
}

/// The embedded database in the data directory. The path is made absolute first: in a URL a
/// relative path's first component would be read as the host (`sqlite://deploy/../x.db`).
fn default_database_url(data_dir: &Path) -> String {
    let file = data_dir.join("coordinator.db");
    let file = std::path::absolute(&file).unwrap_or(file);
    format!("sqlite://{}?mode=rwc", file.display())
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn parses_and_resolves_relative_paths() {
        let config = CoordinatorConfig::from_toml_str(
            "listen = \"127.0.0.1:7443\"\ndata_dir = \"data\"\n",
            Path::new("/etc/backroom"),
        );
        let config = config.map_err(|e| e.to_string());
        assert_eq!(
            config.as_ref().map(|c| c.data_dir.clone()),
            Ok(PathBuf::from("/etc/backroom/data"))
        );
        assert_eq!(config.map(|c| c.publish_rounds_to_stable), Ok(true));
        let held = CoordinatorConfig::from_toml_str(
            "data_dir = \"d\"\npublish_rounds_to = \"none\"\n",
            Path::new("/"),
        );
        assert_eq!(held.map(|c| c.publish_rounds_to_stable).ok(), Some(false));
    }

    #[test]
    fn the_blob_store_is_a_directory_or_a_bucket() {
        let parse = |text: &str| CoordinatorConfig::from_toml_str(text, Path::new("/etc/backroom"));
        let default = parse("data_dir = \"d\"\n").map_err(|e| e.to_string());
        assert_eq!(default.map(|c| c.blob_store), Ok(None));
        let relative = parse("data_dir = \"d\"\nblob_store = \"shared/blobs\"\n");
        assert_eq!(
            relative.ok().and_then(|c| c.blob_store),
            Some("/etc/backroom/shared/blobs".to_owned())
        );
        let bucket = parse(
            "data_dir = \"d\"\nblob_store = \"s3://models/backroom\"\n\
             [blob_store_options]\nendpoint = \"http://minio:9000\"\nallow_http = \"true\"\n",
        )
        .map_err(|e| e.to_string());
        let bucket = bucket.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bucket.blob_store.as_deref(), Some("s3://models/backroom"));
        assert_eq!(
            bucket.blob_store_options,
            [
                ("allow_http".to_owned(), "true".to_owned()),
                ("endpoint".to_owned(), "http://minio:9000".to_owned())
            ]
        );
        let bad = parse(
            "data_dir = \"d\"\nblob_store = \"gs://x\"\n[blob_store_options]\nregion = \"eu\"\n",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(bad.contains("gs://x"), "{bad}");
        assert!(bad.contains("blob_store_options need an s3://"), "{bad}");
    }

    /// A configuration given by a relative path (`--config deploy/examples/coordinator.toml`)
    /// has a relative data directory; its default database must still open.
    #[tokio::test]
    async fn the_default_database_opens_from_a_relative_data_dir() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let cwd = std::env::current_dir().unwrap_or_else(|e| panic!("{e}"));
        let mut relative = PathBuf::new();
        for _ in 1..cwd.components().count() {
            relative.push("..");
        }
        let target = dir.path().strip_prefix("/").unwrap_or(dir.path());
        let base = relative.join(target).join("etc");
        let config = CoordinatorConfig::from_toml_str("data_dir = \"../data\"\n", &base)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(config.data_dir.is_relative());
        std::fs::create_dir_all(&config.data_dir).unwrap_or_else(|e| panic!("{e}"));
        let store = crate::store::Store::open(&config.database_url)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", config.database_url));
        drop(store);
        assert!(dir.path().join("data").join("coordinator.db").is_file());
    }

    #[test]
    fn the_lineage_network_is_configurable_and_checked() {
        let config = CoordinatorConfig::from_toml_str(
            "data_dir = \"d\"\n[model]\nconv_channels = [4, 8]\nhidden = 16\n",
            Path::new("/"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.model,
            ShelfNetConfig::new()
                .with_conv_channels(vec![4, 8])
                .with_hidden(16)
        );
        let standard = CoordinatorConfig::from_toml_str("data_dir = \"d\"\n", Path::new("/"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(standard.model, ShelfNetConfig::new());

        let err = CoordinatorConfig::from_toml_str(
            "data_dir = \"d\"\n[model]\nconv_channels = [4]\nhidden = 0\nwidth = 3\n",
            Path::new("/"),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("width"), "{err}");
        let err = CoordinatorConfig::from_toml_str(
            "data_dir = \"d\"\n[model]\nconv_channels = [4]\n",
            Path::new("/"),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("model:"), "{err}");
    }

    #[test]
    fn reports_every_problem_and_unknown_fields() {
        let err = CoordinatorConfig::from_toml_str(
            "listen = \"nope\"\nheartbeat_interval_secs = 0\noverselect = 9.0\n\
             publish_rounds_to = \"canary\"\n",
            Path::new("/"),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        for needle in [
            "data_dir",
            "listen",
            "heartbeat_interval_secs",
            "overselect",
            "publish_rounds_to",
        ] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
        let unknown =
            CoordinatorConfig::from_toml_str("data_dir = \"x\"\nlisen = \"a\"\n", Path::new("/"));
        assert!(
            unknown
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
                .contains("lisen")
        );
    }
}

#[cfg(test)]
mod lineage_network_tests {
    use super::*;

    /// A lineage published with one network refuses a restart configured with another, naming
    /// both; the same network starts again; a tiny network is what nodes are served.
    #[tokio::test]
    async fn a_lineage_keeps_the_network_it_was_published_with() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let tiny = ShelfNetConfig::new()
            .with_conv_channels(vec![2, 4, 4])
            .with_hidden(8);
        let mut config = CoordinatorConfig::for_data_dir(dir.path());
        config.model = tiny.clone();
        let first = crate::Coordinator::start(config)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let served = first.core.registry.model_config().clone();
        let parameters = first.core.registry.num_parameters();
        drop(first);
        assert_eq!(served, tiny);
        let standard: usize = backroom_models::parameter_layout(&ShelfNetConfig::new())
            .iter()
            .map(backroom_models::TensorSpec::numel)
            .sum();
        assert!(
            parameters < standard / 10,
            "tiny network has {parameters} parameters, the standard one {standard}"
        );

        let mut same = CoordinatorConfig::for_data_dir(dir.path());
        same.model = tiny;
        drop(
            crate::Coordinator::start(same)
                .await
                .unwrap_or_else(|e| panic!("{e:#}")),
        );

        let standard = CoordinatorConfig::for_data_dir(dir.path());
        let refused = crate::Coordinator::start(standard)
            .await
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(
            refused.contains("was published with the network")
                && refused.contains("a lineage keeps its network"),
            "{refused}"
        );
    }
}
