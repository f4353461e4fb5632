//! Publishing to a Hub that stores files in Xet (huggingface.co does): the whole commit goes
//! through hf-hub's `create_commit`, which asks the upload modes again, sends the LFS files'
//! bytes to the Xet CAS (deduplicated by chunk, so bytes the CAS has are not sent again) with
//! a write token from `xet-write-token`, and commits them by their sha256 as `lfsFile` lines,
//! the small files inline. The model card goes from memory.

use hf_hub::repository::CommitOperation;
use hf_hub::{HFClientSync, RepoTypeModel};

use crate::config::HubConfig;
use crate::error::Result;
use crate::hf;
use crate::progress::{Direction, ProgressFn};
use crate::reference::RepoId;
use crate::upload::commit::Commit;
use crate::upload::folder::{LocalFile, Source};

/// Commits `files` to `repo` through hf-hub's Xet upload.
pub fn commit(
    client: &HFClientSync,
    hub: &HubConfig,
    repo: &RepoId,
    message: &str,
    files: &[&LocalFile],
    progress: &ProgressFn,
) -> Result<Commit> {
    let (owner, name) = hf_hub::split_id(&repo.id);
    let operations = files
        .iter()
        .map(|f| match &f.source {
            Source::File(p) => CommitOperation::add_file(&f.path, p),
            Source::Memory(b) => CommitOperation::add_bytes(&f.path, b.clone()),
        })
        .collect();
    let relay = hf::Relay::new(Direction::Upload, progress.clone());
    let info = client
        .repository(RepoTypeModel, owner, name)
        .create_commit()
        .operations(operations)
        .commit_message(message)
        .revision(repo.revision.clone())
        .progress(hf_hub::progress::Progress::new(relay))
        .send()
        .map_err(|e| hf::error(e, "POST", hub.retry.attempts, hub.token.is_some()))?;
    let oid = info.commit_oid.unwrap_or_default();
    let url = info.commit_url.unwrap_or_else(|| format!("{}/{}/commit/{oid}", hub.endpoint, repo.id));
    Ok(Commit { url, oid })
}
