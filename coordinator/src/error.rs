//! The coordinator's domain errors and their one mapping to gRPC statuses.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("database error: {0}")]
    Storage(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("model error: {0}")]
    Model(#[from] backroom_models::ModelError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl CoordinatorError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CoordinatorError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<CoordinatorError> for Status {
    fn from(error: CoordinatorError) -> Self {
        match error {
            CoordinatorError::InvalidArgument(m) => Status::invalid_argument(m),
            CoordinatorError::NotFound(m) => Status::not_found(m),
            CoordinatorError::FailedPrecondition(m) => Status::failed_precondition(m),
            CoordinatorError::ResourceExhausted(m) => Status::resource_exhausted(m),
            CoordinatorError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            CoordinatorError::AlreadyExists(m) => Status::already_exists(m),
            other => {
                tracing::error!(error = %other, "internal error");
                Status::internal(other.to_string())
            }
        }
    }
}

pub type Result<T, E = CoordinatorError> = std::result::Result<T, E>;
