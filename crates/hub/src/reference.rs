//! A model or adapter reference: a local folder, or a Hub id `org/name` with an optional revision
//! (`org/name@rev`).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{HubError, Result};

/// What a `--model` / `base = ...` string names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// An existing folder (or file) on disk.
    Local(PathBuf),
    /// A repository on the Hub.
    Hub(RepoId),
}

/// A Hub model repository and revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoId {
    /// `org/name` (or a bare `name` for the Hub's few legacy un-namespaced models).
    pub id: String,
    /// Branch, tag or commit sha; `main` when not given.
    pub revision: String,
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.revision)
    }
}

impl RepoId {
    /// Parses `org/name` or `org/name@rev`, checking the Hub's naming rules (letters, digits, `-`,
    /// `_`, `.`; no `--` or `..`, which would be ambiguous in the cache's folder names).
    pub fn parse(s: &str) -> Result<RepoId> {
        let bad = || HubError::BadReference(s.to_string());
        let (id, revision) = match s.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, rev),
            Some(_) => return Err(bad()),
            None => (s, "main"),
        };
        let parts: Vec<&str> = id.split('/').collect();
        if parts.len() != 2 || !parts.iter().all(|p| valid_part(p)) {
            return Err(bad());
        }
        if revision.contains("..") || revision.starts_with('/') || revision.chars().any(|c| c.is_whitespace()) {
            return Err(bad());
        }
        Ok(RepoId { id: id.to_string(), revision: revision.to_string() })
    }

    /// The cache folder name huggingface_hub uses: `models--org--name`.
    pub fn cache_folder(&self) -> String {
        format!("models--{}", self.id.replace('/', "--"))
    }
}

fn valid_part(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 96
        && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !p.contains("--")
        && !p.contains("..")
        && !p.starts_with(['-', '.'])
        && !p.ends_with(['-', '.'])
}

impl Reference {
    /// An existing path is local; otherwise the string must be a Hub id. A path-looking string
    /// (`./x`, `/x`, `~/x`, three or more components) that does not exist is a missing folder, not
    /// a Hub id, so the error says so.
    pub fn parse(s: &str) -> Result<Reference> {
        let path = Path::new(s);
        if path.exists() {
            return Ok(Reference::Local(path.to_path_buf()));
        }
        let looks_like_path = s.starts_with(['.', '/', '~', '\\']) || s.matches('/').count() != 1 || s.contains('\\');
        if looks_like_path {
            return Err(HubError::Io {
                path: path.to_path_buf(),
                error: std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
            });
        }
        RepoId::parse(s).map(Reference::Hub)
    }
}
