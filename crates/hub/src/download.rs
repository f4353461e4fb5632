//! Downloading a repository's files into the Hugging Face cache, as huggingface_hub's
//! `snapshot_download` does:
//!
//! 1) `GET {endpoint}/api/models/{repo}/revision/{rev}` gives the commit sha and the file list;
//! 2) for each file lora needs (`files::select`), `HEAD {endpoint}/{repo}/resolve/{commit}/{file}`
//!    gives the blob's ETag (`X-Linked-Etag` for LFS files: their sha256), size
//!    (`X-Linked-Size` / `Content-Length`) and, for LFS files, a redirect to the storage;
//!    relative redirects are followed, absolute ones are not (their headers are the answer);
//! 3) a blob the cache lacks is streamed to `blobs/<etag>.incomplete`, checked (size, and the
//!    sha256 of LFS files), renamed, and linked from `snapshots/<commit>/<file>`;
//! 4) `refs/<rev>` records the commit.
//!
//! The token goes with the requests to the endpoint only; the storage URL an LFS redirect points
//! at is fetched without it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cache::CacheRepo;
use crate::config::HubConfig;
use crate::error::{HubError, Result, io};
use crate::files::{self, RepoKind};
use crate::http::{Attempt, Body, Client, encode_path, encode_revision};
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

/// Fetches what lora needs of `repo` into the cache (skipping blobs already there) and returns the
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
    let client = Client::new(config);
    let cache = CacheRepo::new(&config.cache_dir, repo);
    let repo_err = |message: String| HubError::Repo { repo: repo.id.clone(), revision: repo.revision.clone(), message };

    // 1) the commit and the file list.
    #[derive(serde::Deserialize)]
    struct Sibling {
        rfilename: String,
    }
    #[derive(serde::Deserialize)]
    struct Info {
        sha: String,
        siblings: Vec<Sibling>,
    }
    let url = format!("{}/api/models/{}/revision/{}", client.endpoint, repo.id, encode_revision(&repo.revision));
    let resp = client.send("GET", &url, &[], Body::Empty)?;
    let info: Info = client.json("GET", &url, resp)?;
    if !crate::cache::is_commit_sha(&info.sha) {
        return Err(HubError::Protocol { url, message: format!("'{}' is not a commit sha", info.sha) });
    }
    let listing: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let mut wanted = files::select(&listing, kind).map_err(repo_err)?;

    // 2-3) each file; the shards once the index is in.
    let mut i = 0;
    while i < wanted.len() {
        let file = wanted[i].clone();
        let local = fetch_file(&client, &cache, repo, &info.sha, &file, progress)?;
        if file == files::INDEX {
            let bytes = std::fs::read(&local).map_err(io(&local))?;
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
    cache.write_ref(&repo.revision, &info.sha)?;
    Ok(Snapshot { repo: repo.clone(), commit: info.sha.clone(), path: cache.snapshot_dir(&info.sha) })
}

/// What a HEAD on a resolve URL says about a file.
struct FileMeta {
    etag: String,
    size: u64,
    /// Where the bytes are: the resolve URL itself, or the storage URL of an LFS redirect.
    location: String,
}

/// Step 2: the metadata of one file, following relative redirects only.
fn head(client: &Client, url: &str) -> Result<FileMeta> {
    let mut url = url.to_string();
    for _ in 0..5 {
        let resp = client.send("HEAD", &url, &[("Accept-Encoding", "identity")], Body::Empty)?;
        let status = resp.status().as_u16();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let location = header("location");
        if let Some(loc) = location.as_ref().filter(|l| (300..400).contains(&status) && l.starts_with('/')) {
            // A renamed repository: same host, follow with the same credentials.
            url = format!("{}{loc}", client.endpoint);
            continue;
        }
        let resp = client.expect("HEAD", &url, resp, &[301, 302, 303, 307, 308])?;
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let protocol = |message: &str| HubError::Protocol { url: url.clone(), message: message.into() };
        let etag = header("x-linked-etag").or_else(|| header("etag")).ok_or_else(|| protocol("no ETag header"))?;
        let etag = normalize_etag(&etag);
        if etag.is_empty() || !etag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(protocol("the ETag is not a blob name"));
        }
        let size = header("x-linked-size")
            .or_else(|| header("content-length"))
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| protocol("no X-Linked-Size or Content-Length header"))?;
        let location = if (300..400).contains(&status) {
            location.ok_or_else(|| protocol("a redirect without a Location header"))?
        } else {
            url.clone()
        };
        return Ok(FileMeta { etag, size, location });
    }
    Err(HubError::Protocol { url, message: "too many redirects".into() })
}

