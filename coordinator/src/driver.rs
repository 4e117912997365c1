//! Drives one round through its states. Each step reads the round from the database, so a
//! driver started after a restart resumes exactly where the last durable transition left it.

use std::sync::Arc;
use std::time::Duration;

use backroom_models::manifest::DpParameters;
use rand::seq::SliceRandom;
use tracing::{error, info, warn};

use crate::aggregate::{DpFedAvg, l2_norm, read_update_blob};
use crate::core::Core;
use crate::error::{CoordinatorError, Result};
use crate::registry::{Provenance, now_unix_ms};
use crate::round::{RoundRecord, RoundState};

/// Runs the round's driver in the background.
pub fn spawn(core: Arc<Core>, round_id: String) {
    tokio::spawn(async move {
        if let Err(error) = drive(&core, &round_id).await {
            error!(round_id, %error, "round failed");
            if let Ok(round) = core.round(&round_id).await
                && !round.state.is_final()
            {
                let reason = error.to_string();
                let _ = core
                    .store
                    .transition(
                        &round_id,
                        round.state,
                        RoundState::Failed,
                        &reason,
                        now_unix_ms(),
                    )
                    .await;
            }
            core.notify();
        }
    });
}

async fn drive(core: &Arc<Core>, round_id: &str) -> Result<()> {
    loop {
        if core.is_shutting_down() {
            return Ok(());
        }
        let round = core.round(round_id).await?;
        match round.state {
            RoundState::Pending => {
                move_to(core, &round, RoundState::Sampling, "").await?;
            }
            RoundState::Sampling => sample(core, &round).await?,
            RoundState::Training => wait_for_updates(core, &round).await?,
            RoundState::Aggregating => aggregate(core, &round).await?,
            RoundState::Published | RoundState::Failed | RoundState::Cancelled => return Ok(()),
        }
    }
}

async fn move_to(core: &Core, round: &RoundRecord, to: RoundState, reason: &str) -> Result<()> {
    if core
        .store
        .transition(&round.round_id, round.state, to, reason, now_unix_ms())
        .await?
    {
        info!(round_id = %round.round_id, from = round.state.as_str(), to = to.as_str(), reason, "round moved");
        core.notify();
    }
    Ok(())
}

async fn sample(core: &Core, round: &RoundRecord) -> Result<()> {
    let mut changes = core.subscribe();
    let online_window = i64::try_from(core.settings.online_window.as_millis()).unwrap_or(i64::MAX);
    let give_up_at = round.created_unix_ms
        + i64::try_from(core.settings.sampling_timeout.as_millis()).unwrap_or(i64::MAX);
    loop {
        changes.borrow_and_update();
        let now = now_unix_ms();
        let mut online = core
            .store
            .online_nodes(&round.lineage, now - online_window)
            .await?;
        let min = round.spec.min_clients as usize;
        if online.len() >= min {
            // Over-select to absorb stragglers.
            let want = (f64::from(round.spec.target_clients) * f64::from(core.settings.overselect))
                .ceil() as usize;
            online.shuffle(&mut rand::rng());
            online.truncate(want.max(min));
            online.sort();
            let deadline = now + i64::from(round.spec.deadline_secs) * 1000;
            if core
                .store
                .start_training(&round.round_id, &online, deadline, now)
                .await?
            {
                info!(round_id = %round.round_id, sampled = ?online, "round sampled");
                core.notify();
            }
            return Ok(());
        }
        if now >= give_up_at {
            let reason = format!(
                "only {} node(s) online within the sampling timeout, minimum is {min}",
                online.len()
            );
            return move_to(core, round, RoundState::Failed, &reason).await;
        }
        if core.round(&round.round_id).await?.state != RoundState::Sampling {
            return Ok(());
        }
        core.wait_for_change(&mut changes, Duration::from_millis(500))
            .await;
        if core.is_shutting_down() {
            return Ok(());
        }
    }
}

