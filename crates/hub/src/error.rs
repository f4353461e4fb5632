//! Errors of the Hub client. Every message names the repository, URL or file at fault and, where
//! there is one, the fix; a token never appears in any of them (URLs never carry it).

use std::path::PathBuf;

/// Anything that can go wrong resolving, downloading or publishing.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A reference that is neither an existing folder nor a Hub id.
    #[error("'{0}' is neither a folder nor a Hub id (org/name or org/name@revision)")]
    BadReference(String),

    /// Offline mode with files missing from the cache.
    #[error(
        "{repo}@{revision} is not complete in the Hugging Face cache and offline mode is on (HF_HUB_OFFLINE or --offline); \
         missing: {}; looked in {}",
        missing.join(", "),
        looked_in.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    OfflineMissing {
        /// `org/name`.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// Files (repo paths) that were not found.
        missing: Vec<String>,
        /// Cache paths that were looked at.
        looked_in: Vec<PathBuf>,
    },

    /// 401/403: the token is missing, invalid or lacks the right.
    #[error(
        "{method} {url}: the Hub refused the request (HTTP {status}): {}",
        if *has_token { "the token is invalid or lacks write access to this repository; check HF_TOKEN or the token file" }
        else { "no token was sent; set HF_TOKEN or log in (huggingface-cli login writes the token file)" }
    )]
    Unauthorized {
        /// HTTP method.
        method: &'static str,
        /// The URL (never carries a token).
        url: String,
        /// 401 or 403.
        status: u16,
        /// Whether a token was sent.
        has_token: bool,
    },

    /// 404 on a repository, revision or file.
    #[error("{method} {url}: not found (HTTP 404){}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    NotFound {
        /// HTTP method.
        method: &'static str,
        /// The URL.
        url: String,
        /// The server's message, if any.
        body: String,
    },

    /// Any other HTTP status, after the retries for transient ones.
    #[error("{method} {url}: HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status {
        /// HTTP method.
        method: &'static str,
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// The server's message, trimmed.
        body: String,
    },

    /// No connection, or one that broke, after all retries. The transport error is part of the
    /// message, not a `source`, so that `{:#}` chains do not repeat it.
    #[error("{method} {url}: {error} (after {attempts} attempts)")]
    Connection {
        /// HTTP method.
        method: &'static str,
        /// The URL.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last transport error, with its causes.
        error: String,
    },

    /// A response that does not follow the Hub's protocol.
    #[error("{url}: unexpected response from the Hub: {message}")]
    Protocol {
        /// The URL.
        url: String,
        /// What was wrong.
        message: String,
    },

    /// A repository without what lora needs.
    #[error("{repo}@{revision}: {message}")]
    Repo {
        /// `org/name`.
        repo: String,
        /// Revision.
        revision: String,
        /// What is missing or refused.
        message: String,
    },

    /// A folder that cannot be published as it is.
    #[error("{}: {message}", path.display())]
    Publish {
        /// The file or folder at fault.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// Publishing without a token.
    #[error("publishing needs a Hugging Face token with write access: set HF_TOKEN or write it to {}", token_file.display())]
    NoToken {
        /// Where the token file was looked for.
        token_file: PathBuf,
    },

    /// A bad setting in the environment.
    #[error("{name}={value}: {message}")]
    Env {
        /// Variable name.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        message: String,
    },

    /// A file system error. The OS error is part of the message and deliberately not a `source`,
    /// so that an error chain printed with `{:#}` does not say it twice.
    #[error("{}: {error}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = HubError> = std::result::Result<T, E>;

/// Attaches a path to an io::Error.
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> HubError {
    let path = path.into();
    move |error| HubError::Io { path, error }
}