/// `W/"abc"` → `abc`.
fn normalize_etag(e: &str) -> String {
    e.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

/// Steps 2-3 for one file; returns its path in the snapshot.
fn fetch_file(
    client: &Client,
    cache: &CacheRepo,
    repo: &RepoId,
    commit: &str,
    file: &str,
    progress: &ProgressFn,
) -> Result<PathBuf> {
    let url = format!("{}/{}/resolve/{commit}/{}", client.endpoint, repo.id, encode_path(file));
    let meta = head(client, &url)?;
    let blob = cache.blob_path(&meta.etag);
    let present = std::fs::metadata(&blob).is_ok_and(|m| m.len() == meta.size);
    if present {
        progress(Progress::Skip { direction: Direction::Download, file });
    } else {
        let parent = blob.parent().expect("blob has a parent");
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        // One partial file per process: two downloads of the same blob never write into each other.
        let part = blob.with_file_name(format!("{}.{}.incomplete", meta.etag, std::process::id()));
        client.retry(|| get_blob(client, &meta, &part, file, progress))?;
        std::fs::rename(&part, &blob).map_err(io(&blob))?;
        progress(Progress::Finish { file });
    }
    cache.link(commit, file, &meta.etag)
}

/// One attempt at streaming a blob to `part`, checking its size and (LFS) sha256.
fn get_blob(client: &Client, meta: &FileMeta, part: &Path, file: &str, progress: &ProgressFn) -> Attempt<()> {
    let mut url = meta.location.clone();
    let mut resp = None;
    for _ in 0..5 {
        match client.attempt("GET", &url, &[("Accept-Encoding", "identity")], Body::Empty) {
            Attempt::Done(r) if r.status().is_redirection() => {
                let Some(loc) = r.headers().get("location").and_then(|v| v.to_str().ok()) else {
                    return Attempt::Fatal(HubError::Protocol { url, message: "a redirect without a Location".into() });
                };
                url =
                    if loc.starts_with('/') { format!("{}{loc}", crate::http::origin(&url)) } else { loc.to_string() };
            }
            Attempt::Done(r) => {
                resp = Some(r);
                break;
            }
            other => return other.map_done(|_| ()),
        }
    }
    let Some(resp) = resp else {
        return Attempt::Fatal(HubError::Protocol { url, message: "too many redirects".into() });
    };
    let mut resp = match client.expect("GET", &url, resp, &[]) {
        Ok(r) => r,
        Err(e) => return Attempt::Fatal(e),
    };
    let mut out = match std::fs::File::create(part) {
        Ok(f) => f,
        Err(e) => return Attempt::Fatal(io(part)(e)),
    };
    progress(Progress::Start { direction: Direction::Download, file, total: meta.size });
    let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let source = ureq::Error::Io(e);
                return Attempt::Transient(HubError::Connection { method: "GET", url, attempts: 1, error: source });
            }
        };
        if let Err(e) = out.write_all(&buf[..n]) {
            return Attempt::Fatal(io(part)(e));
        }
        hasher.update(&buf[..n]);
        got += n as u64;
        progress(Progress::Advance { file, bytes: n as u64 });
    }
    if let Err(e) = out.sync_all() {
        return Attempt::Fatal(io(part)(e));
    }
    if got != meta.size {
        // A connection closed early looks like a short body: try again.
        let message = format!("{got} bytes received, {} announced", meta.size);
        return if got < meta.size {
            let source = ureq::Error::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, message));
            Attempt::Transient(HubError::Connection { method: "GET", url, attempts: 1, error: source })
        } else {
            Attempt::Fatal(HubError::Corrupt { url, message })
        };
    }
    // LFS blobs are named by their sha256: check it.
    if meta.etag.len() == 64 && meta.etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        let sha = hex(&hasher.finalize());
        if !sha.eq_ignore_ascii_case(&meta.etag) {
            return Attempt::Fatal(HubError::Corrupt { url, message: format!("sha256 {sha}, expected {}", meta.etag) });
        }
    }
    Attempt::Done(())
}

impl<T> Attempt<T> {
    /// Maps the success value.
    pub(crate) fn map_done<U>(self, f: impl FnOnce(T) -> U) -> Attempt<U> {
        match self {
            Attempt::Done(t) => Attempt::Done(f(t)),
            Attempt::Transient(e) => Attempt::Transient(e),
            Attempt::Fatal(e) => Attempt::Fatal(e),
        }
    }
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
