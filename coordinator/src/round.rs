//! Round domain types: the spec an engineer submits, the states of DESIGN.md, and validation.

use serde::{Deserialize, Serialize};

use crate::error::CoordinatorError;

/// `pending → sampling → training → aggregating → published`, or `failed` / `cancelled`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundState {
    Pending,
    Sampling,
    Training,
    Aggregating,
    Published,
    Failed,
    Cancelled,
}

impl RoundState {
    pub fn as_str(self) -> &'static str {
        match self {
            RoundState::Pending => "pending",
            RoundState::Sampling => "sampling",
            RoundState::Training => "training",
            RoundState::Aggregating => "aggregating",
            RoundState::Published => "published",
            RoundState::Failed => "failed",
            RoundState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => RoundState::Pending,
            "sampling" => RoundState::Sampling,
            "training" => RoundState::Training,
            "aggregating" => RoundState::Aggregating,
            "published" => RoundState::Published,
            "failed" => RoundState::Failed,
            "cancelled" => RoundState::Cancelled,
            _ => return None,
        })
    }

    /// No transition leaves a final state.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RoundState::Published | RoundState::Failed | RoundState::Cancelled
        )
    }

    /// Whether the state machine allows `self → next`.
    pub fn can_move_to(self, next: RoundState) -> bool {
        use RoundState::*;
        match (self, next) {
            (Pending, Sampling) | (Sampling, Training) | (Training, Aggregating) => true,
            (Aggregating, Published) => true,
            (from, Failed | Cancelled) => !from.is_final(),
            _ => false,
        }
    }
}

/// Aggregation strategies available in this version (see [`crate::strategy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// DP-FedAvg: unweighted mean of clipped deltas plus central Gaussian noise.
    FedAvg,
    /// DP-FedAvg's noised mean as the pseudo-gradient of a server Adam step.
    FedAdam,
    /// DP-FedAvg's noised mean as the pseudo-gradient of a server Yogi step.
    FedYogi,
    /// Coordinate-wise median of the clipped deltas (no noise).
    Median,
    /// Coordinate-wise trimmed mean of the clipped deltas (no noise).
    TrimmedMean,
}

impl Strategy {
    /// Every strategy's name, for messages and `--help`.
    pub const NAMES: &'static str = "fedavg, fedadam, fedyogi, median, trimmed_mean";

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "" | "fedavg" => Some(Strategy::FedAvg),
            "fedadam" => Some(Strategy::FedAdam),
            "fedyogi" => Some(Strategy::FedYogi),
            "median" => Some(Strategy::Median),
            "trimmed_mean" => Some(Strategy::TrimmedMean),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::FedAvg => "fedavg",
            Strategy::FedAdam => "fedadam",
            Strategy::FedYogi => "fedyogi",
            Strategy::Median => "median",
            Strategy::TrimmedMean => "trimmed_mean",
        }
    }

    /// The server optimiser of FedAdam / FedYogi.
    pub fn server_optimizer(self) -> Option<crate::strategy::ServerOptimizer> {
        match self {
            Strategy::FedAdam => Some(crate::strategy::ServerOptimizer::Adam),
            Strategy::FedYogi => Some(crate::strategy::ServerOptimizer::Yogi),
            _ => None,
        }
    }

    /// Whether the aggregate is a robust statistic of the deltas rather than their mean.
    pub fn is_robust(self) -> bool {
        matches!(self, Strategy::Median | Strategy::TrimmedMean)
    }
}

/// Where the Gaussian noise of a round is added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseMode {
    /// The coordinator adds N(0, (zC)²) to the sum of clipped deltas.
    #[default]
    Central,
    /// Each sampled node adds N(0, (zC)²/(min_clients − 1)) to its clipped delta; the coordinator
    /// adds nothing. A round publishes only with at least min_clients updates, so the sum
    /// carries at least the central amount of noise even without any one store's share (the
    /// neighbouring dataset in the add/remove analysis). Needs min_clients ≥ 2 and honest nodes.
    Distributed,
}

