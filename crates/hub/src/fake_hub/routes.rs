//! The fake Hub's endpoints, checked as strictly as the real ones (stricter where cheap).

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Value, json};

use super::wire::{Request, Response};
use super::{FakeCommit, FakeFile, FakeRepo, Route, State, sha256_hex};

const LFS_JSON: &str = "application/vnd.git-lfs+json";

fn segments(path: &str) -> Vec<String> {
    path.trim_start_matches('/').split('/').map(|s| s.replace("%2F", "/").replace("%2f", "/")).collect()
}

/// Which endpoint a request is for (None: unknown, answered 404).
pub fn route_of(server: &str, req: &Request) -> Option<Route> {
    let s = segments(&req.path);
    let s: Vec<&str> = s.iter().map(String::as_str).collect();
    let m = req.method.as_str();
    Some(match (server, m, s.as_slice()) {
        ("storage", "PUT", ["upload", _]) => Route::Upload,
        ("storage", "GET", ["objects", _]) => Route::Object,
        ("hub", "POST", ["api", "repos", "create"]) => Route::Create,
        ("hub", "POST", ["api", "models", _, _, "preupload", _]) => Route::Preupload,
        ("hub", "POST", ["api", "models", _, _, "commit", _]) => Route::Commit,
        ("hub", "GET", ["api", "models", _, _, "revision", _]) => Route::Info,
        ("hub", "POST", [_, _, "info", "lfs", "objects", "batch"]) => Route::Batch,
        ("hub", "POST", [_, _, "info", "lfs", "objects", "verify"]) => Route::Verify,
        ("hub", "HEAD" | "GET", [_, _, "resolve", _, ..]) => Route::Resolve,
        ("hub", "GET", ["api", "models", _, _, "xet-write-token" | "xet-read-token", _]) => Route::XetToken,
        _ => return None,
    })
}

fn bad(msg: impl AsRef<str>) -> Response {
    Response::error(400, msg.as_ref())
}

/// Authorization: `Some(true)` valid, `Some(false)` present but wrong, `None` absent.
fn auth(req: &Request, st: &State) -> Option<bool> {
    req.header("authorization").map(|v| v == format!("Bearer {}", st.token))
}

fn require_auth(req: &Request, st: &State) -> Result<(), Response> {
    match auth(req, st) {
        Some(true) => Ok(()),
        Some(false) => Err(Response::error(401, "Invalid credentials in Authorization header")),
        None => Err(Response::error(401, "Authorization header is required")),
    }
}

/// Reads need a token for private repos; a wrong token is refused even for public ones.
fn require_read(req: &Request, st: &State, repo: &str) -> Result<(), Response> {
    if auth(req, st) == Some(false) {
        return Err(Response::error(401, "Invalid credentials in Authorization header"));
    }
    match st.repos.get(repo) {
        None => Err(Response::error(404, "Repository not found")),
        Some(r) if r.private && auth(req, st) != Some(true) => Err(Response::error(401, "Repository not found")),
        Some(_) => Ok(()),
    }
}

/// A JSON object with exactly the keys `required` (+ any of `optional`).
fn object<'a>(
    v: &'a Value,
    required: &[&str],
    optional: &[&str],
    what: &str,
) -> Result<&'a serde_json::Map<String, Value>, Response> {
    let o = v.as_object().ok_or_else(|| bad(format!("{what}: expected an object")))?;
    for k in required {
        if !o.contains_key(*k) {
            return Err(bad(format!("{what}: missing key '{k}'")));
        }
    }
    if let Some(k) = o.keys().find(|k| !required.contains(&k.as_str()) && !optional.contains(&k.as_str())) {
        return Err(bad(format!("{what}: unknown key '{k}'")));
    }
    Ok(o)
}

