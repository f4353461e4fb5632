//! Downloading what lora needs of a repository into the Hugging Face cache, through hf-hub 1.0
//! (Hugging Face's Rust client), as huggingface_hub's `hf_hub_download` does file by file:
//!
//! 1) the repository's info at the revision gives the commit sha and the file list;
//! 2) lora picks the files it needs (`files::select`: configuration, tokenizer, safetensors only,
//!    the shards an index names);
//! 3) hf-hub fetches each at the commit: a `HEAD` of the resolve URL (relative redirects
//!    followed, the absolute one to the storage not), the blob streamed to
//!    `blobs/<etag>.incomplete` under a `.locks/` lock and renamed, `snapshots/<commit>/<file>`
//!    linked to it; a Xet-backed file (`X-Xet-Hash`) comes through the Xet CAS instead;
//! 4) lora writes `refs/<revision>` (hf-hub writes refs only when asked by branch name).
//!
//! The token goes to the endpoint only: reqwest drops it on the redirect to the storage's host.
//! A transfer broken mid-body is retried whole here (hf-hub retries only failed requests).

use std::path::{Path, PathBuf};

use hf_hub::HFError;

use crate::cache::CacheRepo;
use crate::config::HubConfig;
use crate::error::{HubError, Result};
use crate::files::{self, RepoKind};
use crate::hf;
use crate::progress::{Direction, Progress, ProgressFn};
use crate::reference::RepoId;

/// A complete snapshot of a repository in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The repository and the revision asked for.
    pub repo: RepoId,
    /// The commit the revision resolved to.
    pub commit: String,
    /// `$HF_HUB_CACHE/models--org--name/snapshots/<commit>`: a folder lora loads like any other.
    pub path: PathBuf,
}

/// The snapshot of `repo` in the cache if it holds every file `kind` needs; otherwise the missing
/// files and the paths looked at. Touches no network.
pub fn cached(
    repo: &RepoId,
    kind: RepoKind,
    cache_dir: &Path,
) -> std::result::Result<Snapshot, (Vec<String>, Vec<PathBuf>)> {
    let cache = CacheRepo::new(cache_dir, repo);
    let Some(commit) = cache.commit_of(&repo.revision) else {
        // No snapshot at all: everything is missing.
        let looked = vec![cache.ref_path(&repo.revision), cache.root.join("snapshots")];
        return Err((files::missing(&cache.root.join("snapshots/none"), kind), looked));
    };
    let path = cache.snapshot_dir(&commit);
    let missing = files::missing(&path, kind);
    if missing.is_empty() { Ok(Snapshot { repo: repo.clone(), commit, path }) } else { Err((missing, vec![path])) }
}

/// Fetches what lora needs of `repo` into the cache (skipping files already there) and returns the
/// snapshot. In offline mode, returns the cached snapshot or the list of missing files.
pub fn download(repo: &RepoId, kind: RepoKind, config: &HubConfig, progress: &ProgressFn) -> Result<Snapshot> {
    if config.offline {
        return cached(repo, kind, &config.cache_dir).map_err(|(missing, looked_in)| HubError::OfflineMissing {
            repo: repo.id.clone(),
            revision: repo.revision.clone(),
            missing,
            looked_in,
        });
    }
    let client = hf::client(config)?;
    let failed = |e: HFError| hf::error(e, "GET", config.retry.attempts, config.token.is_some());
    let (owner, name) = hf_hub::split_id(&repo.id);
    let remote = client.model(owner, name);
    let cache = CacheRepo::new(&config.cache_dir, repo);
    let repo_err = |message: String| HubError::Repo { repo: repo.id.clone(), revision: repo.revision.clone(), message };

    // 1) the commit and the file list.
    let info = remote.info().revision(repo.revision.clone()).send().map_err(failed)?;
    let commit = info.sha.filter(|sha| crate::cache::is_commit_sha(sha)).ok_or_else(|| HubError::Protocol {
        url: format!("{}/api/models/{}/revision/{}", config.endpoint, repo.id, repo.revision),
        message: "the repository info has no commit sha".into(),
    })?;
    let listing: Vec<String> = info.siblings.unwrap_or_default().into_iter().map(|s| s.rfilename).collect();
    let mut wanted = files::select(&listing, kind).map_err(repo_err)?;

    // 2-3) each file; the shards once the index is in.
    let mut i = 0;
    while i < wanted.len() {
        let file = wanted[i].clone();
        let local = cache.snapshot_dir(&commit).join(&file);
        if local.is_file() {
            progress(Progress::Skip { direction: Direction::Download, file: &file });
        } else {
            fetch_file(&remote, repo, &commit, &file, config, progress)?;
        }
        if file == files::INDEX {
            let bytes = std::fs::read(&local).map_err(crate::error::io(&local))?;
            for shard in files::shards_of_index(&bytes).map_err(repo_err)? {
                if !listing.contains(&shard) {
                    return Err(repo_err(format!(
                        "{} names shard {shard}, which is not in the repository",
                        files::INDEX
                    )));
                }
                wanted.push(shard);
            }
        }
        i += 1;
    }

    // 4) the ref.
    cache.write_ref(&repo.revision, &commit)?;
    Ok(Snapshot { repo: repo.clone(), commit: commit.clone(), path: cache.snapshot_dir(&commit) })
}

/// Step 3 for one file, retrying a transfer that broke mid-body (the requests themselves are
/// retried by hf-hub).
fn fetch_file(
    remote: &hf_hub::HFRepositorySync<hf_hub::RepoTypeModel>,
    repo: &RepoId,
    commit: &str,
    file: &str,
    config: &HubConfig,
    progress: &ProgressFn,
) -> Result<()> {
    let mut attempt = 1;
    loop {
        let relay = hf::Relay::new(Direction::Download, progress.clone());
        let got = remote
            .download_file()
            .filename(file)
            .revision(commit.to_string())
            .progress(hf_hub::progress::Progress::new(relay))
            .send();
        let broken =
            |e: &HFError| matches!(e, HFError::Request { source, .. } if source.is_body() || source.is_decode());
        match got {
            Err(e) if broken(&e) && attempt < config.retry.attempts => {
                std::thread::sleep(config.retry.delay(attempt));
                attempt += 1;
            }
            Ok(_) => return Ok(()),
            Err(e) => {
                // A body error carries no URL: name the file's.
                let attempts = if broken(&e) { attempt } else { config.retry.attempts };
                return Err(match hf::error(e, "GET", attempts, config.token.is_some()) {
                    HubError::Connection { method, url, attempts, error } if url.is_empty() => HubError::Connection {
                        method,
                        url: format!("{}/{}/resolve/{commit}/{file}", config.endpoint, repo.id),
                        attempts,
                        error,
                    },
                    other => other,
                });
            }
        }
    }
}
