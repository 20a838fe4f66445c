use thiserror::Error;

/// Everything `anyaccel bench` and `anyaccel plan` can fail with. Each
/// message says what to change.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: {message}")]
    Parse { path: String, message: String },

    #[error(
        "{path}: format_version is {found}, this anyaccel reads {expected}; re-run `anyaccel bench` with this version (or plan with the anyaccel that wrote it)"
    )]
    FormatVersion {
        path: String,
        found: String,
        expected: u32,
    },

    #[error("invalid arguments: {0}")]
    InvalidArgs(String),

    /// A load above the safety thresholds without the explicit flag.
    #[error("refusing to run: {0}")]
    Safety(String),

    #[error("cannot reach the server at {url}: {message}")]
    Unreachable { url: String, message: String },

    #[error(
        "pool {pool:?} runs on {instance_type:?}, which the prices file {prices} does not price{hint}"
    )]
    NoPrice {
        pool: String,
        instance_type: String,
        prices: String,
        hint: String,
    },

    #[error("{path}: {message}")]
    BadInput { path: String, message: String },

    /// Written with a report that explains per pool why.
    #[error("no feasible plan: {0}")]
    NoFeasiblePlan(String),

    #[error("drawing {path}: {message}")]
    Plot { path: String, message: String },
}
