use std::io;
use std::path::PathBuf;

/// Everything that can stop `anyaccel deploy render`.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },

    /// The TOML is malformed or has a key the config does not know; the
    /// message carries the line and column.
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },

    /// The TOML parsed but describes a fleet that cannot work. Every problem
    /// found is listed, each naming its field (`pools[1].max_replicas ...`).
    #[error("invalid cluster config:\n{}", bullet_list(.problems))]
    Invalid { problems: Vec<String> },

    /// The plan is of another format version than this build reads.
    #[error(
        "{origin}: plan format_version {found}, but this build reads {expected}; re-run `anyaccel plan` with this release"
    )]
    PlanVersion {
        origin: String,
        found: String,
        expected: u32,
    },

    /// The plan parsed but its numbers cannot be applied as they are.
    #[error("invalid plan {origin}:\n{}", bullet_list(.problems))]
    InvalidPlan {
        origin: String,
        problems: Vec<String>,
    },

    /// The cluster config and the plan disagree; each problem names both.
    #[error("{config} and {plan} disagree:\n{}", bullet_list(.problems))]
    PlanMismatch {
        config: String,
        plan: String,
        problems: Vec<String>,
    },

    /// A rendered object failed a check the cluster would also make (KEDA's
    /// scaler metadata parsing, name lengths). Means a renderer bug or a
    /// config the validation missed; nothing is printed in that case.
    #[error("rendered {object} would be rejected: {message}")]
    Rejected { object: String, message: String },

    #[error("cannot serialize {object}: {source}")]
    Serialize {
        object: String,
        source: serde_json::Error,
    },

    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },

    #[error("refusing to write into {path}: {reason}")]
    OutDir { path: PathBuf, reason: String },
}

impl DeployError {
    /// The individual config problems, empty for other kinds of error.
    pub fn problems(&self) -> &[String] {
        match self {
            DeployError::Invalid { problems }
            | DeployError::InvalidPlan { problems, .. }
            | DeployError::PlanMismatch { problems, .. } => problems,
            _ => &[],
        }
    }
}

fn bullet_list(items: &[String]) -> String {
    items
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}