impl NoiseMode {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "" | "central" => Some(NoiseMode::Central),
            "distributed" => Some(NoiseMode::Distributed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NoiseMode::Central => "central",
            NoiseMode::Distributed => "distributed",
        }
    }
}

/// Bounds of an adapted clip norm (a runaway update can never make it 0 or overflow).
pub const MIN_ADAPTIVE_CLIP: f64 = 1e-6;
pub const MAX_ADAPTIVE_CLIP: f64 = 1e4;

/// Adaptive clipping settings (Andrew et al., 2021, geometric update).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveClipping {
    /// γ: the fraction of deltas that should fall within the clip norm.
    pub target_quantile: f32,
    /// η: step of the geometric update.
    pub learning_rate: f32,
    /// σ_b: noise on the count of deltas within the clip norm.
    pub count_stddev: f32,
}

impl AdaptiveClipping {
    /// C' = C · exp(−η (b̃ − γ)), with b̃ = (Σ (b_i − ½) + N(0, σ_b²)) / m + ½ the noised fraction
    /// of the m expected contributors whose delta was within C. `noised_centred_sum` is
    /// Σ (b_i − ½) + noise.
    /// The result is kept within [`MIN_ADAPTIVE_CLIP`, `MAX_ADAPTIVE_CLIP`].
    pub fn next_clip_norm(&self, clip_norm: f64, noised_centred_sum: f64, expected: f64) -> f64 {
        let fraction = noised_centred_sum / expected.max(1.0) + 0.5;
        let next = clip_norm
            * (-f64::from(self.learning_rate) * (fraction - f64::from(self.target_quantile))).exp();
        next.clamp(MIN_ADAPTIVE_CLIP, MAX_ADAPTIVE_CLIP)
    }
}

/// What an ML engineer asks of a round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundSpec {
    pub strategy: Strategy,
    pub target_clients: u32,
    pub min_clients: u32,
    pub deadline_secs: u32,
    pub local_steps: u32,
    pub batch_size: u32,
    pub learning_rate: f32,
    pub clip_norm: f32,
    pub noise_multiplier: f32,
    #[serde(default)]
    pub noise_mode: NoiseMode,
    #[serde(default)]
    pub adaptive_clipping: Option<AdaptiveClipping>,
    /// η of FedAdam / FedYogi (set for those strategies only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_learning_rate: Option<f32>,
    /// β of the trimmed mean: the share dropped at each end (set for it only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trim_fraction: Option<f32>,
    /// FedProx's μ: the nodes add μ/2 · ‖w − w_base‖² to their local loss (0: plain SGD).
    #[serde(default)]
    pub proximal_mu: f32,
}

impl RoundSpec {
    /// σ = zC: the noise the sum of deltas carries (the accountant's mechanism).
    pub fn sum_noise_stddev(&self) -> f64 {
        self.delta_noise_multiplier() * f64::from(self.clip_norm)
    }

    /// The noise multiplier applied to the deltas. Without adaptive clipping it is z; with it,
    /// part of the privacy cost goes to the noised count, and the deltas get
    /// z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2), so that the pair is exactly as private as one Gaussian
    /// mechanism with multiplier z (Andrew et al., 2021, Theorem 1), which the accountant
    /// charges.
    pub fn delta_noise_multiplier(&self) -> f64 {
        let z = f64::from(self.noise_multiplier);
        match self.adaptive_clipping {
            Some(adaptive) if z > 0.0 => {
                let count = 2.0 * f64::from(adaptive.count_stddev);
                let rest = z.powi(-2) - count.powi(-2);
                if rest > 0.0 {
                    rest.powf(-0.5)
                } else {
                    f64::INFINITY
                }
            }
            _ => z,
        }
    }

