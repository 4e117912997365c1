//! The `backroom` binary as a user runs it.

use std::process::Command;

fn backroom() -> Command {
    Command::new(env!("CARGO_BIN_EXE_backroom"))
}

#[test]
fn pilot_json_reports_accuracy_rounds_and_every_node() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data_dir = dir.path().join("pilot");
    let output = backroom()
        .args([
            "pilot",
            "--json",
            "--rounds",
            "2",
            "--local-steps",
            "5",
            "--data-dir",
        ])
        .arg(&data_dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run backroom: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "pilot failed: {stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stderr}"));
    for key in [
        "initial_accuracy",
        "final_accuracy",
        "initial_loss",
        "final_loss",
        "rounds",
        "clip_norm",
        "noise_multiplier",
        "epsilon",
        "epsilon_budget",
        "delta",
        "rounds_remaining",
    ] {
        assert!(summary.get(key).is_some(), "summary lacks {key}: {summary}");
    }
    // ε spent grows round by round and stays within the budget.
    let per_round: Vec<f64> = summary["per_round"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| r["epsilon_after"].as_f64().unwrap_or(f64::NAN))
        .collect();
    assert_eq!(per_round.len(), 2, "{summary}");
    assert!(
        per_round[0] > 0.0 && per_round[1] > per_round[0],
        "{per_round:?}"
    );
    assert_eq!(summary["epsilon"].as_f64(), Some(per_round[1]));
    // Held-out loss: v1 answers about 50/50 (ln 2); the final loss is the last round's.
    let initial_loss = summary["initial_loss"].as_f64().unwrap_or(f64::NAN);
    assert!(
        (initial_loss - std::f64::consts::LN_2).abs() < 0.05,
        "{summary}"
    );
    assert_eq!(
        summary["final_loss"], summary["per_round"][1]["loss"],
        "{summary}"
    );
    assert!(per_round[1] <= summary["epsilon_budget"].as_f64().unwrap_or(0.0));
    assert_eq!(summary["rounds"], 2);
    let nodes = summary["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(nodes.len(), 3, "{summary}");
    for node in &nodes {
        assert!(
            node["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("store-"))
        );
        assert_eq!(node["installed_version"], 3, "{node}");
    }
    exported_versions_verify_offline_and_keys_rotate(&data_dir.join("coordinator"), dir.path());
}

/// `models export` / `models verify` on the pilot's kept data, and `keys show` / `rotate`.
fn exported_versions_verify_offline_and_keys_rotate(
    coordinator: &std::path::Path,
    dir: &std::path::Path,
) {
    let out = dir.join("export");
    let export = backroom()
        .args([
            "models",
            "export",
            "--lineage",
            "shelfnet",
            "--version",
            "3",
            "--json",
        ])
        .arg("--data-dir")
        .arg(coordinator)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let files: serde_json::Value =
        serde_json::from_slice(&export.stdout).unwrap_or_else(|e| panic!("{e}"));
    let path = |key: &str| {
        files[key]
            .as_str()
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| panic!("no {key} in {files}"))
    };
    let verify = |weights: &std::path::Path| {
        backroom()
            .args(["models", "verify", "--manifest"])
            .arg(path("manifest"))
            .arg("--weights")
            .arg(weights)
            .arg("--trusted-root")
            .arg(path("root"))
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let ok = verify(&path("weights"));
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success() && stdout.contains("OK: shelfnet v3"),
        "{stdout}"
    );
    let mut weights = std::fs::read(path("weights")).unwrap_or_else(|e| panic!("{e}"));
    let last = weights.len() - 1;
    weights[last] ^= 1;
    let tampered = dir.join("tampered.safetensors");
    std::fs::write(&tampered, &weights).unwrap_or_else(|e| panic!("{e}"));
    let refused = verify(&tampered);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("SHA-256"),
        "{stderr}"
    );

    let keys = |args: &[&str]| {
        let output = backroom()
            .arg("keys")
            .args(args)
            .arg("--data-dir")
            .arg(coordinator)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(keys(&["show"]).contains("key set v1"));
    let rotated = keys(&["rotate", "--revoke-old"]);
    assert!(
        rotated.contains("new active signing key") && rotated.contains("revoked"),
        "{rotated}"
    );
    let shown = keys(&["show"]);
    assert!(
        shown.contains("key set v2") && shown.contains("active") && shown.contains("revoked"),
        "{shown}"
    );
    // Version 3 was signed by the key just revoked: the node's checks now refuse it.
    let export = backroom()
        .args([
            "models",
            "export",
            "--lineage",
            "shelfnet",
            "--version",
            "3",
        ])
        .arg("--data-dir")
        .arg(coordinator)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(export.status.success());
    let refused = verify(&path("weights"));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("revokes"),
        "{stderr}"
    );
}

