//! `POST {endpoint}/api/models/{repo}/preupload/{rev}`: the Hub says for each file whether it goes
//! through LFS or inline in the commit (from its size, its sample and the repo's .gitattributes),
//! and which to ignore. Reference: huggingface_hub `_commit_api._fetch_upload_modes`.

use std::collections::HashMap;

use base64::Engine;

use crate::error::{HubError, Result};
use crate::http::{Body, Client, encode_revision};
use crate::reference::RepoId;
use crate::upload::folder::LocalFile;

/// How one file is uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadMode {
    /// Inline, base64, in the commit.
    Regular,
    /// Through the LFS storage; the commit names its sha256.
    Lfs,
    /// Left out (the repo's .gitignore matches it).
    Ignore,
}

/// Asks the Hub for the upload mode of every file (in chunks of 256, as huggingface_hub does).
pub fn upload_modes(client: &Client, repo: &RepoId, files: &[LocalFile]) -> Result<HashMap<String, UploadMode>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        path: String,
        upload_mode: String,
        #[serde(default)]
        should_ignore: bool,
    }
    #[derive(serde::Deserialize)]
    struct Answers {
        files: Vec<Answer>,
    }
    let url = format!("{}/api/models/{}/preupload/{}", client.endpoint, repo.id, encode_revision(&repo.revision));
    let mut modes = HashMap::new();
    for chunk in files.chunks(256) {
        let b64 = base64::engine::general_purpose::STANDARD;
        let list: Vec<_> = chunk
            .iter()
            .map(|f| serde_json::json!({ "path": f.path, "sample": b64.encode(&f.sample), "size": f.size }))
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "files": list })).expect("json");
        let resp = client.send("POST", &url, &[("Content-Type", "application/json")], Body::Bytes(&body))?;
        let answers: Answers = client.json("POST", &url, resp)?;
        for a in answers.files {
            let mode = match (a.should_ignore, a.upload_mode.as_str()) {
                (true, _) => UploadMode::Ignore,
                (false, "lfs") => UploadMode::Lfs,
                (false, "regular") => UploadMode::Regular,
                (false, other) => {
                    return Err(HubError::Protocol {
                        url,
                        message: format!("unknown uploadMode '{other}' for {}", a.path),
                    });
                }
            };
            modes.insert(a.path, mode);
        }
    }
    if let Some(f) = files.iter().find(|f| !modes.contains_key(&f.path)) {
        return Err(HubError::Protocol { url, message: format!("no upload mode for {}", f.path) });
    }
    Ok(modes)
}
