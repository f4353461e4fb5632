//! Publishing an adapter folder to the Hub in one commit, as huggingface_hub's `upload_folder`
//! does: create the repo (409 = exists; through hf-hub), ask the upload mode of each file
//! (preupload), then either hand the commit to hf-hub's Xet upload when the LFS batch picks Xet
//! (huggingface.co), or send the LFS files through basic transfers and commit every file at once
//! (Hubs without Xet, which hf-hub cannot upload large files to). The commit comes last and
//! only after every upload succeeded, so a failure never leaves a commit with missing files.

mod commit;
mod create;
mod folder;
mod lfs;
mod preupload;
mod xet;

use std::path::Path;

pub use commit::Commit;
pub use preupload::UploadMode;

use crate::config::HubConfig;
use crate::error::{HubError, Result, io};
use crate::http::Client;
use crate::model_card;
use crate::progress::ProgressFn;
use crate::reference::RepoId;
use folder::LocalFile;

/// What to publish where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOptions {
    /// `org/name`.
    pub repo: String,
    /// The branch to commit to (`main`).
    pub revision: String,
    /// Create the repository private (no effect when it exists).
    pub private: bool,
    /// The commit message; a default names the files.
    pub message: Option<String>,
    /// The base model's Hub id for the model card, when the card or adapter config lack a valid one.
    pub base_model: Option<String>,
}

impl PublishOptions {
    /// Public, to `main`, default message.
    pub fn new(repo: impl Into<String>) -> PublishOptions {
        PublishOptions { repo: repo.into(), revision: "main".into(), private: false, message: None, base_model: None }
    }
}

/// One published file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedFile {
    /// Path in the repository.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// How it went.
    pub mode: UploadMode,
    /// For LFS files: whether the bytes were sent (false: the server had them).
    pub sent: bool,
}

/// The outcome of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The repository's page.
    pub repo_url: String,
    /// Whether the repository was created by this publish.
    pub created: bool,
    /// The commit.
    pub commit: Commit,
    /// The files, sorted by path.
    pub files: Vec<PublishedFile>,
    /// Model-card keys that were filled in.
    pub card_filled: Vec<String>,
}

/// Publishes the adapter in `folder` to `opts.repo` in one commit. Needs a token in `hub`.
pub fn publish_folder(
    folder: &Path,
    opts: &PublishOptions,
    hub: &HubConfig,
    progress: &ProgressFn,
) -> Result<Published> {
    if hub.offline {
        return Err(HubError::Publish {
            path: folder.to_path_buf(),
            message: "offline mode is on (HF_HUB_OFFLINE or --offline); publishing needs the network".into(),
        });
    }
    if hub.token.is_none() {
        return Err(HubError::NoToken { token_file: hub.token_file.clone() });
    }
    let repo = RepoId::parse(&opts.repo)?;
    if opts.repo.contains('@') {
        return Err(HubError::BadReference(opts.repo.clone()));
    }
    let repo = RepoId { revision: opts.revision.clone(), ..repo };

    // The files, with the completed model card in place of README.md.
    let names = folder::publishable(folder)?;
    let mut files = Vec::new();
    for name in names.iter().filter(|n| *n != "README.md") {
        files.push(LocalFile::from_file(name, &folder.join(name))?);
    }
    let card_path = folder.join("README.md");
    let card_text = match std::fs::read_to_string(&card_path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&card_path)(e)),
    };
    let cfg_path = folder.join("adapter_config.json");
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).map_err(io(&cfg_path))?)
        .map_err(|e| HubError::Publish { path: cfg_path.clone(), message: format!("not valid JSON: {e}") })?;
    let hint = cfg.get("base_model_name_or_path").and_then(|v| v.as_str());
    let card = model_card::complete(card_text.as_deref(), opts.base_model.as_deref(), hint, &repo.id)
        .map_err(|message| HubError::Publish { path: card_path.clone(), message })?;
    files.push(LocalFile::from_memory("README.md", card.text.into_bytes()));
    files.sort_by(|a, b| a.path.cmp(&b.path));

    let client = Client::new(hub);
    let hf_client = crate::hf::client(hub)?;
    let created = create::create_repo(&hf_client, hub, &repo, opts.private)?;
    let modes = preupload::upload_modes(&client, &repo, &files)?;
    let lfs_files: Vec<&LocalFile> = files.iter().filter(|f| modes[&f.path] == UploadMode::Lfs).collect();
    let kept: Vec<&LocalFile> = files.iter().filter(|f| modes[&f.path] != UploadMode::Ignore).collect();
    let message =
        opts.message.clone().unwrap_or_else(|| format!("Upload LoRA adapter ({} files) with lora", kept.len()));
    let commit = match lfs::upload_lfs(&client, &repo, &lfs_files, progress)? {
        lfs::Transfer::Xet => xet::commit(&hf_client, hub, &repo, &message, &kept, progress)?,
        lfs::Transfer::Basic(_) => {
            let committed: Vec<(&LocalFile, bool)> =
                kept.iter().map(|f| (*f, modes[&f.path] == UploadMode::Lfs)).collect();
            commit::commit(&client, &repo, &message, &committed)?
        }
    };

    // Which LFS objects were actually sent is not worth a second round trip: the batch answer
    // already decided it; report the modes.
    let published = files
        .iter()
        .map(|f| PublishedFile {
            path: f.path.clone(),
            size: f.size,
            mode: modes[&f.path],
            sent: modes[&f.path] != UploadMode::Ignore,
        })
        .collect();
    Ok(Published {
        repo_url: format!("{}/{}", client.endpoint, repo.id),
        created,
        commit,
        files: published,
        card_filled: card.filled,
    })
}