fn is_oid(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Answers one request.
pub fn handle(server: &str, req: &Request, st: &mut State) -> Response {
    let s = segments(&req.path);
    let s: Vec<&str> = s.iter().map(String::as_str).collect();
    let result = match route_of(server, req) {
        None => Err(Response::error(404, "no such endpoint")),
        Some(Route::Upload) => upload(req, st, s[1]),
        Some(Route::Object) => object_get(req, st, s[1]),
        Some(Route::Create) => create(req, st),
        Some(Route::Preupload) => preupload(req, st, &format!("{}/{}", s[2], s[3])),
        Some(Route::Commit) => commit(req, st, &format!("{}/{}", s[2], s[3]), s[5]),
        Some(Route::Info) => info(req, st, &format!("{}/{}", s[2], s[3]), s[5]),
        Some(Route::Batch) => batch(req, st, &format!("{}/{}", s[0], s[1].trim_end_matches(".git"))),
        Some(Route::Verify) => verify(req, st),
        Some(Route::Resolve) => resolve(req, st, &format!("{}/{}", s[0], s[1]), s[3], &s[4..].join("/")),
        Some(Route::XetToken) => xet_token(req, st, &format!("{}/{}", s[2], s[3]), s[4] == "xet-write-token"),
    };
    result.unwrap_or_else(|e| e)
}

fn parse_json(req: &Request) -> Result<Value, Response> {
    serde_json::from_slice(&req.body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

fn create(req: &Request, st: &mut State) -> Result<Response, Response> {
    require_auth(req, st)?;
    let v = parse_json(req)?;
    let o = object(&v, &["name", "organization"], &["private", "type"], "create")?;
    if o.get("type").is_some_and(|t| t != "model") {
        return Err(bad("create: only model repositories here"));
    }
    let id = format!("{}/{}", o["organization"].as_str().unwrap_or(""), o["name"].as_str().unwrap_or(""));
    if st.repos.contains_key(&id) {
        return Err(Response::error(409, "You already created this model repo"));
    }
    let private = o.get("private").and_then(Value::as_bool).unwrap_or(false);
    st.repos.insert(id.clone(), FakeRepo { private, ..FakeRepo::default() });
    Ok(Response::json(200, &json!({ "url": format!("{}/{id}", st.hub_url), "name": id })))
}

fn preupload(req: &Request, st: &mut State, repo: &str) -> Result<Response, Response> {
    require_auth(req, st)?;
    let v = parse_json(req)?;
    let o = object(&v, &["files"], &["gitIgnore"], "preupload")?;
    let files = o["files"].as_array().ok_or_else(|| bad("preupload: files must be a list"))?;
    let mut answers = Vec::new();
    let mut modes = Vec::new();
    for f in files {
        let f = object(f, &["path", "sample", "size"], &["sha"], "preupload file")?;
        let path = f["path"].as_str().ok_or_else(|| bad("preupload: path must be a string"))?;
        let size = f["size"].as_u64().ok_or_else(|| bad("preupload: size must be an integer"))?;
        let sample = base64::engine::general_purpose::STANDARD
            .decode(f["sample"].as_str().unwrap_or("?"))
            .map_err(|_| bad(format!("preupload: sample of {path} is not base64")))?;
        if sample.len() as u64 != size.min(512) {
            return Err(bad(format!(
                "preupload: sample of {path} has {} bytes, expected {}",
                sample.len(),
                size.min(512)
            )));
        }
        let lfs = path.ends_with(".safetensors") || size > 10 << 20 || sample.contains(&0);
        let mode = if lfs { "lfs" } else { "regular" };
        modes.push((path.to_string(), mode.to_string()));
        answers.push(json!({ "path": path, "uploadMode": mode, "shouldIgnore": false, "oid": null }));
    }
    let r = st.repos.get_mut(repo).ok_or_else(|| Response::error(404, "Repository not found"))?;
    r.modes.extend(modes);
    Ok(Response::json(200, &json!({ "files": answers, "commitOid": null })))
}

fn batch(req: &Request, st: &mut State, repo: &str) -> Result<Response, Response> {
    require_auth(req, st)?;
    if req.header("accept") != Some(LFS_JSON) || req.header("content-type") != Some(LFS_JSON) {
        return Err(Response::error(406, "LFS batch needs Accept and Content-Type application/vnd.git-lfs+json"));
    }
    if !st.repos.contains_key(repo) {
        return Err(Response::error(404, "Repository not found"));
    }
    let v = parse_json(req)?;
    let o = object(&v, &["operation", "objects"], &["transfers", "hash_algo", "ref"], "batch")?;
    if o["operation"] != "upload" {
        return Err(bad("batch: only the upload operation here"));
    }
    let offers = |name: &str| o.get("transfers").and_then(Value::as_array).is_some_and(|t| t.iter().any(|x| x == name));
    if st.xet.is_some() && offers("xet") {
        // As the Hub: Xet-capable clients send their bytes to the CAS, not through actions.
        let objects: Vec<Value> = o["objects"].as_array().into_iter().flatten().cloned().collect();
        let mut resp = Response::json(200, &json!({ "transfer": "xet", "objects": objects }));
        resp.headers = vec![("Content-Type".into(), LFS_JSON.into())];
        return Ok(resp);
    }
    let offers_basic = o.get("transfers").is_none() || offers("basic");
    if !offers_basic || o.get("hash_algo").is_some_and(|h| h != "sha256") {
        return Err(Response::error(422, "batch: basic transfer and sha256 only"));
    }
    let mut out = Vec::new();
    for obj in o["objects"].as_array().ok_or_else(|| bad("batch: objects must be a list"))? {
        let obj = object(obj, &["oid", "size"], &[], "batch object")?;
        let oid = obj["oid"]
            .as_str()
            .filter(|s| is_oid(s))
            .ok_or_else(|| bad("batch: oid must be 64 lower-case hex digits"))?;
        let size = obj["size"].as_u64().ok_or_else(|| bad("batch: size must be an integer"))?;
        if st.objects.get(oid).is_some_and(|b| b.len() as u64 == size) {
            out.push(json!({ "oid": oid, "size": size }));
            continue;
        }
        st.counter += 1;
        let ticket = format!("t{}", st.counter);
        st.tickets.insert(ticket.clone(), (oid.to_string(), size));
        out.push(json!({
            "oid": oid, "size": size, "authenticated": true,
            "actions": {
                "upload": { "href": format!("{}/upload/{ticket}", st.storage_url), "header": { "X-Ticket": ticket } },
                "verify": { "href": format!("{}/{repo}.git/info/lfs/objects/verify", st.hub_url), "header": {} },
            }
        }));
    }
    let mut resp = Response::json(200, &json!({ "transfer": "basic", "objects": out }));
    resp.headers = vec![("Content-Type".into(), LFS_JSON.into())];
    Ok(resp)
}

fn upload(req: &Request, st: &mut State, ticket: &str) -> Result<Response, Response> {
    if req.header("authorization").is_some() {
        return Err(bad("the storage must never receive the Hub token"));
    }
    let (oid, size) = st.tickets.get(ticket).cloned().ok_or_else(|| Response::error(403, "unknown upload ticket"))?;
    if req.header("x-ticket") != Some(ticket) {
        return Err(Response::error(403, "the action's headers were not sent"));
    }
    if req.body.len() as u64 != size {
        return Err(bad(format!("object {oid}: {} bytes received, {size} declared", req.body.len())));
    }
    if sha256_hex(&req.body) != oid {
        return Err(bad(format!("object {oid}: sha256 of the bytes differs")));
    }
    st.objects.insert(oid, req.body.clone());
    Ok(Response { status: 200, headers: vec![], body: vec![] })
}

fn verify(req: &Request, st: &mut State) -> Result<Response, Response> {
    require_auth(req, st)?;
    let v = parse_json(req)?;
    let o = object(&v, &["oid", "size"], &[], "verify")?;
    let oid = o["oid"].as_str().unwrap_or("");
    match st.objects.get(oid) {
        Some(b) if Some(b.len() as u64) == o["size"].as_u64() => Ok(Response::json(200, &json!({}))),
        _ => Err(Response::error(404, "object not found or wrong size")),
    }
}

fn commit(req: &Request, st: &mut State, repo: &str, rev: &str) -> Result<Response, Response> {
    require_auth(req, st)?;
    if req.header("content-type") != Some("application/x-ndjson") {
        return Err(bad("commit: Content-Type must be application/x-ndjson"));
    }
    let text = std::str::from_utf8(&req.body).map_err(|_| bad("commit: body is not UTF-8"))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Value = serde_json::from_str(lines.next().ok_or_else(|| bad("commit: empty body"))?)
        .map_err(|e| bad(format!("commit: header line: {e}")))?;
    let h = object(&header, &["key", "value"], &[], "commit header line")?;
    if h["key"] != "header" {
        return Err(bad("commit: the first line must be the header"));
    }
    let hv = object(&h["value"], &["summary"], &["description", "parentCommit"], "commit header")?;
    let summary =
        hv["summary"].as_str().filter(|s| !s.is_empty()).ok_or_else(|| bad("commit: empty summary"))?.to_string();
    let r = st.repos.get(repo).ok_or_else(|| Response::error(404, "Repository not found"))?;
    let first_commit = rev == "main" && r.commits.is_empty();
    if !first_commit && !r.branches.contains_key(rev) {
        return Err(Response::error(404, format!("Invalid rev id: {rev}").as_str()));
    }
    let mut new_files = BTreeMap::new();
    for line in lines {
        let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("commit: bad line: {e}")))?;
        let l = object(&v, &["key", "value"], &[], "commit line")?;
        let (path, entry) = match l["key"].as_str() {
            Some("file") => {
                let f = object(&l["value"], &["content", "path", "encoding"], &[], "commit file")?;
                if f["encoding"] != "base64" {
                    return Err(bad("commit: encoding must be base64"));
                }
                let path = f["path"].as_str().unwrap_or("").to_string();
                if r.modes.get(&path).map(String::as_str) == Some("lfs") {
                    return Err(bad(format!("commit: {path} must be uploaded through LFS (preupload said so)")));
                }
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(f["content"].as_str().unwrap_or("?"))
                    .map_err(|_| bad(format!("commit: content of {path} is not base64")))?;
                (path, FakeFile::Regular(bytes))
            }
            Some("lfsFile") => {
                let f = object(&l["value"], &["path", "algo", "oid", "size"], &[], "commit lfsFile")?;
                if f["algo"] != "sha256" {
                    return Err(bad("commit: algo must be sha256"));
                }
                let oid =
                    f["oid"].as_str().filter(|s| is_oid(s)).ok_or_else(|| bad("commit: bad LFS oid"))?.to_string();
                let size = f["size"].as_u64().ok_or_else(|| bad("commit: size must be an integer"))?;
                if !st.objects.contains_key(&oid)
                    && let Some((hash, bytes)) = st.xet.as_ref().and_then(|cas| cas.file_by_sha256(&oid))
                {
                    // Uploaded through Xet: the CAS has it; keep the bytes for `file()`.
                    st.xet_hashes.insert(oid.clone(), hash);
                    st.objects.insert(oid.clone(), bytes);
                }
                if st.objects.get(&oid).map(|b| b.len() as u64) != Some(size) {
                    return Err(Response::error(
                        422,
                        &format!("commit: LFS object {oid} ({size} bytes) was never uploaded"),
                    ));
                }
                (f["path"].as_str().unwrap_or("").to_string(), FakeFile::Lfs { oid, size })
            }
            other => return Err(bad(format!("commit: unknown line key {other:?}"))),
        };
        if path.is_empty() || path.starts_with('/') || path.contains("..") {
            return Err(bad(format!("commit: bad path '{path}'")));
        }
        if new_files.insert(path.clone(), entry).is_some() {
            return Err(bad(format!("commit: {path} appears twice")));
        }
    }
    if new_files.is_empty() {
        return Err(bad("commit: no files"));
    }
    let oid = st.next_oid(repo);
    let hub_url = st.hub_url.clone();
    let r = st.repos.get_mut(repo).expect("checked");
    let mut files = r.branches.get(rev).map(|&i| r.commits[i].files.clone()).unwrap_or_default();
    files.extend(new_files);
    r.commits.push(FakeCommit { oid: oid.clone(), message: summary, files });
    r.branches.insert(rev.to_string(), r.commits.len() - 1);
    Ok(Response::json(
        200,
        &json!({ "commitUrl": format!("{hub_url}/{repo}/commit/{oid}"), "commitOid": oid, "pullRequestUrl": null }),
    ))
}

fn commit_at<'a>(r: &'a FakeRepo, rev: &str) -> Option<&'a FakeCommit> {
    match r.branches.get(rev) {
        Some(&i) => Some(&r.commits[i]),
        None => r.commits.iter().find(|c| c.oid == rev),
    }
}

