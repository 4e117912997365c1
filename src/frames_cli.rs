//! `backroom frames`: audited requests for a store's redacted frames. An ML engineer (admin
//! bundle) requests and downloads; a privacy officer (privacy-officer bundle) approves or
//! denies. Every step is recorded in the request's history.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::time_arg::{CaptureWindow, show_unix_ms};
use anyhow::Context;
use backroom::{client, frames};
use backroom_proto::v1 as pb;
use clap::{Args, Subcommand};

use crate::{Connection, connect, status};

#[derive(Args, Debug)]
pub struct FramesArgs {
    #[command(subcommand)]
    command: FramesCommand,
}

#[derive(Subcommand, Debug)]
enum FramesCommand {
    /// Create the key pair an export is sealed to: the secret key in --out (mode 0600), the
    /// public key in <out>.pub (give that to `frames request`).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Ask for a capture-time window (at most 24 hours) of one store's redacted frames (needs a
    /// privacy officer's approval; admin bundle).
    Request {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        store: String,
        #[command(flatten)]
        window: CaptureWindow,
        /// Why (recorded and shown to the privacy officer).
        #[arg(long)]
        reason: String,
        /// Public key file from `frames keygen`.
        #[arg(long)]
        recipient_key: PathBuf,
        /// How long the request and its export live.
        #[arg(long, default_value_t = 24)]
        expires_in_hours: u32,
    },
    /// Every frame request with its history (admin bundle).
    List {
        #[command(flatten)]
        connection: Connection,
    },
    /// Every frame request with its history (privacy-officer bundle).
    Review {
        #[command(flatten)]
        connection: Connection,
    },
    /// Approve a pending request (privacy-officer bundle).
    Approve {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Deny a pending request (privacy-officer bundle).
    Deny {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        id: String,
        #[arg(long)]
        note: String,
    },
    /// Download a delivered request's frames and open them with your secret key (the
    /// requester's admin bundle); writes <camera>-<captured ms>.jpg files into --out.
    Download {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        id: String,
        /// Secret key file from `frames keygen`.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

fn render(request: &pb::FrameRequest) -> String {
    let camera = request
        .camera_id
        .map_or_else(|| "all cameras".to_owned(), |c| format!("camera {c}"));
    let mut out = format!(
        "{}  {}  {}  {} .. {} ({camera})\n  requested by {}: {}\n  expires {}",
        request.request_id,
        request.state,
        request.store_id,
        show_unix_ms(request.from_unix_ms),
        show_unix_ms(request.to_unix_ms),
        request.requested_by,
        request.reason,
        show_unix_ms(request.expires_unix_ms),
    );
    if request.state == "delivered" {
        out.push_str(&format!(
            "; {} frame(s), {} sealed bytes",
            request.frames, request.export_bytes
        ));
    }
    for event in &request.history {
        out.push_str(&format!(
            "\n    {}  {:<16} {}{}",
            show_unix_ms(event.at_unix_ms),
            event.action,
            event.actor,
            if event.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", event.detail)
            }
        ));
    }
    out
}

async fn privacy_client(connection: &Connection) -> anyhow::Result<client::PrivacyClient> {
    client::privacy(
        &connection.coordinator,
        &connection.server_name,
        &connection.bundle,
    )
    .await
}

pub async fn run(args: FramesArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        FramesCommand::Keygen { out } => {
            let public =
                tokio::task::spawn_blocking(move || frames::keygen(&out).map(|k| (k, out)))
                    .await
                    .context("key generation task failed")??;
            println!(
                "secret key written to {} (mode 0600); public key {} in {}",
                public.1.display(),
                hex_encode(&public.0),
                frames::public_key_path(&public.1).display()
            );
        }
        FramesCommand::Request {
            connection,
            store,
            window,
            reason,
            recipient_key,
            expires_in_hours,
        } => {
            let (from_unix_ms, to_unix_ms) = window.unix_ms()?;
            let camera = window.camera;
            let key = frames::read_public_key(&recipient_key)?;
            let mut admin = connect(&connection).await?;
            let request = admin
                .request_frames(pb::RequestFramesRequest {
                    store_id: store,
                    camera_id: camera,
                    from_unix_ms,
                    to_unix_ms,
                    reason,
                    recipient_public_key: key.to_vec(),
                    expires_in_secs: expires_in_hours.saturating_mul(3600),
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", render(&request));
            println!(
                "a privacy officer must approve it: backroom frames approve --id {}",
                request.request_id
            );
        }
        FramesCommand::List { connection } => {
            let mut admin = connect(&connection).await?;
            let list = admin
                .list_frame_requests(pb::ListFrameRequestsRequest {})
                .await
                .map_err(status)?
                .into_inner();
            print_list(&list);
        }
        FramesCommand::Review { connection } => {
            let mut officer = privacy_client(&connection).await?;
            let list = officer
                .list_frame_requests(pb::ListFrameRequestsRequest {})
                .await
                .map_err(status)?
                .into_inner();
            print_list(&list);
        }
        FramesCommand::Approve {
            connection,
            id,
            note,
        } => decide(&connection, id, true, note).await?,
        FramesCommand::Deny {
            connection,
            id,
            note,
        } => decide(&connection, id, false, note).await?,
        FramesCommand::Download {
            connection,
            id,
            key,
            out,
        } => {
            let mut admin = connect(&connection).await?;
            let export = frames::download(&mut admin, &id, &key).await?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            for frame in &export.frames {
                let path = out.join(format!(
                    "{}-{}.jpg",
                    frame.camera_id, frame.captured_unix_ms
                ));
                std::fs::write(&path, &frame.jpeg)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            println!(
                "{} redacted frame(s) of {} written to {}",
                export.frames.len(),
                export.store_id,
                out.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn decide(
    connection: &Connection,
    id: String,
    approve: bool,
    note: String,
) -> anyhow::Result<()> {
    let mut officer = privacy_client(connection).await?;
    let request = officer
        .decide_frame_request(pb::DecideFrameRequestRequest {
            request_id: id,
            approve,
            note,
        })
        .await
        .map_err(status)?
        .into_inner();
    println!("{}", render(&request));
    Ok(())
}

fn print_list(list: &pb::ListFrameRequestsResponse) {
    if list.requests.is_empty() {
        println!("no frame requests");
    }
    for request in &list.requests {
        println!("{}\n", render(request));
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
