//! `backroom audit`: the coordinator's audit log, read where its data directory is (no
//! coordinator connection), and the recording of what the offline tools (`enroll`, `keys`) do.
//!
//! `verify` walks the whole hash chain and checks it against the head file
//! (`backroom_coordinator::audit`); it exits 65 naming the first broken entry, 64 on a usage
//! error. A pilot's kept `--data-dir` is accepted as is: its coordinator is `<dir>/coordinator`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use backroom::config_env::{self, Daemon};
use backroom_coordinator::CoordinatorConfig;
use backroom_coordinator::audit::{self, Entry};
use clap::{Args, Subcommand};

use crate::time_arg::show_unix_ms;

/// Exit code of `audit verify` for a log that fails a check (EX_DATAERR).
const EXIT_BROKEN: u8 = 65;

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the whole audit log: sequence numbers without gaps from 1, every entry's hash over
    /// its fields, every link to the entry before, and the head file (the newest entry kept
    /// outside the database, so deleted last entries show). Prints one line: OK with the number
    /// of entries and the head hash (exit 0), or the first broken entry and which check it
    /// failed (exit 65).
    Verify {
        #[command(flatten)]
        target: Target,
    },
    /// Print the audit log's entries, oldest first.
    List {
        #[command(flatten)]
        target: Target,
        /// Only the newest N entries.
        #[arg(long)]
        limit: Option<u32>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct Target {
    /// The coordinator's data directory (holds coordinator.db and audit.head), or a pilot's
    /// kept --data-dir (its coordinator is in <dir>/coordinator).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The coordinator's configuration: its database_url (needed when the database is
    /// PostgreSQL) and data_dir (where the head file is). Environment overrides apply.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// A problem with the command line or configuration: exit 64.
struct Usage(String);

pub async fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    let target = match &command {
        AuditCommand::Verify { target } | AuditCommand::List { target, .. } => target,
    };
    let config = match reading_config(target) {
        Ok(config) => config,
        Err(Usage(message)) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(crate::EXIT_CONFIG));
        }
    };
    let (pool, backend) = audit::open_for_reading(&config.database_url)
        .await
        .with_context(|| {
            format!(
                "cannot open the coordinator database {}",
                backroom_coordinator::store::redact_url(&config.database_url)
            )
        })?;
    let code = match command {
        AuditCommand::Verify { .. } => {
            let head_path = config.data_dir.join(audit::HEAD_FILE);
            // Appends wait while the log is walked (a coordinator on this machine may be
            // running).
            let lock_path = config.data_dir.join(audit::LOCK_FILE);
            let _lock = tokio::task::spawn_blocking(move || audit::lock_file(&lock_path))
                .await
                .context("audit lock task failed")??;
            match audit::verify(&pool, backend, &head_path).await? {
                Ok(verified) => {
                    let head = verified
                        .last
                        .map(|h| format!(", head {} {}", h.seq, h.hash))
                        .unwrap_or_default();
                    let others = if verified.unanchored > 0 {
                        format!(
                            " ({} newest entries anchored by other replicas' head files, not {})",
                            verified.unanchored,
                            head_path.display()
                        )
                    } else {
                        String::new()
                    };
                    println!("audit log OK: {} entries{head}{others}", verified.entries);
                    ExitCode::SUCCESS
                }
                Err(broken) => {
                    println!("audit log BROKEN at {broken}");
                    ExitCode::from(EXIT_BROKEN)
                }
            }
        }
        AuditCommand::List { limit, json, .. } => {
            let entries = match limit {
                Some(limit) => audit::newest_entries(&pool, limit).await?,
                None => {
                    let mut all = Vec::new();
                    loop {
                        let after = all.last().map_or(0, |e: &Entry| e.seq);
                        let page = audit::entries_after(&pool, after, 1000).await?;
                        if page.is_empty() {
                            break;
                        }
                        all.extend(page);
                    }
                    all
                }
            };
            if json {
                let rows: Vec<serde_json::Value> = entries.iter().map(entry_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for entry in &entries {
                    println!(
                        "{:>6}  {}  {:<24} {:<16} {:<28} {}",
                        entry.seq,
                        show_unix_ms(entry.time_unix_ms),
                        entry.actor,
                        entry.action,
                        entry.subject,
                        entry.details
                    );
                }
            }
            ExitCode::SUCCESS
        }
    };
    pool.close().await;
    Ok(code)
}

fn entry_json(entry: &Entry) -> serde_json::Value {
    serde_json::json!({
        "seq": entry.seq,
        "time_unix_ms": entry.time_unix_ms,
        "time": show_unix_ms(entry.time_unix_ms),
        "actor": entry.actor,
        "action": entry.action,
        "subject": entry.subject,
        "details": entry.details_json(),
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    })
}