fn info(req: &Request, st: &mut State, repo: &str, rev: &str) -> Result<Response, Response> {
    require_read(req, st, repo)?;
    let r = &st.repos[repo];
    let c = commit_at(r, rev).ok_or_else(|| Response::error(404, &format!("Invalid rev id: {rev}")))?;
    let siblings: Vec<Value> = c.files.keys().map(|p| json!({ "rfilename": p })).collect();
    Ok(Response::json(200, &json!({ "id": repo, "sha": c.oid, "private": r.private, "siblings": siblings })))
}

fn resolve(req: &Request, st: &mut State, repo: &str, rev: &str, file: &str) -> Result<Response, Response> {
    require_read(req, st, repo)?;
    let r = &st.repos[repo];
    let c = commit_at(r, rev).ok_or_else(|| Response::error(404, &format!("Invalid rev id: {rev}")))?;
    let entry = c.files.get(file).ok_or_else(|| Response::error(404, "Entry not found"))?;
    Ok(match entry {
        FakeFile::Regular(bytes) => {
            // A git-blob-sha1 lookalike: 40 hex digits of the content's hash.
            let mut git = format!("blob {}\0", bytes.len()).into_bytes();
            git.extend_from_slice(bytes);
            let etag = sha256_hex(&git)[..40].to_string();
            Response { status: 200, headers: vec![], body: bytes.clone() }
                .with("ETag", format!("\"{etag}\""))
                .with("X-Repo-Commit", c.oid.clone())
        }
        FakeFile::Lfs { oid, size } => {
            let resp = Response { status: 302, headers: vec![], body: vec![] }
                .with("Location", format!("{}/objects/{oid}", st.storage_url))
                .with("ETag", "\"not-the-blob\"")
                .with("X-Linked-Etag", format!("\"{oid}\""))
                .with("X-Linked-Size", size.to_string())
                .with("X-Repo-Commit", c.oid.clone());
            match st.xet_hashes.get(oid) {
                Some(hash) => resp.with("X-Xet-Hash", hash.clone()),
                None => resp,
            }
        }
    })
}