    /// Std of the noise each node adds to its clipped delta: σ/√(min_clients − 1) in
    /// distributed mode (so min_clients − 1 shares already make σ: removing one store's data
    /// also removes its share), 0 in central mode.
    pub fn node_noise_stddev(&self) -> f64 {
        match self.noise_mode {
            NoiseMode::Central => 0.0,
            NoiseMode::Distributed => {
                let others = self.min_clients.saturating_sub(1).max(1);
                self.sum_noise_stddev() / f64::from(others).sqrt()
            }
        }
    }

    /// Std of the noise the coordinator adds to the sum: σ in central mode, 0 in distributed.
    pub fn coordinator_noise_stddev(&self) -> f64 {
        match self.noise_mode {
            NoiseMode::Central => self.sum_noise_stddev(),
            NoiseMode::Distributed => 0.0,
        }
    }

    /// Largest L2 norm the coordinator accepts for an uploaded delta of `d` values. Central
    /// mode: C (the coordinator sees the clipped delta and re-checks it exactly). Distributed
    /// mode: C + σ_node(√d + 10): a clipped delta plus honest noise stays below this except with
    /// probability below e^{-50} (Gaussian norm concentration), so the check refuses deltas
    /// that were clearly not clipped; it cannot prove clipping the way the central check does.
    pub fn max_upload_norm(&self, d: usize) -> f64 {
        let clip = f64::from(self.clip_norm);
        match self.noise_mode {
            NoiseMode::Central => clip,
            NoiseMode::Distributed => clip + self.node_noise_stddev() * ((d as f64).sqrt() + 10.0),
        }
    }

