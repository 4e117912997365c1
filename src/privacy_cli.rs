//! `backroom privacy`: plan budgets offline (`privacy epsilon`) and read a lineage's ledger from
//! the coordinator (`privacy <lineage>`).

use std::process::ExitCode;

use backroom_coordinator::budget::{format_epsilon, format_multiplier};
use backroom_coordinator::privacy::{DpEvent, compute_epsilon};
use backroom_proto::v1 as pb;
use clap::{Args, Subcommand};

use crate::{Connection, connect, status};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PrivacyArgs {
    #[command(subcommand)]
    command: Option<PrivacyCommand>,
    /// Show this lineage's budget, ε spent and ledger (from the coordinator).
    lineage: Option<String>,
    #[command(flatten)]
    connection: Option<Connection>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum PrivacyCommand {
    /// ε of T rounds of DP-FedAvg (Poisson-subsampled Gaussian), to plan a budget before
    /// starting rounds. Prints the smaller of the RDP and PLD bounds.
    Epsilon(EpsilonArgs),
}

#[derive(Args, Debug)]
struct EpsilonArgs {
    /// Probability q that a store takes part in a round (clients per round / population).
    #[arg(long)]
    sampling_rate: f64,
    /// Noise multiplier z (noise std = z × clip norm).
    #[arg(long)]
    noise_multiplier: f64,
    /// Number of rounds T.
    #[arg(long)]
    rounds: u64,
    /// Target δ.
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// Print `{"epsilon": ...}` (plus both bounds) as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: PrivacyArgs) -> anyhow::Result<ExitCode> {
    match (args.command, args.lineage) {
        (Some(PrivacyCommand::Epsilon(epsilon)), _) => plan(epsilon).await,
        (None, Some(lineage)) => {
            let connection = args.connection.ok_or_else(|| {
                anyhow::anyhow!("pass --bundle (or BACKROOM_BUNDLE) to reach the coordinator")
            })?;
            show(&connection, lineage, args.json).await
        }
        (None, None) => anyhow::bail!(
            "say which lineage to show (`backroom privacy shelfnet --bundle DIR`) or plan one \
             with `backroom privacy epsilon --sampling-rate Q --noise-multiplier Z --rounds T`"
        ),
    }
}

async fn plan(args: EpsilonArgs) -> anyhow::Result<ExitCode> {
    let event = DpEvent {
        sampling_rate: args.sampling_rate,
        noise_multiplier: args.noise_multiplier,
        rounds: args.rounds,
    };
    let delta = args.delta;
    let report = tokio::task::spawn_blocking(move || compute_epsilon(&[event], delta))
        .await
        .map_err(|e| anyhow::anyhow!("accounting task failed: {e}"))??;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "epsilon": json_number(report.epsilon),
                "delta": report.delta,
                "rdp_epsilon": json_number(report.rdp_epsilon),
                "rdp_order": report.rdp_order,
                "pld_epsilon": report.pld_epsilon.and_then(json_number),
            })
        );
    } else {
        println!(
            "ε = {} at δ = {:e} after {} round(s) with sampling rate {} and noise multiplier {}",
            format_epsilon(report.epsilon),
            report.delta,
            args.rounds,
            args.sampling_rate,
            args.noise_multiplier
        );
        let pld = report
            .pld_epsilon
            .map_or_else(|| "not computed".to_owned(), format_epsilon);
        println!(
            "  (RDP bound {} at order {}, PLD bound {pld})",
            format_epsilon(report.rdp_epsilon),
            report.rdp_order
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// JSON has no infinity: an infinite ε is written as null.
fn json_number(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}

async fn show(connection: &Connection, lineage: String, json: bool) -> anyhow::Result<ExitCode> {
    let mut admin = connect(connection).await?;
    let report = admin
        .get_privacy(pb::GetPrivacyRequest { lineage })
        .await
        .map_err(status)?
        .into_inner();
    if json {
        let ledger: Vec<_> = report
            .ledger
            .iter()
            .map(|e| {
                serde_json::json!({
                    "round_id": e.round_id, "sampling_rate": e.sampling_rate,
                    "noise_multiplier": e.noise_multiplier, "status": e.status,
                    "epsilon_after": e.epsilon_after,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "lineage": report.lineage, "epsilon_max": report.epsilon_max,
                "delta": report.delta, "epsilon_spent": report.epsilon_spent,
                "rdp_epsilon": report.rdp_epsilon, "pld_epsilon": report.pld_epsilon,
                "rounds_charged": report.rounds_charged,
                "rounds_remaining": report.rounds_remaining, "ledger": ledger,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let spent = report
        .epsilon_spent
        .map_or_else(|| "∞ (a round without noise)".to_owned(), format_epsilon);
    let spent = if report.rounds_charged == 0 {
        "0".to_owned()
    } else {
        spent
    };
    let budget = report
        .epsilon_max
        .map_or_else(|| "no budget".to_owned(), format_epsilon);
    println!("lineage {}", report.lineage);
    println!(
        "  ε spent {spent} of {budget} at δ = {:e}, over {} charged round(s)",
        report.delta, report.rounds_charged
    );
    if let Some(remaining) = report.rounds_remaining {
        println!("  {remaining} more round(s) fit at the last round's sampling rate and noise");
    }
    println!(
        "  {:<28} {:>9} {:>7} {:<9} ε after",
        "round", "q", "z", "status"
    );
    for e in &report.ledger {
        println!(
            "  {:<28} {:>9.4} {:>7} {:<9} {}",
            e.round_id,
            e.sampling_rate,
            format_multiplier(e.noise_multiplier),
            e.status,
            e.epsilon_after
                .map_or_else(|| "∞".to_owned(), format_epsilon)
        );
    }
    Ok(ExitCode::SUCCESS)
}
