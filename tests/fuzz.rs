//! Runs every cargo-fuzz target in `fuzz/` for a bounded time, when asked to (CI does):
//! `BACKROOM_FUZZ_SECS=N` fuzzes each target for N seconds with `cargo fuzz run -s none`
//! (stable Rust; the code has no `unsafe` for a sanitizer to watch). A crash, a panic, a
//! timeout or running out of memory fails the test and names the input libFuzzer saved; turn it
//! into a regression test beside the code it broke. Without the variable the test says it
//! skipped. `BACKROOM_REQUIRE_FUZZ=1` makes a missing `cargo fuzz` a failure instead.
//!
//! The build lives in `$CARGO_TARGET_DIR/fuzz` (or `fuzz/target`) and the corpus in
//! `…/fuzz-corpus/<target>`, so both carry over between runs on one machine.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGETS: [&str; 3] = [
    "update_assembly",
    "release_verification",
    "safetensors_loading",
];

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn have_cargo_fuzz() -> bool {
    Command::new(cargo())
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn saved_inputs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn fuzz_targets_run_without_a_crash() {
    let Some(secs) = std::env::var("BACKROOM_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&s| s > 0)
    else {
        eprintln!("skipped: set BACKROOM_FUZZ_SECS=<seconds per target> to fuzz (CI does)");
        return;
    };
    if !have_cargo_fuzz() {
        assert!(
            std::env::var_os("BACKROOM_REQUIRE_FUZZ").is_none(),
            "BACKROOM_REQUIRE_FUZZ is set but `cargo fuzz` is not installed \
             (cargo install cargo-fuzz --locked)"
        );
        eprintln!("skipped: `cargo fuzz` is not installed (cargo install cargo-fuzz --locked)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fuzz_dir = root.join("fuzz");
    let work = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || fuzz_dir.join("target"),
        |d| PathBuf::from(d).join("fuzz"),
    );
    for target in TARGETS {
        let corpus = work.join("fuzz-corpus").join(target);
        let artifacts = work.join("fuzz-artifacts").join(target);
        for dir in [&corpus, &artifacts] {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        let before = saved_inputs(&artifacts).len();
        eprintln!("fuzzing {target} for {secs} s");
        let status = Command::new(cargo())
            .current_dir(&fuzz_dir)
            .env("CARGO_TARGET_DIR", &work)
            .args(["fuzz", "run", "-s", "none", target])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .arg("-rss_limit_mb=2048")
            .arg("-timeout=10")
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo fuzz: {e}"));
        let found = saved_inputs(&artifacts);
        assert!(
            status.success() && found.len() == before,
            "fuzz target {target} failed ({status}); inputs saved: {:?}",
            found
        );
    }
}