    /// Checks every field and reports all problems at once.
    pub fn validate(&self) -> Result<(), CoordinatorError> {
        let mut problems = Vec::new();
        if self.target_clients == 0 || self.target_clients > 10_000 {
            problems.push(format!(
                "target_clients must be in 1..=10000, got {}",
                self.target_clients
            ));
        }
        if self.min_clients == 0 || self.min_clients > self.target_clients {
            problems.push(format!(
                "min_clients must be in 1..=target_clients ({}), got {}",
                self.target_clients, self.min_clients
            ));
        }
        if !(1..=86_400).contains(&self.deadline_secs) {
            problems.push(format!(
                "deadline_secs must be in 1..=86400, got {}",
                self.deadline_secs
            ));
        }
        if !(1..=100_000).contains(&self.local_steps) {
            problems.push(format!(
                "local_steps must be in 1..=100000, got {}",
                self.local_steps
            ));
        }
        if !(1..=4096).contains(&self.batch_size) {
            problems.push(format!(
                "batch_size must be in 1..=4096, got {}",
                self.batch_size
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            problems.push(format!(
                "learning_rate must be finite and > 0, got {}",
                self.learning_rate
            ));
        }
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            problems.push(format!(
                "clip_norm must be finite and > 0, got {}",
                self.clip_norm
            ));
        }
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier >= 0.0) {
            problems.push(format!(
                "noise_multiplier must be finite and >= 0, got {}",
                self.noise_multiplier
            ));
        }
        if let Some(adaptive) = self.adaptive_clipping {
            if !(adaptive.target_quantile > 0.0 && adaptive.target_quantile < 1.0) {
                problems.push(format!(
                    "adaptive_clipping.target_quantile must be in (0, 1), got {}",
                    adaptive.target_quantile
                ));
            }
            if !(adaptive.learning_rate > 0.0 && adaptive.learning_rate <= 10.0) {
                problems.push(format!(
                    "adaptive_clipping.learning_rate must be in (0, 10], got {}",
                    adaptive.learning_rate
                ));
            }
            if !(adaptive.count_stddev.is_finite() && adaptive.count_stddev > 0.0) {
                problems.push(format!(
                    "adaptive_clipping.count_stddev must be finite and > 0, got {}",
                    adaptive.count_stddev
                ));
            } else if 2.0 * adaptive.count_stddev <= self.noise_multiplier {
                problems.push(format!(
                    "adaptive_clipping.count_stddev must exceed noise_multiplier / 2 = {} \
                     (the count takes part of the noise budget)",
                    self.noise_multiplier / 2.0
                ));
            }
            if self.noise_mode == NoiseMode::Distributed {
                problems.push(
                    "adaptive clipping needs central noise (the count is noised centrally)"
                        .to_owned(),
                );
            }
        }
        match (self.strategy.server_optimizer(), self.server_learning_rate) {
            (Some(_), Some(eta)) if !(eta.is_finite() && eta > 0.0 && eta <= 10.0) => {
                problems.push(format!(
                    "server_learning_rate must be in (0, 10], got {eta}"
                ));
            }
            (Some(_), None) => problems.push(format!(
                "{} needs a server_learning_rate",
                self.strategy.as_str()
            )),
            (None, Some(_)) => problems.push(format!(
                "server_learning_rate applies to fedadam and fedyogi, not {}",
                self.strategy.as_str()
            )),
            _ => {}
        }
        let max_mu = backroom_models::MAX_PROXIMAL_MU as f32;
        if !(self.proximal_mu.is_finite() && (0.0..=max_mu).contains(&self.proximal_mu)) {
            problems.push(format!(
                "proximal_mu must be in [0, {max_mu}], got {}",
                self.proximal_mu
            ));
        }
        match (self.strategy, self.trim_fraction) {
            (Strategy::TrimmedMean, Some(beta)) if !(0.0..0.5).contains(&beta) => {
                problems.push(format!("trim_fraction must be in [0, 0.5), got {beta}"));
            }
            (Strategy::TrimmedMean, None) => {
                problems.push("trimmed_mean needs a trim_fraction".to_owned());
            }
            (other, Some(_)) if other != Strategy::TrimmedMean => problems.push(format!(
                "trim_fraction applies to trimmed_mean, not {}",
                other.as_str()
            )),
            _ => {}
        }
        if self.strategy.is_robust() && self.noise_multiplier != 0.0 {
            problems.push(format!(
                "{} has no sensitivity bound the Gaussian accountant could use, so it cannot \
                 be noised: launch it with noise_multiplier 0 on a lineage without a privacy \
                 budget, or use fedavg, fedadam or fedyogi",
                self.strategy.as_str()
            ));
        }
        if self.noise_mode == NoiseMode::Distributed && self.min_clients < 2 {
            problems.push(format!(
                "distributed noise needs min_clients >= 2 (each node's share assumes \
                 min_clients - 1 others), got {}",
                self.min_clients
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CoordinatorError::InvalidArgument(problems.join("; ")))
        }
    }
}

/// A round as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundRecord {
    pub round_id: String,
    pub lineage: String,
    pub state: RoundState,
    pub spec: RoundSpec,
    pub base_version: u64,
    pub published_version: u64,
    pub failure_reason: String,
    pub started_by: String,
    pub training_deadline_unix_ms: i64,
    pub updates_refused: u32,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
    /// In byte order.
    pub sampled_nodes: Vec<String>,
    pub updates_accepted: u32,
    /// Poisson sampling rate q, fixed when the round was admitted (the accountant's q).
    pub sampling_rate: f64,
    /// Expected number of contributors, q × population: the fixed DP-FedAvg denominator.
    pub expected_clients: f64,
    /// The lineage's ε including this round, from the privacy ledger (`None`: infinite, or the
    /// round was never admitted).
    pub epsilon_after: Option<f64>,
    /// Adaptive clipping: the clip norm this round set for the lineage's next adaptive round.
    pub next_clip_norm: Option<f32>,
}

#[cfg(test)]
mod round_tests {
    use super::*;