async fn wait_for_updates(core: &Core, round: &RoundRecord) -> Result<()> {
    let mut changes = core.subscribe();
    loop {
        changes.borrow_and_update();
        let current = core.round(&round.round_id).await?;
        if current.state != RoundState::Training {
            return Ok(());
        }
        let accepted = current.updates_accepted as usize;
        let now = now_unix_ms();
        let everyone_answered = accepted >= current.sampled_nodes.len();
        let enough = accepted >= current.spec.target_clients as usize;
        if enough || everyone_answered || now >= current.training_deadline_unix_ms {
            let min = current.spec.min_clients as usize;
            return if accepted >= min {
                move_to(core, &current, RoundState::Aggregating, "").await
            } else {
                let reason =
                    format!("only {accepted} valid update(s) by the deadline, minimum is {min}");
                move_to(core, &current, RoundState::Failed, &reason).await
            };
        }
        let remaining = u64::try_from(current.training_deadline_unix_ms - now).unwrap_or(0);
        core.wait_for_change(&mut changes, Duration::from_millis(remaining.min(1000)))
            .await;
        if core.is_shutting_down() {
            return Ok(());
        }
    }
}

async fn aggregate(core: &Arc<Core>, round: &RoundRecord) -> Result<()> {
    let base = core
        .store
        .version(&round.lineage, round.base_version)
        .await?
        .ok_or_else(|| {
            CoordinatorError::Internal(format!("base version {} is missing", round.base_version))
        })?;
    let latest = core
        .store
        .latest_version(&round.lineage)
        .await?
        .map_or(0, |v| v.version);
    let updates = core.store.updates(&round.round_id).await?;
    let registry = core.registry.clone();
    let spec = round.spec.clone();
    let round_id = round.round_id.clone();
    let lineage = round.lineage.clone();
    let started = std::time::Instant::now();
    let row = tokio::task::spawn_blocking(move || -> Result<_> {
        let base_params = registry.load_params(&base)?;
        let n = base_params.len();
        let mut sum = DpFedAvg::new(n);
        for update in &updates {
            let delta = read_update_blob(std::path::Path::new(&update.blob_path), n)?;
            let digest = backroom_models::manifest::sha256_hex(
                &delta.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
            );
            if digest != update.sha256 {
                return Err(CoordinatorError::Internal(format!(
                    "stored update {} does not match its recorded SHA-256",
                    update.blob_path
                )));
            }
            // Never trust a stored norm either: re-check before the delta is summed.
            let norm = l2_norm(&delta);
            if norm > f64::from(spec.clip_norm) {
                warn!(round_id, node_id = %update.node_id, norm, "stored update above clip norm skipped");
                continue;
            }
            sum.add(&delta)?;
        }
        let clients = u32::try_from(sum.count()).unwrap_or(u32::MAX);
        if (clients as usize) < spec.min_clients as usize {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "only {clients} valid update(s), minimum is {}",
                spec.min_clients
            )));
        }
        let mean = sum.finish(
            spec.clip_norm,
            spec.noise_multiplier,
            spec.target_clients as usize,
        )?;
        let params: Vec<f32> = base_params.iter().zip(&mean).map(|(b, d)| b + d).collect();
        let provenance = Provenance {
            round_id: round_id.clone(),
            parent_version: base.version,
            dp: Some(DpParameters {
                clip_norm: spec.clip_norm,
                noise_multiplier: spec.noise_multiplier,
                clients,
            }),
        };
        registry.write_version(&lineage, latest + 1, &provenance, &params)
    })
    .await
    .map_err(|e| CoordinatorError::Internal(format!("aggregation task failed: {e}")))??;
    let version = row.version;
    if core
        .store
        .publish(&round.round_id, &row, now_unix_ms())
        .await?
    {
        info!(
            round_id = %round.round_id,
            version,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "round published a new model version"
        );
        core.notify();
    }
    Ok(())
}
