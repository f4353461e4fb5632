//! The bridge to hf-hub 1.0, Hugging Face's own Rust client, which does the Hub calls it covers:
//! repository info, downloads into the shared cache (Xet-backed files included), repository
//! creation and Xet-backed commits.
//!
//! - [`client`] builds its blocking client from lora's [`HubConfig`] (endpoint, cache, token,
//!   retries), so that lora's settings and offline-first rules stay the ones in force;
//! - [`error`] turns its errors into [`HubError`]s that say what lora's always said: the method and
//!   URL, the status, the token hint on 401/403, the attempts on a dead connection;
//! - [`Relay`] passes its progress events on as lora's per-file [`Progress`] events.

use std::collections::HashMap;
use std::sync::Mutex;

use hf_hub::progress::{DownloadEvent, FileStatus, ProgressEvent, ProgressHandler, UploadEvent};
use hf_hub::{HFClientBuilder, HFClientSync, HFError};

use crate::config::HubConfig;
use crate::error::{HubError, io};
use crate::http::one_line;
use crate::progress::{Direction, Progress, ProgressFn};

/// hf-hub's blocking client for `config`. A configuration without a token gives a client that
/// finds none of its own only when the environment has none either (hf-hub reads `HF_TOKEN` and
/// the token files itself, see `HubConfig::token`); `HubConfig::from_env` reads the same places,
/// so the two agree.
pub(crate) fn client(config: &HubConfig) -> Result<HFClientSync, HubError> {
    let mut builder = HFClientBuilder::new()
        .endpoint(config.endpoint.clone())
        .cache_dir(config.cache_dir.clone())
        .user_agent(concat!("lora-hub/", env!("CARGO_PKG_VERSION"), "; hf-hub/1.0"))
        // lora counts the first attempt; hf-hub counts the retries after it.
        .retry_max_attempts(config.retry.attempts.max(1) as usize - 1)
        // hf-hub waits 2·base, 4·base, ... (jittered); lora's policy starts at base.
        .retry_base_delay(config.retry.base_delay / 2);
    if let Some(token) = &config.token {
        builder = builder.token(token.secret());
    }
    builder.build_sync().map_err(|e| HubError::Protocol { url: config.endpoint.clone(), message: e.to_string() })
}

/// hf-hub's error as lora's, for a `method` request; `attempts` is how many tries a transport
/// failure had (hf-hub retried it). The token never appears: hf-hub's URLs do not carry it.
pub(crate) fn error(e: HFError, method: &'static str, attempts: u32, has_token: bool) -> HubError {
    let context = match &e {
        HFError::Http { context }
        | HFError::AuthRequired { context }
        | HFError::Forbidden { context }
        | HFError::Conflict { context }
        | HFError::RateLimited { context, .. } => Some(context.as_ref()),
        HFError::RepoNotFound { context, .. }
        | HFError::RevisionNotFound { context, .. }
        | HFError::EntryNotFound { context, .. } => context.as_deref(),
        _ => None,
    };
    if let Some(c) = context {
        let url = c.url.clone();
        let body = one_line(c.server_message.as_deref().unwrap_or(&c.body));
        return match c.status.as_u16() {
            401 | 403 => HubError::Unauthorized { method, url, status: c.status.as_u16(), has_token },
            404 => HubError::NotFound { method, url, body },
            status => HubError::Status { method, url, status, body },
        };
    }
    match e {
        HFError::Request { source, url } => HubError::Connection {
            method,
            url: url.or_else(|| source.url().map(|u| u.to_string())).unwrap_or_default(),
            attempts,
            error: transport_chain(&source),
        },
        HFError::EntryNotFound { path, repo_id, .. } => {
            HubError::NotFound { method, url: format!("{repo_id}: {path}"), body: String::new() }
        }
        HFError::Io(error) => io("the Hugging Face cache")(error),
        HFError::MalformedResponse { what, url } => HubError::Protocol { url: url.unwrap_or_default(), message: what },
        other => HubError::Protocol { url: String::new(), message: other.to_string() },
    }
}

/// A transport error with its causes (reqwest's own message is only "error sending request").
fn transport_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// hf-hub's progress events as lora's: per-file bytes become `Advance` deltas; a file's first
/// event is its `Start`, its `Complete` status its `Finish`.
pub(crate) struct Relay {
    direction: Direction,
    progress: ProgressFn,
    /// Bytes reported so far per file (hf-hub reports running totals).
    seen: Mutex<HashMap<String, u64>>,
}

impl Relay {
    /// A relay of `direction` transfers to `progress`.
    pub(crate) fn new(direction: Direction, progress: ProgressFn) -> Relay {
        Relay { direction, progress, seen: Mutex::new(HashMap::new()) }
    }

    fn file(&self, name: &str, done: u64, total: u64, complete: bool) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let before = match seen.get(name) {
            Some(&b) => b,
            None => {
                (self.progress)(Progress::Start { direction: self.direction, file: name, total });
                0
            }
        };
        if done > before {
            (self.progress)(Progress::Advance { file: name, bytes: done - before });
        }
        seen.insert(name.to_string(), done.max(before));
        if complete && before != u64::MAX {
            (self.progress)(Progress::Finish { file: name });
            seen.insert(name.to_string(), u64::MAX);
        }
    }
}

impl ProgressHandler for Relay {
    fn on_progress(&self, event: &ProgressEvent) {
        let files = match event {
            ProgressEvent::Download(DownloadEvent::Progress { files }) => files,
            ProgressEvent::Upload(UploadEvent::Progress { files, .. }) => files,
            _ => return,
        };
        for f in files {
            self.file(&f.filename, f.bytes_completed, f.total_bytes, matches!(f.status, FileStatus::Complete));
        }
    }
}
