//! Large files through the Git LFS batch API, basic transfer
//! (<https://github.com/git-lfs/git-lfs/blob/main/docs/api/batch.md>):
//!
//! 1) `POST {endpoint}/{repo}.git/info/lfs/objects/batch` with the oids and sizes; objects the
//!    server already has come back without actions and are skipped;
//! 2) `PUT` each remaining file to its `upload.href` with the action's headers (the href is the
//!    storage, which never gets our token);
//! 3) `POST` `{oid, size}` to `verify.href` when the server asks for it.
//!
//! Reference: huggingface_hub `lfs.py` (`post_lfs_batch_info`, `lfs_upload`).
//!
//! The batch offers `xet` too: a server that picks it (huggingface.co) gets the commit through
//! hf-hub's Xet upload instead (`upload::xet`). hf-hub itself speaks only Xet, and would commit
//! the files inline, whole in memory, to a server that does not; this path is for those servers
//! (self-hosted and older Hubs).

use std::collections::BTreeMap;

use crate::error::{HubError, Result};
use crate::http::{Attempt, Body, Client};
use crate::progress::{Direction, Progress, ProgressFn};
use crate::reference::RepoId;
use crate::upload::folder::{LocalFile, Source};

const LFS_JSON: &str = "application/vnd.git-lfs+json";

#[derive(serde::Deserialize)]
struct Action {
    href: String,
    #[serde(default)]
    header: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct Actions {
    upload: Option<Action>,
    verify: Option<Action>,
}

#[derive(serde::Deserialize)]
struct ObjectError {
    code: i64,
    message: String,
}

#[derive(serde::Deserialize)]
struct Object {
    oid: String,
    size: u64,
    actions: Option<Actions>,
    error: Option<ObjectError>,
}

#[derive(serde::Deserialize)]
struct Batch {
    transfer: Option<String>,
    objects: Vec<Object>,
}

/// What the LFS batch decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// The server took the files through basic transfers (this many were sent; the others it had).
    Basic(usize),
    /// The server stores files in Xet: nothing was sent, the commit goes through hf-hub.
    Xet,
}

/// Uploads the LFS `files` the server lacks, unless the server chooses Xet.
pub fn upload_lfs(client: &Client, repo: &RepoId, files: &[&LocalFile], progress: &ProgressFn) -> Result<Transfer> {
    if files.is_empty() {
        return Ok(Transfer::Basic(0));
    }
    let url = format!("{}/{}.git/info/lfs/objects/batch", client.endpoint, repo.id);
    let objects: Vec<_> = files.iter().map(|f| serde_json::json!({ "oid": f.sha256, "size": f.size })).collect();
    let body = serde_json::json!({
        "operation": "upload",
        "transfers": ["basic", "xet"],
        "objects": objects,
        "hash_algo": "sha256",
        "ref": { "name": repo.revision },
    });
    let body = serde_json::to_vec(&body).expect("json");
    let headers = [("Accept", LFS_JSON), ("Content-Type", LFS_JSON)];
    let resp = client.send("POST", &url, &headers, Body::Bytes(&body))?;
    let batch: Batch = client.json("POST", &url, resp)?;
    let protocol = |message: String| HubError::Protocol { url: url.clone(), message };
    match batch.transfer.as_deref() {
        None | Some("basic") => {}
        Some("xet") => return Ok(Transfer::Xet),
        Some(t) => return Err(protocol(format!("transfer '{t}' was chosen, but only 'basic' and 'xet' were offered"))),
    }
    let mut sent = 0;
    for f in files {
        let obj = batch
            .objects
            .iter()
            .find(|o| o.oid == f.sha256 && o.size == f.size)
            .ok_or_else(|| protocol(format!("no answer for {} (oid {})", f.path, f.sha256)))?;
        if let Some(e) = &obj.error {
            return Err(protocol(format!("{}: LFS error {}: {}", f.path, e.code, e.message)));
        }
        let Some(actions) = &obj.actions else {
            progress(Progress::Skip { direction: Direction::Upload, file: &f.path });
            continue;
        };
        if let Some(up) = &actions.upload {
            if up.header.contains_key("chunk_size") {
                return Err(protocol(format!(
                    "{}: multipart transfer asked for, but only 'basic' was offered",
                    f.path
                )));
            }
            put(client, up, f, progress)?;
            sent += 1;
        }
        if let Some(verify) = &actions.verify {
            let body = serde_json::to_vec(&serde_json::json!({ "oid": f.sha256, "size": f.size })).expect("json");
            let mut headers: Vec<(&str, &str)> = verify.header.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            headers.push(("Accept", LFS_JSON));
            headers.push(("Content-Type", LFS_JSON));
            let resp = client.send("POST", &verify.href, &headers, Body::Bytes(&body))?;
            client.expect("POST", &verify.href, resp, &[])?;
        }
        progress(Progress::Finish { file: &f.path });
    }
    Ok(Transfer::Basic(sent))
}

/// Step 2 for one file, retried whole on transient failures.
fn put(client: &Client, action: &Action, f: &LocalFile, progress: &ProgressFn) -> Result<()> {
    let headers: Vec<(&str, &str)> = action.header.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    client.retry(|| {
        progress(Progress::Start { direction: Direction::Upload, file: &f.path, total: f.size });
        let body = match &f.source {
            Source::File(p) => Body::File(p),
            Source::Memory(b) => Body::Bytes(b),
        };
        match client.attempt("PUT", &action.href, &headers, body) {
            Attempt::Done(resp) => match client.expect("PUT", &action.href, resp, &[]) {
                Ok(_) => {
                    progress(Progress::Advance { file: &f.path, bytes: f.size });
                    Attempt::Done(())
                }
                Err(e) => Attempt::Fatal(e),
            },
            other => other.map_done(|_| ()),
        }
    })
}
