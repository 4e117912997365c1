//! `backroom keys`: the model-signing key hierarchy in a coordinator's data directory. Works on
//! files (no coordinator connection): run it where the data directory is, with the root key
//! brought in from its offline place for `rotate` and `revoke`. Each change is recorded in the
//! coordinator's audit log (`key.rotate`, `key.revoke`; see `audit_cli::record`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use backroom_coordinator::identity::PkiPaths;
use backroom_coordinator::signing_keys::{self, KeyChange};
use clap::{Args, Subcommand};

use crate::time_arg::{now_unix_ms, show_unix_ms};

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// The current key set: its version and expiry, every signing key, which is active and which
    /// are revoked.
    Show {
        #[command(flatten)]
        dir: DataDir,
        /// Print the key set as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a new signing key the active one and sign a new key set trusting it (renewing the
    /// key set's expiry). Nodes pick the new set up with their next download; no re-enrolment.
    Rotate {
        #[command(flatten)]
        dir: DataDir,
        #[command(flatten)]
        root: RootKey,
        /// Also revoke the key being replaced: versions it signed stop installing anywhere.
        #[arg(long)]
        revoke_old: bool,
    },
    /// Revoke a signing key by id (see `keys show`). The active key cannot be revoked: rotate.
    Revoke {
        /// Key id.
        id: String,
        #[command(flatten)]
        dir: DataDir,
        #[command(flatten)]
        root: RootKey,
    },
}

#[derive(Args, Debug)]
pub struct DataDir {
    /// The coordinator's data directory (keys live in <data-dir>/pki).
    #[arg(long)]
    data_dir: PathBuf,
    /// The coordinator's configuration, for its database when that is PostgreSQL: key changes
    /// are recorded in the audit log there (default: <data-dir>/coordinator.db).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RootKey {
    /// The root private key (default: <data-dir>/pki/model-root.key; keep it offline and pass
    /// its path here).
    #[arg(long)]
    root_key: Option<PathBuf>,
}

pub async fn run(command: KeysCommand) -> anyhow::Result<ExitCode> {
    let pki = |dir: &DataDir| PkiPaths::new(dir.data_dir.join("pki"));
    match command {
        KeysCommand::Show { dir, json } => {
            let paths = pki(&dir);
            let signed = signing_keys::load_set(&paths)?;
            if json {
                println!("{}", String::from_utf8_lossy(&signed.bytes));
                return Ok(ExitCode::SUCCESS);
            }
            let set = &signed.set;
            let active = signing_keys::active_key_id(&paths);
            let expired = if set.expires_unix_ms <= now_unix_ms() {
                "  EXPIRED: nodes refuse every version until `keys rotate` re-signs it"
            } else {
                ""
            };
            println!(
                "key set v{} signed {}, expires {}{expired}",
                set.version,
                show_unix_ms(set.created_unix_ms),
                show_unix_ms(set.expires_unix_ms)
            );
            println!(
                "root private key {}",
                if paths.root_key().exists() {
                    format!("present at {}", paths.root_key().display())
                } else {
                    "not on this machine (offline)".to_owned()
                }
            );
            for key in &set.keys {
                let state = if set.is_revoked(&key.id) {
                    "revoked"
                } else if active.as_deref() == Some(key.id.as_str()) {
                    "active"
                } else {
                    "trusted"
                };
                println!("  {}  {state:<8} {}", key.id, key.public_key);
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Rotate {
            dir,
            root,
            revoke_old,
        } => {
            let paths = pki(&dir);
            let root_key = root.root_key.unwrap_or_else(|| paths.root_key());
            let change = signing_keys::rotate(&paths, &root_key, revoke_old)?;
            report(&change);
            let subject = change.new_signing_key.clone().unwrap_or_default();
            record(&dir, "key.rotate", &subject, &change).await?;
            if !change.revoked.is_empty() {
                println!(
                    "versions signed by the revoked key no longer install (nor reload after a \
                     node restart): publish one signed by the new key, e.g. `backroom models \
                     rollback <lineage> <newest version>`, which re-signs the newest weights"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Revoke { id, dir, root } => {
            let paths = pki(&dir);
            let root_key = root.root_key.unwrap_or_else(|| paths.root_key());
            let change = signing_keys::revoke(&paths, &root_key, &id)?;
            report(&change);
            record(&dir, "key.revoke", &id, &change).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Records a key change in the coordinator's audit log (after it is on disk).
async fn record(
    dir: &DataDir,
    action: &str,
    subject: &str,
    change: &KeyChange,
) -> anyhow::Result<()> {
    let details = backroom_coordinator::audit::hooks::key_change_details(change);
    crate::audit_cli::record(
        &dir.data_dir,
        dir.config.as_deref(),
        action,
        subject,
        details,
    )
    .await
    .context("the key change is made but it is not in the audit log")
}

fn report(change: &KeyChange) {
    if let Some(id) = &change.new_signing_key {
        println!("new active signing key {id}");
    }
    for id in &change.revoked {
        println!("revoked {id}");
    }
    println!(
        "key set v{} written; it expires {}",
        change.set.set.version,
        show_unix_ms(change.set.set.expires_unix_ms)
    );
}
