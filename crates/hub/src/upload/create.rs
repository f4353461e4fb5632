//! Creating the model repository through hf-hub (`POST {endpoint}/api/repos/create`, as
//! huggingface_hub's `HfApi.create_repo`); a 409 (it exists) is fine.

use hf_hub::{HFClientSync, HFError, RepoTypeModel};

use crate::config::HubConfig;
use crate::error::Result;
use crate::hf;
use crate::reference::RepoId;

/// Creates `repo` (private or public) unless it exists; returns whether it was created.
pub fn create_repo(client: &HFClientSync, hub: &HubConfig, repo: &RepoId, private: bool) -> Result<bool> {
    match client.create_repository().repo_id(&repo.id).repo_type(RepoTypeModel).private(private).send() {
        Ok(_) => Ok(true),
        Err(HFError::Conflict { .. }) => Ok(false),
        Err(e) => Err(hf::error(e, "POST", hub.retry.attempts, hub.token.is_some())),
    }
}
