//! The Hugging Face cache layout, as huggingface_hub writes and reads it, so that models downloaded
//! by Python tools are reused and ours are reused by them:
//!
//! ```text
//! $HF_HUB_CACHE/models--org--name/
//!   refs/main                      the commit sha the branch pointed to (no newline)
//!   blobs/<etag>                   file contents, named by the Hub's ETag (sha256 for LFS files,
//!                                  git blob sha1 for the others)
//!   snapshots/<commit>/<path>      relative symlinks to ../../blobs/<etag>
//! ```
//!
//! hf-hub writes the blobs and the snapshot links; lora reads snapshots and refs, and writes refs.
//!
//! Reference: huggingface_hub `file_download.py` (`hf_hub_download`, `_create_symlink`) and
//! `constants.py` (`REPO_ID_SEPARATOR = "--"`).

use std::path::{Path, PathBuf};

use crate::error::{Result, io};
use crate::reference::RepoId;

/// One repository's folder in the cache.
#[derive(Debug, Clone)]
pub struct CacheRepo {
    /// `$HF_HUB_CACHE/models--org--name`.
    pub root: PathBuf,
}

impl CacheRepo {
    /// The folder of `repo` under `cache_dir` (it need not exist).
    pub fn new(cache_dir: &Path, repo: &RepoId) -> CacheRepo {
        CacheRepo { root: cache_dir.join(repo.cache_folder()) }
    }

    /// `refs/<revision>`.
    pub fn ref_path(&self, revision: &str) -> PathBuf {
        self.root.join("refs").join(revision)
    }

    /// `snapshots/<commit>`.
    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    /// The commit a revision names in the cache: a full commit sha names itself (when its snapshot
    /// exists); a branch or tag is read from `refs/`.
    pub fn commit_of(&self, revision: &str) -> Option<String> {
        if is_commit_sha(revision) && self.snapshot_dir(revision).is_dir() {
            return Some(revision.to_string());
        }
        let text = std::fs::read_to_string(self.ref_path(revision)).ok()?;
        let sha = text.trim();
        (!sha.is_empty()).then(|| sha.to_string())
    }

    /// Records that `revision` points at `commit` (nothing to do when the revision is the commit).
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit {
            return Ok(());
        }
        let path = self.ref_path(revision);
        // Branch names may contain '/', which makes sub-folders, as in huggingface_hub.
        let parent = path.parent().expect("refs/<rev> has a parent");
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        write_atomic(&path, commit.as_bytes())
    }
}

/// A full 40-hex-digit git commit sha.
pub fn is_commit_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Writes through a temporary file and a rename (the file layer's), so that readers never see half a
/// file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    lora_formats::atomic::write_atomic(path, bytes).map_err(|e| match e {
        lora_formats::FormatError::Io { path, source } => io(path)(source),
        other => io(path)(std::io::Error::other(other.to_string())),
    })
}
