//! `backroom node-data`: an operator's view of a store node's encrypted local store, run on the
//! store's machine against the node's data directory (the node may keep running).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::time_arg::{CaptureWindow, show_unix_ms};
use backroom_store_node::local_store::{self, DeletionRecord, DeletionRequest};
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct NodeDataArgs {
    #[command(subcommand)]
    command: NodeDataCommand,
}

#[derive(Args, Debug)]
struct Store {
    /// The node's data directory (holds node.db and frames/).
    #[arg(long)]
    data_dir: PathBuf,
    /// The local store's key file (default: <data-dir>/local-store.key).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum NodeDataCommand {
    /// What the store holds: frame events and kept images, and the deletion log.
    Show {
        #[command(flatten)]
        store: Store,
    },
    /// Delete every frame event and image captured in [--from, --to) (optionally of one
    /// camera), and record the request in the deletion log. Released metric windows are noised
    /// aggregates and are not touched.
    Delete {
        #[command(flatten)]
        store: Store,
        #[command(flatten)]
        window: CaptureWindow,
        /// Who asked (recorded).
        #[arg(long)]
        requested_by: String,
        /// Why (recorded), e.g. a ticket number.
        #[arg(long)]
        reason: String,
    },
}

fn render(record: &DeletionRecord) -> String {
    let camera = record
        .camera_id
        .map_or_else(|| "all cameras".to_owned(), |c| format!("camera {c}"));
    format!(
        "#{:<4} {:<9} {} .. {} ({camera}): {} frame(s), {} image(s) deleted at {} by {:?}: {}",
        record.id,
        record.kind,
        show_unix_ms(record.from_unix_ms),
        show_unix_ms(record.to_unix_ms),
        record.frames_deleted,
        record.images_deleted,
        show_unix_ms(record.done_unix_ms),
        record.requested_by,
        record.reason
    )
}

pub async fn run(args: NodeDataArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        NodeDataCommand::Show { store } => {
            let key = key_file(&store);
            let local = local_store::open_existing(&store.data_dir, &key).await?;
            let (frames, images) = local.counts().await?;
            let deletions = local.deletions().await?;
            if store.json {
                let value = serde_json::json!({
                    "frames": frames,
                    "images": images,
                    "deletions": deletions,
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!(
                    "{frames} frame event(s), {images} kept image(s) in {}",
                    store.data_dir.display()
                );
                println!("deletion log ({} entries):", deletions.len());
                for record in &deletions {
                    println!("  {}", render(record));
                }
            }
        }
        NodeDataCommand::Delete {
            store,
            window,
            requested_by,
            reason,
        } => {
            let (from_unix_ms, to_unix_ms) = window.unix_ms()?;
            let camera = window.camera;
            anyhow::ensure!(from_unix_ms < to_unix_ms, "--from must be before --to");
            anyhow::ensure!(
                !requested_by.trim().is_empty(),
                "--requested-by must not be empty"
            );
            anyhow::ensure!(!reason.trim().is_empty(), "--reason must not be empty");
            let key = key_file(&store);
            let local = local_store::open_existing(&store.data_dir, &key).await?;
            let request = DeletionRequest {
                camera_id: camera,
                from_unix_ms,
                to_unix_ms,
                requested_by,
                reason,
            };
            let record = local
                .delete_matching(&request, crate::time_arg::now_unix_ms())
                .await?;
            if store.json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                println!("{}", render(&record));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn key_file(store: &Store) -> PathBuf {
    store
        .key_file
        .clone()
        .unwrap_or_else(|| store.data_dir.join("local-store.key"))
}