#[test]
fn a_bad_configuration_lists_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let coordinator = dir.path().join("coordinator.toml");
    std::fs::write(
        &coordinator,
        "listen = \"nowhere\"\nheartbeat_interval_secs = 0\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let output = backroom()
        .args(["coordinator", "--config"])
        .arg(&coordinator)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    for needle in ["data_dir", "listen", "heartbeat_interval_secs"] {
        assert!(stderr.contains(needle), "{needle} not reported: {stderr}");
    }

    let node = dir.path().join("node.toml");
    std::fs::write(
        &node,
        "coordinator_url = \"https://127.0.0.1:1\"\nbackend = \"tpu\"\nunknown_key = 1\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let output = backroom()
        .args(["node", "--config"])
        .arg(&node)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("unknown_key"), "{stderr}");
}

/// `backroom config check`: the shipped examples pass, with a summary each; a bad file's every
/// problem is reported alongside, and the exit code is 64.
#[test]
fn config_check_validates_every_file_and_reports_every_problem() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let coordinator = root.join("deploy/examples/coordinator.toml");
    let node = root.join("deploy/examples/node.toml");
    let output = backroom()
        .args(["config", "check", "--coordinator"])
        .arg(&coordinator)
        .arg("--node")
        .arg(&node)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("coordinator.toml: ok (coordinator: listen 127.0.0.1:7443"),
        "{stdout}"
    );
    assert!(
        stdout.contains("node.toml: ok (node: coordinator https://"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "data_dir = \"d\"\nround_lease_secs = 0\nblob_store = \"gs://x\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let output = backroom()
        .args(["config", "check", "--coordinator"])
        .arg(&coordinator)
        .arg("--coordinator")
        .arg(&bad)
        .arg("--node")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stdout}{stderr}");
    assert!(stdout.contains("coordinator.toml: ok"), "{stdout}");
    for needle in ["round_lease_secs", "gs://x", "missing.toml", "cannot read"] {
        assert!(stderr.contains(needle), "{needle} not reported: {stderr}");
    }

    // Environment overrides: applied, announced, and checked like the file's own keys.
    let output = backroom()
        .args(["config", "check", "--coordinator"])
        .arg(&coordinator)
        .env("BACKROOM_COORDINATOR_LISTEN", "0.0.0.0:9443")
        .env("BACKROOM_COORDINATOR_PRIVACY__EPSILON_MAX", "8")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("listen 0.0.0.0:9443"), "{stdout}");
    assert!(
        stderr.contains("BACKROOM_COORDINATOR_LISTEN overrides the file"),
        "{stderr}"
    );
    let output = backroom()
        .args(["config", "check", "--node"])
        .arg(&node)
        .env("BACKROOM_NODE_LINEAGE_NAME", "x")
        .env("BACKROOM_NODE_POLL_WAIT_SECS", "0")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("lineage_name"), "{stderr}");
}

/// Whether this machine must run wgpu: the lavapipe software Vulkan driver is installed (as
/// `.ci/run` does) or `BACKROOM_REQUIRE_WGPU=1`.
fn wgpu_expected() -> bool {
    std::env::var("BACKROOM_REQUIRE_WGPU").is_ok_and(|v| v == "1")
        || std::fs::read_dir("/usr/share/vulkan/icd.d").is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("lvp_icd"))
        })
}

/// A two-store, two-round pilot with (almost) no DP noise, keeping its data in `dir`; returns
/// its JSON summary. The noise multiplier is 1e-7 (z = 0 is refused: its ε is infinite), so
/// the published versions differ between runs only by the stores' minibatch order (seeded by
/// the random round id) and by floating-point order.
fn quiet_pilot(backend: &str, dir: &std::path::Path) -> serde_json::Value {
    let output = backroom()
        .args(["pilot", "--json", "--stores", "2", "--rounds", "2"])
        .args(["--seed", "7", "--local-steps", "30"])
        .args(["--backend", backend, "--round-deadline", "1200"])
        .args([
            "--noise-multiplier",
            "0.0000001",
            "--epsilon-budget",
            "1e300",
        ])
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run backroom: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "pilot --backend {backend} failed: {stderr}"
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stderr}"))
}

