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

/// Aggregation strategies available in this version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// DP-FedAvg: unweighted mean of clipped deltas plus central Gaussian noise.
    FedAvg,
}

impl Strategy {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "" | "fedavg" => Some(Strategy::FedAvg),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::FedAvg => "fedavg",
        }
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
}

impl RoundSpec {
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
    pub sampled_nodes: Vec<String>,
    pub updates_accepted: u32,
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
        }
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