    fn spec() -> RoundSpec {
        RoundSpec {
            strategy: Strategy::FedAvg,
            target_clients: 3,
            min_clients: 2,
            deadline_secs: 60,
            local_steps: 10,
            batch_size: 32,
            learning_rate: 0.05,
            clip_norm: 1.0,
            noise_multiplier: 0.5,
            noise_mode: NoiseMode::Central,
            adaptive_clipping: None,
            server_learning_rate: None,
            trim_fraction: None,
            proximal_mu: 0.0,
        }
    }

    fn problems(spec: &RoundSpec) -> String {
        spec.validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn strategies_take_only_their_own_parameters_and_robust_ones_no_noise() {
        let adam = RoundSpec {
            strategy: Strategy::FedAdam,
            server_learning_rate: Some(0.01),
            ..spec()
        };
        assert!(adam.validate().is_ok(), "{}", problems(&adam));
        let yogi = RoundSpec {
            strategy: Strategy::FedYogi,
            ..adam.clone()
        };
        assert!(yogi.validate().is_ok());
        let median = RoundSpec {
            strategy: Strategy::Median,
            noise_multiplier: 0.0,
            ..spec()
        };
        assert!(median.validate().is_ok(), "{}", problems(&median));
        let trimmed = RoundSpec {
            strategy: Strategy::TrimmedMean,
            trim_fraction: Some(0.2),
            ..median.clone()
        };
        assert!(trimmed.validate().is_ok());
        let prox = RoundSpec {
            proximal_mu: 0.01,
            ..spec()
        };
        assert!(prox.validate().is_ok());
        // A spec stored before FedProx existed reads as μ = 0.
        let mut stored = serde_json::to_value(spec()).unwrap_or_default();
        if let Some(fields) = stored.as_object_mut() {
            fields.remove("proximal_mu");
        }
        let old: RoundSpec = serde_json::from_value(stored).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(old.proximal_mu, 0.0);
        for (bad, expected) in [
            (
                RoundSpec {
                    server_learning_rate: None,
                    ..adam.clone()
                },
                "needs a server_learning_rate",
            ),
            (
                RoundSpec {
                    server_learning_rate: Some(f32::NAN),
                    ..adam.clone()
                },
                "server_learning_rate must be in (0, 10]",
            ),
            (
                RoundSpec {
                    server_learning_rate: Some(0.1),
                    ..spec()
                },
                "applies to fedadam and fedyogi, not fedavg",
            ),
            (
                RoundSpec {
                    trim_fraction: Some(0.5),
                    ..trimmed.clone()
                },
                "trim_fraction must be in [0, 0.5)",
            ),
            (
                RoundSpec {
                    proximal_mu: -0.5,
                    ..spec()
                },
                "proximal_mu must be in [0, 1000]",
            ),
            (
                RoundSpec {
                    proximal_mu: f32::INFINITY,
                    ..adam.clone()
                },
                "proximal_mu must be in [0, 1000]",
            ),
            (
                RoundSpec {
                    trim_fraction: None,
                    ..trimmed.clone()
                },
                "needs a trim_fraction",
            ),
            (
                RoundSpec {
                    trim_fraction: Some(0.1),
                    ..median.clone()
                },
                "applies to trimmed_mean, not median",
            ),
            (
                RoundSpec {
                    noise_multiplier: 0.5,
                    ..trimmed.clone()
                },
                "trimmed_mean has no sensitivity bound",
            ),
            (
                RoundSpec {
                    noise_multiplier: 1e-6,
                    ..median.clone()
                },
                "median has no sensitivity bound",
            ),
        ] {
            let message = problems(&bad);
            assert!(
                message.contains(expected),
                "{expected:?} not in {message:?}"
            );
        }
        for name in ["fedavg", "fedadam", "fedyogi", "median", "trimmed_mean"] {
            let parsed = Strategy::parse(name).map(Strategy::as_str);
            assert_eq!(parsed, Some(name));
            assert!(Strategy::NAMES.contains(name));
        }
        assert_eq!(Strategy::parse("krum"), None);
    }

    #[test]
    fn adaptive_clipping_splits_the_noise_and_moves_the_clip_norm_geometrically() {
        let adaptive = AdaptiveClipping {
            target_quantile: 0.5,
            learning_rate: 0.2,
            count_stddev: 1.0,
        };
        let adaptive_spec = RoundSpec {
            adaptive_clipping: Some(adaptive),
            ..spec()
        };
        assert!(adaptive_spec.validate().is_ok());
        // z = 0.5, 2σ_b = 2: z_Δ⁻² = 4 − 0.25.
        let z_delta = adaptive_spec.delta_noise_multiplier();
        assert!((z_delta.powi(-2) - 3.75).abs() < 1e-9, "{z_delta}");
        assert!(z_delta > 0.5);
        // Every delta within C (fraction 1 > γ): the clip norm shrinks by exp(−η/2).
        let all_within = 3.0 * 0.5;
        let next = adaptive.next_clip_norm(2.0, all_within, 3.0);
        assert!((next - 2.0 * (-0.1_f64).exp()).abs() < 1e-6);
        // None within: it grows by exp(η/2).
        let next = adaptive.next_clip_norm(2.0, -1.5, 3.0);
        assert!((next - 2.0 * 0.1_f64.exp()).abs() < 1e-6);
        // At the target quantile it stays.
        assert!((adaptive.next_clip_norm(2.0, 0.0, 3.0) - 2.0).abs() < 1e-12);
        let too_little_count_noise = RoundSpec {
            adaptive_clipping: Some(AdaptiveClipping {
                count_stddev: 0.2,
                ..adaptive
            }),
            ..spec()
        };
        let message = too_little_count_noise
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("count_stddev must exceed"), "{message}");
    }

