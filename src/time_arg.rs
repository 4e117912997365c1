//! RFC 3339 times on the command line and in printed reports.

use anyhow::Context;
use clap::Args;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `--<name> <RFC 3339 time>` as unix milliseconds.
pub fn parse_unix_ms(name: &str, text: &str) -> anyhow::Result<i64> {
    let time = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        anyhow::anyhow!(
            "--{name} must be an RFC 3339 time such as 2026-12-01T14:00:00Z, got {text:?}"
        )
    })?;
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000)
        .with_context(|| format!("--{name} is out of range"))
}

/// Unix milliseconds as RFC 3339 (or as milliseconds when out of range).
pub fn show_unix_ms(unix_ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{unix_ms} ms"))
}

/// Now, in unix milliseconds.
pub fn now_unix_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// `--from`, `--to` and `--camera`: a capture-time window, optionally of one camera.
#[derive(Args, Debug)]
pub struct CaptureWindow {
    /// Start of the capture-time window, RFC 3339 (e.g. 2026-12-01T14:00:00Z).
    #[arg(long)]
    pub from: String,
    /// End of the window (exclusive), RFC 3339.
    #[arg(long)]
    pub to: String,
    /// Only this camera (default: every camera).
    #[arg(long)]
    pub camera: Option<u32>,
}

impl CaptureWindow {
    /// `(from, to)` in unix milliseconds.
    pub fn unix_ms(&self) -> anyhow::Result<(i64, i64)> {
        Ok((
            parse_unix_ms("from", &self.from)?,
            parse_unix_ms("to", &self.to)?,
        ))
    }
}
