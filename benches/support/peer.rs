//! Running a peer's benchmark script (PyTorch, Flower) and reading its answer: the last line of
//! its stdout, one JSON object, or `{"skipped": "<reason>"}`.

use std::process::Command;

/// Runs `command` (`python script ...`) and returns the JSON object its last stdout line
/// holds; `Err` carries a one-line reason (failure with the tail of stderr, unreadable output,
/// or the script's own skip reason).
pub fn run_peer(
    mut command: Command,
    python: &str,
    script: &str,
) -> Result<serde_json::Value, String> {
    let output = command
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        return Err(format!(
            "{python} {script} failed ({}): {}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    let line = stdout.lines().last().unwrap_or_default();
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("unreadable output {line:?}: {e}"))?;
    if let Some(reason) = value.get("skipped").and_then(|r| r.as_str()) {
        return Err(reason.to_owned());
    }
    Ok(value)
}