/// Where to read the log: `--config` (its database and data directory; `--data-dir`, if also
/// given, must be the same directory), else `--data-dir` with the embedded database, or the
/// coordinator directory of a pilot's kept data.
fn reading_config(target: &Target) -> Result<CoordinatorConfig, Usage> {
    if let Some(path) = &target.config {
        let config = load_config(path)?;
        if let Some(dir) = &target.data_dir {
            same_dir(dir, &config.data_dir)?;
        }
        return Ok(config);
    }
    let Some(dir) = &target.data_dir else {
        return Err(Usage(
            "pass --data-dir (the coordinator's data directory) or --config".into(),
        ));
    };
    let holds_log =
        |d: &Path| d.join("coordinator.db").exists() || d.join(audit::HEAD_FILE).exists();
    let dir = if holds_log(dir) {
        dir.clone()
    } else if holds_log(&dir.join("coordinator")) {
        eprintln!(
            "{} is a pilot's data directory: reading its coordinator's, {}",
            dir.display(),
            dir.join("coordinator").display()
        );
        dir.join("coordinator")
    } else {
        return Err(Usage(format!(
            "{} holds no coordinator database or audit head (nor does {}, where a pilot keeps \
             its coordinator)",
            dir.display(),
            dir.join("coordinator").display()
        )));
    };
    embedded(&dir)
}

/// The embedded database of `dir`, unless the head file there says the log lives elsewhere.
fn embedded(dir: &Path) -> Result<CoordinatorConfig, Usage> {
    if dir.join(audit::HEAD_FILE).exists() && !dir.join("coordinator.db").exists() {
        return Err(Usage(format!(
            "{} has an audit head but no coordinator.db: the coordinator's database is \
             elsewhere (PostgreSQL?); pass --config <coordinator.toml>",
            dir.display()
        )));
    }
    Ok(CoordinatorConfig::for_data_dir(dir))
}

fn load_config(path: &Path) -> Result<CoordinatorConfig, Usage> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Usage(format!("cannot read configuration {}: {e}", path.display())))?;
    let (text, used) = config_env::apply(Daemon::Coordinator, &text, std::env::vars())
        .map_err(|e| Usage(format!("{}: {e}", path.display())))?;
    for name in used {
        eprintln!("configuration: {name} overrides the file");
    }
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    CoordinatorConfig::from_toml_str(&text, base)
        .map_err(|e| Usage(format!("{}: {e}", path.display())))
}

fn same_dir(given: &Path, configured: &Path) -> Result<(), Usage> {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    if canonical(given) == canonical(configured) {
        Ok(())
    } else {
        Err(Usage(format!(
            "--data-dir {} is not the configuration's data_dir {}",
            given.display(),
            configured.display()
        )))
    }
}

/// `cli/<user>`: the actor of entries the offline tools append (`$USER`, `$LOGNAME`, else the
/// name of the process's user id in /etc/passwd, else `uid-<n>`).
pub fn cli_actor() -> String {
    let user = ["USER", "LOGNAME"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|u| !u.is_empty()))
        .or_else(user_of_process)
        .unwrap_or_else(|| "unknown".to_owned());
    format!("cli/{user}")
}

#[cfg(unix)]
fn user_of_process() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)? == uid.to_string()).then(|| name.to_owned())
    });
    Some(name.unwrap_or_else(|| format!("uid-{uid}")))
}

#[cfg(not(unix))]
fn user_of_process() -> Option<String> {
    None
}

/// Records what an offline tool did in the coordinator data directory `data_dir` in that
/// coordinator's audit log: with `config`, in the database it names (PostgreSQL, say); else in
/// `<data_dir>/coordinator.db` if there is one; else (no database yet, or one elsewhere) queued
/// in `<data_dir>/audit.pending`, which the coordinator appends with its next entry.
pub async fn record(
    data_dir: &Path,
    config: Option<&Path>,
    action: &str,
    subject: &str,
    details: serde_json::Value,
) -> anyhow::Result<()> {
    let actor = cli_actor();
    let config = match config {
        Some(path) => {
            let config = load_config(path).map_err(|Usage(m)| anyhow::anyhow!(m))?;
            same_dir(data_dir, &config.data_dir).map_err(|Usage(m)| anyhow::anyhow!(m))?;
            config
        }
        None if data_dir.join("coordinator.db").exists() => {
            CoordinatorConfig::for_data_dir(data_dir)
        }
        None => {
            audit::queue_offline(data_dir, &actor, action, subject, &details)
                .await
                .with_context(|| format!("cannot queue {action} {subject} for the audit log"))?;
            eprintln!(
                "{action} {subject} queued in {} for the coordinator's audit log (it appends it \
                 with its next entry; pass --config to record it in its database now)",
                data_dir.join(audit::PENDING_FILE).display()
            );
            return Ok(());
        }
    };
    if !config.data_dir.exists() {
        bail!("{} does not exist", config.data_dir.display());
    }
    audit::append_offline(&config, &actor, action, subject, &details)
        .await
        .with_context(|| {
            format!(
                "cannot record {action} {subject} in the audit log of {}",
                backroom_coordinator::store::redact_url(&config.database_url)
            )
        })?;
    Ok(())
}
