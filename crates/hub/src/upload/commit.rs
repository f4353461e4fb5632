//! `POST {endpoint}/api/models/{repo}/commit/{rev}` with an NDJSON body: a header line, then one
//! line per file, inline (`file`, base64) or by LFS pointer (`lfsFile`, sha256 oid and size).
//! Reference: huggingface_hub `_commit_api._payload_as_ndjson`.

use base64::Engine;

use crate::error::{HubError, Result, io};
use crate::http::{Body, Client, encode_revision};
use crate::reference::RepoId;
use crate::upload::folder::{LocalFile, Source};

/// What the Hub answers to a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The commit's page.
    pub url: String,
    /// The commit sha.
    pub oid: String,
}

/// One line per file; `lfs` tells which go by pointer.
pub fn commit(client: &Client, repo: &RepoId, message: &str, files: &[(&LocalFile, bool)]) -> Result<Commit> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut body = Vec::new();
    let header = serde_json::json!({ "key": "header", "value": { "summary": message, "description": "" } });
    push_line(&mut body, &header);
    for (f, lfs) in files {
        let line = if *lfs {
            serde_json::json!({ "key": "lfsFile", "value": { "path": f.path, "algo": "sha256", "oid": f.sha256, "size": f.size } })
        } else {
            let bytes = match &f.source {
                Source::File(p) => std::fs::read(p).map_err(io(p))?,
                Source::Memory(b) => b.clone(),
            };
            serde_json::json!({ "key": "file", "value": { "content": b64.encode(&bytes), "path": f.path, "encoding": "base64" } })
        };
        push_line(&mut body, &line);
    }
    let url = format!("{}/api/models/{}/commit/{}", client.endpoint, repo.id, encode_revision(&repo.revision));
    let resp = client.send("POST", &url, &[("Content-Type", "application/x-ndjson")], Body::Bytes(&body))?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        commit_url: String,
        commit_oid: String,
    }
    let a: Answer = client.json("POST", &url, resp)?;
    if a.commit_oid.is_empty() {
        return Err(HubError::Protocol { url, message: "empty commitOid".into() });
    }
    Ok(Commit { url: a.commit_url, oid: a.commit_oid })
}

fn push_line(body: &mut Vec<u8>, v: &serde_json::Value) {
    serde_json::to_writer(&mut *body, v).expect("json");
    body.push(b'\n');
}