    #[test]
    fn noise_is_split_between_nodes_and_coordinator_by_mode() {
        let central = spec();
        assert_eq!(central.coordinator_noise_stddev(), 0.5);
        assert_eq!(central.node_noise_stddev(), 0.0);
        assert_eq!(central.max_upload_norm(100), 1.0);
        let distributed = RoundSpec {
            noise_mode: NoiseMode::Distributed,
            min_clients: 4,
            target_clients: 4,
            ..spec()
        };
        assert_eq!(distributed.coordinator_noise_stddev(), 0.0);
        // Any three of the four shares of variance σ²/3 already sum to σ².
        let share = distributed.node_noise_stddev();
        assert!((3.0 * share * share - 0.25).abs() < 1e-12);
        assert!((distributed.max_upload_norm(100) - (1.0 + share * 20.0)).abs() < 1e-12);
        assert_eq!(
            NoiseMode::parse("distributed"),
            Some(NoiseMode::Distributed)
        );
        assert_eq!(NoiseMode::parse(""), Some(NoiseMode::Central));
        assert_eq!(NoiseMode::parse("local"), None);
    }

    #[test]
    fn valid_spec_passes_and_every_bad_field_is_reported() {
        assert!(spec().validate().is_ok());
        let bad = RoundSpec {
            min_clients: 5,
            clip_norm: f32::NAN,
            noise_multiplier: -1.0,
            ..spec()
        };
        let message = bad
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("min_clients"), "{message}");
        assert!(message.contains("clip_norm"), "{message}");
        assert!(message.contains("noise_multiplier"), "{message}");
    }

    #[test]
    fn state_machine_only_moves_forward() {
        use RoundState::*;
        assert!(Pending.can_move_to(Sampling));
        assert!(Training.can_move_to(Aggregating));
        assert!(Training.can_move_to(Cancelled));
        assert!(!Published.can_move_to(Failed));
        assert!(!Training.can_move_to(Sampling));
        assert!(!Pending.can_move_to(Published));
        for s in [
            Pending,
            Sampling,
            Training,
            Aggregating,
            Published,
            Failed,
            Cancelled,
        ] {
            assert_eq!(RoundState::parse(s.as_str()), Some(s));
        }
    }
}
