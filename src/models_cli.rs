//! `backroom models`: the registry view (list, show), rollout (promote, rollback), and the
//! offline checks (verify, export) that run a node's verification on files.

use std::path::PathBuf;
use std::process::ExitCode;

use backroom::evaluate::{export_version, load_verifying_key, verify_parts};
use backroom_coordinator::budget::format_epsilon;
use backroom_models::manifest::Manifest;
use backroom_models::verify::SignedManifestFile;
use backroom_proto::v1 as pb;
use clap::{Args, Subcommand, ValueEnum};

use crate::time_arg::show_unix_ms;
use crate::{Connection, connect, status};

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Published versions: lineage, parent, round, who started it, ε spent, channel.
    List {
        #[command(flatten)]
        connection: Connection,
        /// Only this lineage.
        #[arg(long, default_value = "")]
        lineage: String,
    },
    /// One version in full: its manifest, provenance and where it is rolled out.
    Show {
        lineage: String,
        version: u64,
        #[command(flatten)]
        connection: Connection,
    },
    /// Point a rollout channel at a version. `--channel canary --percent 10` reaches a
    /// deterministic 10% of stores (the same ones every time; raising the percentage only adds
    /// stores); `--channel stable` reaches the rest and clears a canary it catches up with.
    Promote {
        lineage: String,
        version: u64,
        #[arg(long, value_enum, default_value_t = Channel::Stable)]
        channel: Channel,
        /// Canary only: share of stores, 1 to 100.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
        percent: Option<u32>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Publish a new version carrying VERSION's weights and make it stable (stores never install
    /// an older version number, so going back means going forward with old weights).
    Rollback {
        lineage: String,
        /// The version whose weights to restore.
        version: u64,
        #[command(flatten)]
        connection: Connection,
    },
    /// Run a node's checks on a signed manifest file and weights, offline; exits non-zero with
    /// the reason on any failure.
    Verify(VerifyArgs),
    /// Write a version's signed manifest, its weights (safetensors) and the trusted root key
    /// from a coordinator's data directory, and print their paths.
    Export(ExportArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Channel {
    Stable,
    Canary,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Signed manifest file (from `backroom models export`).
    #[arg(long)]
    manifest: PathBuf,
    /// Weights (safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// The model root public key nodes are enrolled with (PEM).
    #[arg(long)]
    trusted_root: PathBuf,
    /// Lineage the node runs (default: the manifest's own).
    #[arg(long)]
    lineage: Option<String>,
    /// Version the node has installed: anything not newer is refused as a rollback.
    #[arg(long, default_value_t = 0)]
    installed_version: u64,
    /// Print the verdict as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The coordinator's data directory (or a pilot's `--data-dir`/coordinator).
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long)]
    lineage: String,
    #[arg(long)]
    version: u64,
    /// Directory to write into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Print `{"manifest": .., "weights": .., "root": ..}`.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: ModelsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ModelsCommand::List {
            connection,
            lineage,
        } => list(&connection, lineage).await,
        ModelsCommand::Show {
            lineage,
            version,
            connection,
        } => show(&connection, lineage, version).await,
        ModelsCommand::Promote {
            lineage,
            version,
            channel,
            percent,
            connection,
        } => {
            let (channel, percent) = match (channel, percent) {
                (Channel::Stable, Some(_)) => {
                    anyhow::bail!("--percent is for --channel canary; stable reaches every store")
                }
                (Channel::Stable, None) => ("stable", 0),
                (Channel::Canary, None) => anyhow::bail!("--channel canary needs --percent"),
                (Channel::Canary, Some(p)) => ("canary", p),
            };
            let mut admin = connect(&connection).await?;
            let channels = admin
                .promote_model(pb::PromoteModelRequest {
                    lineage,
                    version,
                    channel: channel.to_owned(),
                    percent,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_channels(&channels);
            Ok(ExitCode::SUCCESS)
        }
        ModelsCommand::Rollback {
            lineage,
            version,
            connection,
        } => {
            let mut admin = connect(&connection).await?;
            let published = admin
                .rollback_model(pb::RollbackModelRequest {
                    lineage: lineage.clone(),
                    to_version: version,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "published {lineage} v{} with the weights of v{version}; stable now points at it",
                published.version
            );
            Ok(ExitCode::SUCCESS)
        }
        ModelsCommand::Verify(args) => verify(args),
        ModelsCommand::Export(args) => {
            let files = export_version(&args.data_dir, &args.lineage, args.version, &args.out)?;
            if args.json {
                println!("{}", serde_json::to_string(&files)?);
            } else {
                println!("manifest {}", files.manifest.display());
                println!("weights  {}", files.weights.display());
                println!("root     {}", files.root.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
    };
    let parts = SignedManifestFile::parse(&read(&args.manifest)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.manifest.display()))?;
    let weights = read(&args.weights)?;
    let root = load_verifying_key(&args.trusted_root)?;
    let verdict = verify_parts(
        &parts,
        &weights,
        &root,
        args.lineage.as_deref(),
        args.installed_version,
    );
    match verdict {
        Ok(release) => {
            let m = &release.manifest;
            if args.json {
                let out = serde_json::json!({
                    "ok": true,
                    "lineage": m.lineage,
                    "version": m.version,
                    "signed_by": release.signed_by,
                    "key_set_version": release.key_set.signed.set.version,
                    "weights_sha256": m.weights_sha256,
                    "num_parameters": m.num_parameters,
                });
                println!("{out}");
            } else {
                println!(
                    "OK: {} v{} ({} parameters, sha256 {}) signed by key {} of key set v{}, \
                     expires {}",
                    m.lineage,
                    m.version,
                    m.num_parameters,
                    m.weights_sha256,
                    release.signed_by,
                    release.key_set.signed.set.version,
                    show_unix_ms(m.expires_unix_ms)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(refusal) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "reason": refusal.to_string()})
                );
            } else {
                eprintln!("REFUSED: {refusal}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn list(connection: &Connection, lineage: String) -> anyhow::Result<ExitCode> {
    let mut admin = connect(connection).await?;
    let models = versions(&mut admin, &lineage).await?;
    let mut channels = std::collections::HashMap::new();
    for m in &models {
        if !channels.contains_key(&m.lineage) {
            let c = channels_of(&mut admin, &m.lineage).await?;
            channels.insert(m.lineage.clone(), c);
        }
    }
    println!(
        "{:<12} {:>7} {:>6}  {:<26} {:<16} {:>8}  {:<12} created",
        "lineage", "version", "parent", "round", "by", "ε", "channel"
    );
    for m in models {
        let manifest = Manifest::from_bytes(&m.manifest).ok();
        let epsilon = manifest
            .as_ref()
            .and_then(|m| m.epsilon_spent)
            .map_or_else(|| "-".to_owned(), format_epsilon);
        let round = match manifest.as_ref().and_then(|m| m.rollback_of) {
            Some(of) => format!("(rollback to v{of})"),
            None if m.round_id.is_empty() => "(initial)".to_owned(),
            None => m.round_id.clone(),
        };
        let by = if m.started_by.is_empty() {
            m.published_by.clone()
        } else {
            m.started_by.clone()
        };
        println!(
            "{:<12} {:>7} {:>6}  {:<26} {:<16} {:>8}  {:<12} {}",
            m.lineage,
            m.version,
            m.parent_version,
            round,
            if by.is_empty() { "-" } else { &by },
            epsilon,
            channel_of(channels.get(&m.lineage), m.version),
            show_unix_ms(m.created_unix_ms)
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn versions(
    admin: &mut backroom::client::AdminClient,
    lineage: &str,
) -> anyhow::Result<Vec<pb::ModelVersion>> {
    Ok(admin
        .list_models(pb::ListModelsRequest {
            lineage: lineage.to_owned(),
        })
        .await
        .map_err(status)?
        .into_inner()
        .models)
}

async fn channels_of(
    admin: &mut backroom::client::AdminClient,
    lineage: &str,
) -> anyhow::Result<pb::ModelChannels> {
    Ok(admin
        .get_model_channels(pb::GetModelChannelsRequest {
            lineage: lineage.to_owned(),
        })
        .await
        .map_err(status)?
        .into_inner())
}

fn channel_of(channels: Option<&pb::ModelChannels>, version: u64) -> String {
    let Some(c) = channels else {
        return String::new();
    };
    if c.canary_version == version {
        format!("canary {}%", c.canary_percent)
    } else if c.stable_version == version {
        "stable".to_owned()
    } else {
        String::new()
    }
}

async fn show(connection: &Connection, lineage: String, version: u64) -> anyhow::Result<ExitCode> {
    let mut admin = connect(connection).await?;
    let models = versions(&mut admin, &lineage).await?;
    let Some(model) = models.into_iter().find(|m| m.version == version) else {
        anyhow::bail!("lineage {lineage:?} has no version {version}");
    };
    let channels = channels_of(&mut admin, &lineage).await?;
    let manifest = Manifest::from_bytes(&model.manifest)
        .map_err(|e| anyhow::anyhow!("stored manifest does not parse: {e}"))?;
    println!("{lineage} v{version}");
    println!("  parent        v{}", manifest.parent_version);
    match manifest.rollback_of {
        Some(of) => println!(
            "  rollback of   v{of} (published by {})",
            model.published_by
        ),
        None if manifest.round_id.is_empty() => println!("  round         (initial)"),
        None => println!(
            "  round         {} (started by {})",
            manifest.round_id, model.started_by
        ),
    }
    println!("  architecture  {}", manifest.architecture);
    println!("  parameters    {}", manifest.num_parameters);
    println!(
        "  weights       {} bytes, sha256 {}",
        manifest.weights_size, manifest.weights_sha256
    );
    if let Some(dp) = &manifest.dp {
        println!(
            "  dp            clip norm {}, noise multiplier {}, q {}",
            dp.clip_norm,
            dp.noise_multiplier,
            dp.sampling_rate
                .map_or_else(|| "-".to_owned(), |q| q.to_string())
        );
    }
    println!(
        "  ε spent       {}{}",
        manifest
            .epsilon_spent
            .map_or_else(|| "-".to_owned(), format_epsilon),
        manifest
            .delta
            .map_or_else(String::new, |d| format!(" at δ = {d:e}"))
    );
    println!("  created       {}", show_unix_ms(manifest.created_unix_ms));
    println!("  expires       {}", show_unix_ms(manifest.expires_unix_ms));
    let channel = channel_of(Some(&channels), version);
    println!(
        "  channel       {}",
        if channel.is_empty() { "-" } else { &channel }
    );
    Ok(ExitCode::SUCCESS)
}

fn print_channels(c: &pb::ModelChannels) {
    println!("{}: stable v{}", c.lineage, c.stable_version);
    if c.canary_version > 0 {
        println!(
            "{}: canary v{} to {}% of stores",
            c.lineage, c.canary_version, c.canary_percent
        );
    }
}
