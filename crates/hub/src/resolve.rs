//! Turning a model or adapter reference into a local folder: what `--model`, `--adapter` and a
//! recipe's `[model] base` call.
//!
//! A folder is itself. A Hub id (`org/name`, `org/name@rev`) is looked up in the Hugging Face
//! cache first (a complete snapshot is used without touching the network, so models fetched by
//! Python tools are reused); otherwise it is downloaded into the cache, unless offline mode is on,
//! in which case the error lists the missing files and where they were looked for.

use std::path::PathBuf;

use crate::config::HubConfig;
use crate::download::{cached, download};
use crate::error::{HubError, Result};
use crate::files::RepoKind;
use crate::progress::{ProgressFn, no_progress};
use crate::reference::Reference;

/// How references are resolved.
#[derive(Clone)]
pub struct ResolveOptions {
    /// Endpoint, cache, token, offline mode.
    pub hub: HubConfig,
    /// Receives download progress (the library never prints).
    pub progress: ProgressFn,
}

impl std::fmt::Debug for ResolveOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolveOptions").field("hub", &self.hub).finish_non_exhaustive()
    }
}

impl ResolveOptions {
    /// Settings from the environment (`HF_ENDPOINT`, `HF_HUB_CACHE`, `HF_HOME`, `HF_HUB_OFFLINE`,
    /// `HF_TOKEN`), no progress reporting.
    pub fn from_env() -> Result<ResolveOptions> {
        Ok(ResolveOptions { hub: HubConfig::from_env()?, progress: no_progress() })
    }

    /// Forces offline mode on when `offline` is true (a `--offline` flag); false keeps the
    /// environment's choice.
    pub fn offline(mut self, offline: bool) -> ResolveOptions {
        self.hub.offline |= offline;
        self
    }

    /// Reports download progress to `progress`.
    pub fn with_progress(mut self, progress: ProgressFn) -> ResolveOptions {
        self.progress = progress;
        self
    }
}

/// The folder of a model reference: a local path as it is, or the cache snapshot of a Hub id
/// (downloading config, tokenizer, chat template and safetensors weights if needed and allowed).
pub fn resolve_model(reference: &str, opts: &ResolveOptions) -> Result<PathBuf> {
    resolve(reference, RepoKind::Model, opts)
}

/// The folder of a PEFT adapter reference (local, or a Hub id with `adapter_config.json` and
/// `adapter_model.safetensors`).
pub fn resolve_adapter(reference: &str, opts: &ResolveOptions) -> Result<PathBuf> {
    resolve(reference, RepoKind::Adapter, opts)
}

/// The folder of a reference expected to hold `kind`.
pub fn resolve(reference: &str, kind: RepoKind, opts: &ResolveOptions) -> Result<PathBuf> {
    match Reference::parse(reference)? {
        Reference::Local(path) => Ok(path),
        Reference::Hub(repo) => match cached(&repo, kind, &opts.hub.cache_dir) {
            Ok(snapshot) => Ok(snapshot.path),
            Err(_) => match download(&repo, kind, &opts.hub, &opts.progress) {
                Ok(snapshot) => Ok(snapshot.path),
                // `runs/tiny` may have been meant as a folder: say that neither exists.
                Err(HubError::NotFound { method, url, .. }) => Err(HubError::Repo {
                    repo: repo.id.clone(),
                    revision: repo.revision.clone(),
                    message: format!(
                        "no folder '{reference}', and the Hub has no such repository or revision ({method} {url}: 404)"
                    ),
                }),
                Err(e) => Err(e),
            },
        },
    }
}
