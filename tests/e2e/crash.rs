//! Crash-resume under SIGKILL: the coordinator runs as its own process (the `backroom` binary,
//! embedded SQLite) with three store-node processes; over 20 rounds it is killed with SIGKILL
//! at random moments (sampling, training, mid-upload, aggregation, publication) and restarted.
//! Afterwards every update a node saw acknowledged is in the coordinator's database, every
//! round has ended, no round published twice, versions are contiguous, and each published
//! version is exactly base + the mean of its round's stored updates (so what was acknowledged is
//! what was counted). The coordinator's `round_lease_secs` is 2: a restarted coordinator resumes
//! the rounds of the killed one once their leases (held by a process that no longer exists)
//! expire.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use backroom_proto::v1 as pb;
use rand::{Rng, SeedableRng};

use crate::support::{Process, free_port, run, write};

const ROUNDS: usize = 20;
const STORES: usize = 3;

fn is_final(state: i32) -> bool {
    [
        pb::RoundState::Published,
        pb::RoundState::Failed,
        pb::RoundState::Cancelled,
    ]
    .iter()
    .any(|s| *s as i32 == state)
}

/// The round ids a node's log says the coordinator acknowledged (first or on a retry).
fn acknowledged(log: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.contains("update accepted") || l.contains("already accepted by an earlier attempt")
        })
        .filter_map(|l| {
            let at = l.find("round_id=")? + "round_id=".len();
            let id: String = l[at..].chars().take_while(|c| !c.is_whitespace()).collect();
            Some(id)
        })
        .collect()
}

struct Harness {
    dir: PathBuf,
    url: String,
    coordinator_config: PathBuf,
    coordinator: Process,
    restarts: usize,
    /// The admin connection, dropped when a call fails (the coordinator was killed).
    client: Option<backroom::client::AdminClient>,
}

impl Harness {
    fn coordinator_log(&self) -> PathBuf {
        self.dir.join("coordinator.log")
    }

    fn kill(&mut self) {
        self.coordinator.kill();
        self.client = None;
    }

    fn restart(&mut self) {
        self.coordinator = Process::spawn(
            &["coordinator"],
            &self.coordinator_config,
            &self.coordinator_log(),
        );
        self.restarts += 1;
    }

    /// An admin client, reconnected (retried while the coordinator starts) after a failure.
    async fn admin(&mut self) -> backroom::client::AdminClient {
        if let Some(client) = &self.client {
            return client.clone();
        }
        let bundle = self.dir.join("bundles/alice");
        for _ in 0..600 {
            if let Ok(client) = backroom::client::admin(&self.url, "localhost", &bundle).await {
                self.client = Some(client.clone());
                return client;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the coordinator did not come up; see {}",
            self.coordinator_log().display()
        );
    }

    async fn get_round(&mut self, round_id: &str) -> pb::Round {
        loop {
            let mut admin = self.admin().await;
            match admin
                .get_round(pb::GetRoundRequest {
                    round_id: round_id.to_owned(),
                })
                .await
            {
                Ok(round) => return round.into_inner(),
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    self.client = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) => panic!("get_round: {status}"),
            }
        }
    }
}

