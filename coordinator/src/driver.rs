//! Drives one round through its states. Each step reads the round from the database, so a
//! driver started after a restart resumes exactly where the last durable transition left it.

use std::sync::Arc;
use std::time::Duration;

use backroom_models::manifest::DpParameters;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use tracing::{error, info, warn};

use crate::aggregate::{DpFedAvg, decode_update_blob, l2_norm};
use crate::core::Core;
use crate::error::{CoordinatorError, Result};
use crate::ledger::charged_events;
use crate::privacy::compute_epsilon;
use crate::registry::{Provenance, now_unix_ms};
use crate::round::{RoundRecord, RoundState, Strategy};
use crate::strategy;

/// Runs the round's driver in the background, if no driver of this process runs it yet. The
/// driver first takes the round's lease: with several replicas on one database, only the
/// holder drives it (see [`drive_leased`]).
pub fn spawn(core: Arc<Core>, round_id: String) -> bool {
    if !core.start_driving(&round_id) {
        return false;
    }
    tokio::spawn(async move {
        let outcome = drive_leased(&core, &round_id).await;
        core.stop_driving(&round_id);
        if let Err(error) = outcome {
            error!(round_id, %error, "round failed");
            fail_round(&core, &round_id, &error.to_string()).await;
            core.notify();
        }
    });
    true
}

/// Drives the round while holding its lease, renewed every third of its length. A round whose
/// lease another live replica holds is left to it; a lease lost (this process stalled past its
/// expiry and another replica took the round over) stops this driver at once. Every step is a
/// conditional transition read back from the database, so the replica that takes over resumes
/// from the last durable state and no step happens twice.
async fn drive_leased(core: &Arc<Core>, round_id: &str) -> Result<()> {
    let owner = core.settings.replica_id.clone();
    let ttl = core.settings.round_lease;
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let now = now_unix_ms();
    if !core
        .store
        .acquire_round_lease(round_id, &owner, now, now + ttl_ms)
        .await?
    {
        tracing::debug!(round_id, "round driven by another replica");
        return Ok(());
    }
    info!(round_id, replica = %owner, "driving the round (lease taken)");
    // Whoever waits on the round (polls, watchers, here and in other replicas) looks again: a
    // replica taking a round over may be the first to tell of its last transition.
    core.notify();
    let (lost_tx, mut lost) = tokio::sync::watch::channel(false);
    let renewal = {
        let core = Arc::clone(core);
        let round_id = round_id.to_owned();
        let owner = owner.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                let now = now_unix_ms();
                match core
                    .store
                    .acquire_round_lease(&round_id, &owner, now, now + ttl_ms)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = lost_tx.send(true);
                        return;
                    }
                    // Kept trying: the lease holds until it expires.
                    Err(error) => warn!(round_id, %error, "cannot renew the round's lease"),
                }
            }
        })
    };
    let outcome = tokio::select! {
        outcome = drive(core, round_id) => outcome,
        _ = lost.wait_for(|lost| *lost) => {
            warn!(round_id, "another replica took the round's lease over; this one stopped driving it");
            Ok(())
        }
    };
    renewal.abort();
    // A finished round needs no lease; an unfinished one (shutdown) is free for another replica
    // at once instead of after its expiry.
    if let Err(error) = core.store.release_round_lease(round_id, &owner).await {
        warn!(round_id, %error, "cannot release the round's lease; it expires by itself");
    }
    outcome
}

/// Until shutdown: starts a driver for every unfinished round that no replica holds the lease
/// of (its holder died, or stopped), every half lease.
pub async fn run_lease_sweeper(core: Arc<Core>) {
    let every = (core.settings.round_lease / 2).max(Duration::from_millis(200));
    loop {
        if core.wait_shutdown(every).await {
            return;
        }
        match core.store.unleased_unfinished_rounds(now_unix_ms()).await {
            Ok(rounds) => {
                for round_id in rounds {
                    if spawn(Arc::clone(&core), round_id.clone()) {
                        info!(round_id, "found a round no replica drives");
                    }
                }
            }
            Err(error) => warn!(%error, "cannot look for rounds without a driver"),
        }
    }
}