/// Every published version of a pilot's data directory, verified as a node verifies it.
fn published_params(dir: &std::path::Path, versions: u64) -> Vec<Vec<f32>> {
    let coordinator = dir.join("coordinator");
    let root =
        backroom::evaluate::load_verifying_key(&backroom::evaluate::root_key_file(&coordinator))
            .unwrap_or_else(|e| panic!("{e:#}"));
    (1..=versions)
        .map(|v| {
            backroom::evaluate::load_verified_params(&coordinator, "shelfnet", v, &root)
                .unwrap_or_else(|e| panic!("{e:#}"))
        })
        .collect()
}

fn norm(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|x| x * x).sum::<f64>().sqrt()
}

/// How far a run moved the model from v1 to `to`, and how that move compares with another
/// run's: (its length, the other's length, cosine between the two moves).
fn compare_moves(start: &[f32], to: &[f32], other: &[f32]) -> (f64, f64, f64) {
    let a: Vec<f64> = to
        .iter()
        .zip(start)
        .map(|(t, s)| f64::from(t - s))
        .collect();
    let b: Vec<f64> = other
        .iter()
        .zip(start)
        .map(|(t, s)| f64::from(t - s))
        .collect();
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let (na, nb) = (norm(a.iter().copied()), norm(b.iter().copied()));
    (na, nb, dot / (na * nb))
}