fn spec() -> pb::RoundSpec {
    pb::RoundSpec {
        strategy: "fedavg".into(),
        target_clients: STORES as u32,
        min_clients: 2,
        deadline_secs: 20,
        local_steps: 3,
        batch_size: 16,
        learning_rate: 0.05,
        clip_norm: 0.5,
        noise_multiplier: 0.0,
        noise_mode: "central".into(),
        adaptive_clipping: None,
        server_learning_rate: None,
        trim_fraction: None,
        proximal_mu: 0.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_coordinator_loses_no_acknowledged_update_over_twenty_rounds() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path().to_path_buf();
    let coordinator_dir = dir.join("coordinator");
    let coordinator_dir_text = coordinator_dir.display().to_string();
    run(&[
        "enroll",
        "--data-dir",
        &coordinator_dir_text,
        "--admin",
        "alice",
        "--out",
        &dir.join("bundles/alice").display().to_string(),
    ]);
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let coordinator_config = dir.join("coordinator.toml");
    write(
        &coordinator_config,
        &format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"coordinator\"\nlineage = \"shelfnet\"\n\
             heartbeat_interval_secs = 1\nsampling_timeout_secs = 60\nonline_window_secs = 30\n\
             publish_rounds_to = \"stable\"\nround_lease_secs = 2\n[privacy]\nunlimited = true\ndelta = 1e-5\n"
        ),
    );
    let mut nodes = Vec::new();
    for i in 0..STORES {
        let store = format!("store-{}", i + 1);
        run(&[
            "enroll",
            "--data-dir",
            &coordinator_dir_text,
            "--store",
            &store,
            "--out",
            &dir.join("bundles").join(&store).display().to_string(),
        ]);
        let config = dir.join(format!("{store}.toml"));
        write(
            &config,
            &format!(
                "coordinator_url = \"{url}\"\ntls_server_name = \"localhost\"\n\
                 bundle_dir = \"bundles/{store}\"\ndata_dir = \"{store}\"\nlineage = \"shelfnet\"\n\
                 backend = \"cpu\"\npoll_wait_secs = 5\n[data]\nworld_seed = 2024\nstore_index = {i}\n\
                 train_samples = 64\n[camera]\nframe_interval_ms = 2000\n"
            ),
        );
        nodes.push((store.clone(), dir.join(format!("{store}.log")), config));
    }
    let mut harness = Harness {
        coordinator: Process::spawn(
            &["coordinator"],
            &coordinator_config,
            &dir.join("coordinator.log"),
        ),
        dir: dir.clone(),
        url,
        coordinator_config,
        restarts: 0,
        client: None,
    };
    let mut node_processes: Vec<Process> = nodes
        .iter()
        .map(|(_, log, config)| Process::spawn(&["node"], config, log))
        .collect();

    // Wait until every store has said hello.
    tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            for (process, (store, log, _)) in node_processes.iter_mut().zip(&nodes) {
                if let Ok(Some(exit)) = process.0.try_wait() {
                    let log = std::fs::read_to_string(log).unwrap_or_default();
                    panic!("{store} exited ({exit}):\n{log}");
                }
            }
            let mut admin = harness.admin().await;
            if let Ok(list) = admin.list_nodes(pb::ListNodesRequest::default()).await
                && list.into_inner().nodes.len() == STORES
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the stores did not all connect"));

    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let mut rounds = Vec::new();
    let mut killed_in: BTreeMap<String, usize> = BTreeMap::new();
    for r in 0..ROUNDS {
        // Start the round (a refused start while the previous round's end is still being
        // recorded, or while the coordinator restarts, is retried).
        let round_id = tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                let mut admin = harness.admin().await;
                match admin
                    .start_round(pb::StartRoundRequest {
                        lineage: "shelfnet".into(),
                        spec: Some(spec()),
                    })
                    .await
                {
                    Ok(round) => break round.into_inner().round_id,
                    Err(status)
                        if matches!(
                            status.code(),
                            tonic::Code::Unavailable | tonic::Code::FailedPrecondition
                        ) =>
                    {
                        if status.code() == tonic::Code::Unavailable {
                            harness.client = None;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(status) => panic!("round {r}: start refused: {status}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("round {r} never started"));
        // Kill three rounds in four, sometimes twice: at a random moment of the first 400 ms
        // (sampling, the stores' training), once an update has been acknowledged (others
        // still uploading), or as soon as aggregation is seen (weights being written, signed,
        // published).
        let kills = if rng.random_bool(0.75) {
            1 + usize::from(rng.random_bool(0.25))
        } else {
            0
        };
        for _ in 0..kills {
            let target = rng.random_range(0..10);
            let started = std::time::Instant::now();
            let state = loop {
                let round = harness.get_round(&round_id).await;
                let state = pb::RoundState::try_from(round.state)
                    .map_or("unknown".to_owned(), |s| s.as_str_name().to_owned());
                let ready = match target {
                    0..=3 => true,
                    4..=7 => {
                        round.state == pb::RoundState::Training as i32
                            && round.updates_accepted >= 1
                    }
                    _ => round.state == pb::RoundState::Aggregating as i32,
                };
                if ready || is_final(round.state) || started.elapsed() > Duration::from_secs(30) {
                    break state;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            if target <= 3 {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
            }
            harness.kill();
            *killed_in.entry(state).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..500))).await;
            harness.restart();
        }
        // Every round ends, killed or not.
        let end = tokio::time::timeout(Duration::from_secs(180), async {
            loop {
                let round = harness.get_round(&round_id).await;
                if is_final(round.state) {
                    break round;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("round {r} ({round_id}) is stuck"));
        rounds.push(end);
    }
    // Let the nodes finish logging, then stop everything before reading the files.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(node_processes);
    harness.kill();

    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        coordinator_dir.join("coordinator.db").display()
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let stored: BTreeSet<(String, String)> =
        sqlx::query_as::<_, (String, String)>("SELECT round_id, node_id FROM round_updates")
            .fetch_all(&db)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .collect();
    let versions: Vec<(i64, String)> = sqlx::query_as(
        "SELECT version, round_id FROM model_versions WHERE lineage = 'shelfnet' ORDER BY version",
    )
    .fetch_all(&db)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    db.close().await;

    // 1. Every acknowledged update is stored.
    let mut acknowledged_total = 0;
    let mut upload_retries = 0;
    for (store, log, _) in &nodes {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        upload_retries += text.matches("upload failed, retrying").count();
        for round_id in acknowledged(log) {
            acknowledged_total += 1;
            assert!(
                stored.contains(&(round_id.clone(), store.clone())),
                "{store}'s acknowledged update for {round_id} was lost"
            );
        }
    }
    // 2. No version twice, versions contiguous, each published round has exactly its version.
    let numbers: Vec<i64> = versions.iter().map(|(v, _)| *v).collect();
    assert_eq!(numbers, (1..=versions.len() as i64).collect::<Vec<_>>());
    let mut by_round = BTreeMap::new();
    for (version, round_id) in versions.iter().skip(1) {
        assert!(
            by_round.insert(round_id.clone(), *version).is_none(),
            "{round_id} published twice"
        );
    }
    let published: Vec<&pb::Round> = rounds
        .iter()
        .filter(|r| r.state == pb::RoundState::Published as i32)
        .collect();
    assert_eq!(by_round.len(), published.len());
    // 3. Each published version is base + the sum of all its round's stored updates over the
    //    round's fixed denominator (DP-FedAvg: the expected number of clients fixed at
    //    admission, which is the mean when every sampled store's update arrived; a store that
    //    missed the deadline on a loaded machine makes it smaller), and the round counts every
    //    one of them.
    let key = backroom::evaluate::load_verifying_key(&backroom::evaluate::root_key_file(
        &coordinator_dir,
    ))
    .unwrap_or_else(|e| panic!("{e:#}"));
    let params = |version: u64| {
        backroom::evaluate::load_verified_params(&coordinator_dir, "shelfnet", version, &key)
            .unwrap_or_else(|e| panic!("v{version}: {e:#}"))
    };
    for round in &published {
        assert_eq!(
            by_round.get(&round.round_id),
            Some(&(round.published_version as i64))
        );
        let updates = crate::support::updates_in(&coordinator_dir, &round.round_id);
        assert_eq!(
            updates.len() as u32,
            round.updates_accepted,
            "{}: stored and counted updates differ",
            round.round_id
        );
        let (base, new) = (params(round.base_version), params(round.published_version));
        let worst = (0..base.len())
            .map(|i| {
                let mean = updates.iter().map(|(_, d)| f64::from(d[i])).sum::<f64>()
                    / round.expected_clients.max(1.0);
                (f64::from(new[i]) - f64::from(base[i]) - mean).abs()
            })
            .fold(0.0f64, f64::max);
        assert!(
            worst <= 1e-6,
            "{}: off the sum of its {} updates over {} expected clients by {worst}",
            round.round_id,
            updates.len(),
            round.expected_clients
        );
    }
    let kills: usize = killed_in.values().sum();
    eprintln!(
        "{ROUNDS} rounds, {kills} SIGKILLs (by round state: {killed_in:?}), {} restarts; \
         {} published, {} failed; {acknowledged_total} acknowledged updates, all stored; \
         {} stored in all; {upload_retries} upload retries",
        harness.restarts,
        published.len(),
        rounds.len() - published.len(),
        stored.len()
    );
    assert!(kills >= ROUNDS / 2, "only {kills} kills");
    assert!(
        published.len() >= ROUNDS / 2,
        "only {} of {ROUNDS} rounds published",
        published.len()
    );
    assert!(
        acknowledged_total >= ROUNDS,
        "only {acknowledged_total} acknowledged updates"
    );
}