/// Moves a round whose driver hit an error to `failed` (settling its ledger entry), retrying a
/// few times so a passing database hiccup does not leave the lineage blocked by an unfinished
/// round until the next restart (which would resume it).
async fn fail_round(core: &Core, round_id: &str, reason: &str) {
    for attempt in 1..=5u32 {
        let outcome = match core.round(round_id).await {
            Ok(round) if round.state.is_final() => return,
            Ok(round) => {
                core.store
                    .transition(
                        round_id,
                        round.state,
                        RoundState::Failed,
                        reason,
                        now_unix_ms(),
                    )
                    .await
            }
            Err(error) => Err(error),
        };
        match outcome {
            Ok(true) => {
                crate::audit::hooks::round_failed(core, round_id, reason).await;
                return;
            }
            // Moved concurrently (e.g. cancelled): re-read.
            Ok(false) => continue,
            Err(error) => {
                warn!(round_id, attempt, %error, "cannot mark the round failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
        }
    }
    error!(
        round_id,
        "could not mark the round failed; it resumes when the coordinator restarts"
    );
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
        if to == RoundState::Failed {
            crate::audit::hooks::round_failed(core, &round.round_id, reason).await;
        }
        // Only a round leaving training changes what a long poll answers (its task goes);
        // tasks appear with sampling (`start_training`) and versions with publication, which
        // wake the polls themselves.
        if round.state == RoundState::Training {
            core.notify();
        } else {
            core.notify_round_progress();
        }
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
            // Poisson sampling: every online store joins independently with probability q, the
            // rate the accountant charged when the round was admitted. No store is swapped in for
            // another and no redraw happens, so the accountant's analysis holds.
            // The fixed denominator: q × the population this draw is made from.
            let expected_clients = round.sampling_rate * online.len() as f64;
            online.retain(|_| poisson_pick(round.sampling_rate));
            online.sort();
            if online.len() < min {
                // The draw happened: charge it, then fail (no refund, see ledger.rs).
                core.store.charge_round(&round.round_id, now).await?;
                let reason = format!(
                    "Poisson sampling at rate {:.4} picked fewer than min_clients ({min}) \
                     stores; the draw is charged to the budget",
                    round.sampling_rate
                );
                return move_to(core, round, RoundState::Failed, &reason).await;
            }
            let deadline = now + i64::from(round.spec.deadline_secs) * 1000;
            if core
                .store
                .start_training(&round.round_id, &online, expected_clients, deadline, now)
                .await?
            {
                // The count at info (a chain's round may sample thousands of stores); the names
                // at debug and in the round's record (`backroom round get`).
                info!(round_id = %round.round_id, sampled = online.len(), "round sampled");
                tracing::debug!(round_id = %round.round_id, nodes = ?online, "sampled nodes");
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

/// One Poisson draw with probability `q` from a generator seeded by the operating system.
fn poisson_pick(q: f64) -> bool {
    if q >= 1.0 {
        return true;
    }
    StdRng::from_os_rng().random_bool(q.clamp(0.0, 1.0))
}

async fn wait_for_updates(core: &Core, round: &RoundRecord) -> Result<()> {
    let mut changes = core.subscribe();
    loop {
        changes.borrow_and_update();
        // The round's state and counts only (a round of thousands of stores changes with
        // every update); `round` is the record this driver dispatched on, in training.
        let current = core.round_progress(&round.round_id).await?;
        if current.state != RoundState::Training {
            return Ok(());
        }
        let accepted = current.accepted as usize;
        let now = now_unix_ms();
        // Every sampled store's update is waited for (until the deadline): closing the round
        // early at a quota would let one store's presence displace another's update, doubling
        // the sensitivity the accountant assumes.
        let everyone_answered = accepted >= current.sampled as usize;
        if everyone_answered || now >= current.training_deadline_unix_ms {
            let min = round.spec.min_clients as usize;
            return if accepted >= min {
                move_to(core, round, RoundState::Aggregating, "").await
            } else {
                let reason =
                    format!("only {accepted} valid update(s) by the deadline, minimum is {min}");
                move_to(core, round, RoundState::Failed, &reason).await
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
    let budget = core.store.budget(&round.lineage).await?;
    let ledger = core.store.ledger(&round.lineage).await?;
    let expected_clients = round.expected_clients;
    let sampling_rate = round.sampling_rate;
    let registry = core.registry.clone();
    let spec = round.spec.clone();
    let round_id = round.round_id.clone();
    let lineage = round.lineage.clone();
    let started = std::time::Instant::now();
    let row = tokio::task::spawn_blocking(move || -> Result<_> {
        let base_params = registry.load_params(&base)?;
        let n = base_params.len();
        // The mean-based strategies stream the deltas into one sum (memory O(parameters)); the
        // robust ones need every delta at once.
        let robust = spec.strategy.is_robust();
        let mut sum = DpFedAvg::new(n);
        let mut kept = Vec::new();
        let mut counted_bits = Vec::with_capacity(updates.len());
        for update in &updates {
            let bytes = registry.blobs().get_blocking(&update.blob_path)?;
            let delta = decode_update_blob(&bytes, &update.blob_path, n, &update.sha256)?;
            // Never trust a stored norm either: re-check before the delta is summed.
            let norm = l2_norm(&delta);
            if norm.is_nan() || norm > spec.max_upload_norm(n) {
                warn!(round_id, node_id = %update.node_id, norm, "stored update above clip norm skipped");
                continue;
            }
            if robust {
                kept.push(delta);
            } else {
                sum.add(&delta)?;
            }
            counted_bits.push(update.within_clip);
        }
        let clients = u32::try_from(counted_bits.len()).unwrap_or(u32::MAX);
        if (clients as usize) < spec.min_clients as usize {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "only {clients} valid update(s), minimum is {}",
                spec.min_clients
            )));
        }
        let next_clip_norm = spec.adaptive_clipping.map(|adaptive| {
            // Only updates that were aggregated count; centred bits have sensitivity ½.
            let centred: f64 = counted_bits.iter().map(|&b| if b { 0.5 } else { -0.5 }).sum();
            let count_noise = Normal::new(0.0, f64::from(adaptive.count_stddev))
                .map_err(|e| CoordinatorError::Internal(format!("count noise: {e}")))?;
            let noise = count_noise.sample(&mut StdRng::from_os_rng());
            Ok::<f64, CoordinatorError>(adaptive.next_clip_norm(
                f64::from(spec.clip_norm),
                centred + noise,
                expected_clients,
            ))
        });
        let next_clip_norm = next_clip_norm.transpose()?;
        // Central mode: N(0, (z_Δ C)²) here (z_Δ = z without adaptive clipping); distributed
        // mode: nothing, the nodes added it. The denominator is the expected number of
        // contributors fixed at admission, whatever arrived: DP-FedAvg's fixed denominator.
        let add = |delta: &[f32]| -> Vec<f32> {
            base_params.iter().zip(delta).map(|(b, d)| b + d).collect()
        };
        let (params, moments) = match spec.strategy {
            // No noise here: validation admits the robust strategies only with z = 0.
            Strategy::Median => (add(&strategy::coordinate_median(&kept)?), None),
            Strategy::TrimmedMean => {
                let beta = spec
                    .trim_fraction
                    .unwrap_or(strategy::DEFAULT_TRIM_FRACTION);
                (add(&strategy::trimmed_mean(&kept, beta)?), None)
            }
            Strategy::FedAvg | Strategy::FedAdam | Strategy::FedYogi => {
                let mean = sum.finish_with_noise_std(
                    spec.coordinator_noise_stddev(),
                    expected_clients.max(1.0),
                    &mut StdRng::from_os_rng(),
                )?;
                match spec.strategy.server_optimizer() {
                    None => (add(&mean), None),
                    // The noised mean is the pseudo-gradient: post-processing, no privacy cost.
                    Some(optimizer) => {
                        let mut moments = match registry.load_moments(&lineage, base.version)? {
                            Some(moments) => moments,
                            None => {
                                info!(round_id, base_version = base.version, "server optimiser starts from fresh moments");
                                strategy::Moments::fresh(n)
                            }
                        };
                        let mut params = base_params.clone();
                        let eta = spec
                            .server_learning_rate
                            .unwrap_or(strategy::DEFAULT_SERVER_LEARNING_RATE);
                        strategy::server_step(optimizer, eta, &mut params, &mean, &mut moments)?;
                        (params, Some(moments))
                    }
                }
            }
        };
        // The moments go down before the version, so a published version of a server-optimiser
        // round always has its moments (a crash in between leaves files a retry overwrites).
        if let Some(moments) = &moments {
            registry.write_moments(&lineage, latest + 1, moments)?;
        }
        // ε of every charged round of the lineage, this one included (its entry is reserved).
        let (epsilon_spent, delta) = match budget {
            Some(budget) => {
                let report = compute_epsilon(&charged_events(&ledger), budget.delta).map_err(
                    |e| CoordinatorError::Internal(format!("privacy accounting: {e}")),
                )?;
                (
                    report.epsilon.is_finite().then_some(report.epsilon),
                    Some(budget.delta),
                )
            }
            None => (None, None),
        };
        let provenance = Provenance {
            round_id: round_id.clone(),
            parent_version: base.version,
            dp: Some(DpParameters {
                clip_norm: spec.clip_norm,
                noise_multiplier: spec.noise_multiplier,
                // The exact count stays in the coordinator (operators only): it is private.
                clients: None,
                sampling_rate: Some(sampling_rate),
                expected_clients: Some(expected_clients),
                noise_mode: Some(spec.noise_mode.as_str().to_owned()),
                delta_noise_multiplier: Some(spec.delta_noise_multiplier()),
            }),
            epsilon_spent,
            delta,
            rollback_of: None,
        };
        let row = registry.write_version(&lineage, latest + 1, &provenance, &params)?;
        Ok((row, next_clip_norm))
    })
    .await
    .map_err(|e| CoordinatorError::Internal(format!("aggregation task failed: {e}")))??;
    let (row, next_clip_norm) = row;
    let version = row.version;
    if let Some(clip_norm) = next_clip_norm {
        info!(round_id = %round.round_id, clip_norm, "adaptive clipping moved the clip norm");
    }
    if core
        .store
        .publish(
            &round.round_id,
            &row,
            next_clip_norm,
            core.settings.publish_rounds_to_stable,
            now_unix_ms(),
        )
        .await?
    {
        core.telemetry
            .aggregation_seconds
            .observe(started.elapsed().as_secs_f64());
        crate::audit::hooks::round_published(core, &round.round_id, &row).await;
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