/// `pilot --backend wgpu` learns like `--backend cpu`, shown on the models rather than on
/// held-out accuracy. In this setting accuracy sits on a knife edge (two CPU runs of one seed
/// end anywhere from 0.53 to 0.83 across seeds and differ from each other too), so a single
/// accuracy per backend cannot tell a broken backend from a different minibatch order. What
/// can: the wgpu pilot's global model must move from v1 the way the CPU pilot's moves —
/// same direction (cosine of the two moves) and same length — as closely as a second CPU run
/// does, less a margin. A wgpu node that trained wrongly, not at all, or on other data fails
/// this. Held-out accuracy and loss are printed for the record.
#[test]
fn pilot_on_wgpu_learns_like_the_cpu() {
    if !wgpu_expected() {
        eprintln!(
            "skipped: no lavapipe driver (mesa-vulkan-drivers) and BACKROOM_REQUIRE_WGPU unset"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let runs = [("cpu", "cpu-a"), ("cpu", "cpu-b"), ("wgpu", "wgpu")];
    let mut params = Vec::new();
    for (backend, name) in runs {
        let summary = quiet_pilot(backend, &dir.path().join(name));
        // Every store ran on the backend asked for, trained both rounds, installed the last.
        let nodes = summary["nodes"].as_array().cloned().unwrap_or_default();
        assert_eq!(nodes.len(), 2, "{summary}");
        for node in nodes {
            let prefix = if backend == "wgpu" { "wgpu: " } else { "cpu" };
            assert!(
                node["backend"]
                    .as_str()
                    .is_some_and(|b| b.starts_with(prefix)),
                "{node}"
            );
            assert_eq!(node["installed_version"], 3, "{node}");
            assert_eq!(node["rounds_trained"], 2, "{node}");
        }
        let rounds: Vec<String> = summary["per_round"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|r| format!("acc {:.3} loss {:.3}", r["accuracy"], r["loss"]))
            .collect();
        eprintln!("{name}: {}", rounds.join(", "));
        params.push(published_params(&dir.path().join(name), 3));
    }
    let (cpu_a, cpu_b, gpu) = (&params[0], &params[1], &params[2]);
    let start = &cpu_a[0];
    assert_eq!(start, &gpu[0], "the runs did not start from the same v1");
    for version in [2usize, 3] {
        let i = version - 1;
        let (len_a, len_b, cos_cpu) = compare_moves(start, &cpu_a[i], &cpu_b[i]);
        let (len_gpu, _, cos_gpu) = compare_moves(start, &gpu[i], &cpu_a[i]);
        eprintln!(
            "v{version}: move from v1: cpu {len_a:.4} / {len_b:.4} / wgpu {len_gpu:.4}; \
             cosine cpu-cpu {cos_cpu:.4}, wgpu-cpu {cos_gpu:.4}"
        );
        assert!(
            len_a > 0.05,
            "the CPU pilot did not move the model: {len_a}"
        );
        assert!(
            cos_gpu >= cos_cpu - 0.15,
            "v{version}: wgpu moved the model elsewhere (cosine {cos_gpu:.4} with the CPU's \
             move; two CPU runs: {cos_cpu:.4})"
        );
        let ratio = len_gpu / len_a;
        let spread = (len_b / len_a).max(len_a / len_b);
        assert!(
            ratio <= spread * 1.25 && ratio >= 1.0 / (spread * 1.25),
            "v{version}: wgpu moved the model {len_gpu:.4}, the CPU {len_a:.4} (two CPU \
             runs: {len_a:.4} and {len_b:.4})"
        );
    }
}

/// `backroom node-data` on the store data a pilot left: what the store holds, a deletion
/// request for a window (recorded), and clear errors for bad input.
#[test]
fn node_data_shows_the_store_and_deletes_a_window_on_request() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pilot = backroom()
        .args([
            "pilot",
            "--json",
            "--stores",
            "1",
            "--rounds",
            "1",
            "--local-steps",
            "5",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run backroom: {e}"));
    assert!(
        pilot.status.success(),
        "{}",
        String::from_utf8_lossy(&pilot.stderr)
    );
    let store = dir.path().join("nodes/store-1");
    let show = |store: &std::path::Path| -> serde_json::Value {
        let output = backroom()
            .args(["node-data", "show", "--json", "--data-dir"])
            .arg(store)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}"))
    };
    let before = show(&store);
    let frames = before["frames"].as_u64().unwrap_or(0);
    assert!(frames > 0, "the pilot's store kept no frame: {before}");
    assert_eq!(before["deletions"].as_array().map(Vec::len), Some(0));

    // The pilot's camera starts at 2024-01-01T00:00:00Z; this window holds every frame of it.
    let delete = backroom()
        .args(["node-data", "delete", "--json", "--data-dir"])
        .arg(&store)
        .args([
            "--from",
            "2024-01-01T00:00:00Z",
            "--to",
            "2025-01-01T00:00:00Z",
        ])
        .args(["--requested-by", "store manager", "--reason", "ticket 42"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        delete.status.success(),
        "{}",
        String::from_utf8_lossy(&delete.stderr)
    );
    let record: serde_json::Value =
        serde_json::from_slice(&delete.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(record["frames_deleted"].as_u64(), Some(frames), "{record}");
    let after = show(&store);
    assert_eq!(after["frames"].as_u64(), Some(0), "{after}");
    assert_eq!(after["deletions"][0]["reason"], "ticket 42", "{after}");
    let frame_files = std::fs::read_dir(store.join("frames/0"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(frame_files, 0, "images survived the deletion request");

    let bad_time = backroom()
        .args(["node-data", "delete", "--data-dir"])
        .arg(&store)
        .args(["--from", "yesterday", "--to", "2025-01-01T00:00:00Z"])
        .args(["--requested-by", "x", "--reason", "y"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!bad_time.status.success());
    assert!(String::from_utf8_lossy(&bad_time.stderr).contains("must be an RFC 3339 time"));
    let nowhere = backroom()
        .args(["node-data", "show", "--data-dir"])
        .arg(dir.path().join("missing"))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!nowhere.status.success());
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("holds no node database"));
}

/// `bench load`: 30 simulated nodes over mTLS through two full rounds, every node's update
/// counted in each, versions published in order, every node heard from.
#[test]
fn bench_load_runs_rounds_with_every_simulated_node() {
    let output = backroom()
        .args([
            "bench",
            "load",
            "--nodes",
            "30",
            "--rounds",
            "2",
            "--idle-secs",
            "1",
            "--json",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run backroom: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench load failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stderr}"));
    assert_eq!(report["nodes"], 30);
    let rounds = report["rounds"]
        .as_array()
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(rounds.len(), 2, "{report}");
    for (i, round) in rounds.iter().enumerate() {
        assert_eq!(round["updates"], 30, "{round}");
        assert_eq!(round["published_version"], i as u64 + 2, "{round}");
        let secs = round["secs"].as_f64().unwrap_or(0.0);
        let sampled = round["training_secs"].as_f64().unwrap_or(0.0);
        assert!(sampled > 0.0 && sampled <= secs, "{round}");
    }
    assert!(report["polls"].as_u64().unwrap_or(0) >= 60, "{report}");
    assert!(report["rss_bytes"].as_u64().unwrap_or(0) > 0, "{report}");

    let refused = backroom()
        .args(["bench", "load", "--nodes", "0"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run backroom: {e}"));
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--nodes"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