/// `GET /api/models/{repo}/xet-{write,read}-token/{rev}`: where the CAS is and a token for it
/// (`accessToken`, `exp` in Unix seconds, `casUrl`), as the Hub answers; writing needs the Hub
/// token, reading what the repository's reads need.
fn xet_token(req: &Request, st: &mut State, repo: &str, write: bool) -> Result<Response, Response> {
    if write {
        require_auth(req, st)?;
        if !st.repos.contains_key(repo) {
            return Err(Response::error(404, "Repository not found"));
        }
    } else {
        require_read(req, st, repo)?;
    }
    let cas = st.xet.as_ref().ok_or_else(|| Response::error(404, "this Hub does not use Xet"))?;
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    st.counter += 1;
    Ok(Response::json(
        200,
        &json!({ "accessToken": format!("xet-{}", st.counter), "exp": exp + 3600, "casUrl": cas.url }),
    ))
}

fn object_get(req: &Request, st: &mut State, oid: &str) -> Result<Response, Response> {
    if req.header("authorization").is_some() {
        return Err(bad("the storage must never receive the Hub token"));
    }
    let bytes = st.objects.get(oid).ok_or_else(|| Response::error(404, "no such object"))?;
    Ok(Response { status: 200, headers: vec![], body: bytes.clone() })
}
