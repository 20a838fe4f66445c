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
            DeployError::Invalid { problems } => problems,
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
