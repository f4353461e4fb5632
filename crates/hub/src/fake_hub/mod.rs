//! A fake of the Hugging Face Hub's HTTP API on 127.0.0.1, for tests (feature `fake-hub`).
//!
//! Two listeners: the Hub itself and an LFS "storage" (as S3 is to the real Hub), so that tests
//! can check that the token never reaches the storage. Strict where the client could go wrong:
//! the Authorization header, the JSON and NDJSON shapes (unknown keys are refused), LFS oids
//! against the sha256 of the bytes and the declared sizes, files declared LFS at preupload but
//! committed inline. It keeps what it receives (commits, objects, every request) for the tests
//! to inspect, and can inject failures (an HTTP status, or hanging up half-way through a body).

mod routes;
mod wire;
mod xet;

use std::collections::{BTreeMap, HashMap};
use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use wire::{Request, Response};

/// An endpoint of the fake, for fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /api/repos/create`
    Create,
    /// `POST /api/models/{repo}/preupload/{rev}`
    Preupload,
    /// `POST /{repo}.git/info/lfs/objects/batch`
    Batch,
    /// `PUT` to the storage
    Upload,
    /// `POST /{repo}.git/info/lfs/objects/verify`
    Verify,
    /// `POST /api/models/{repo}/commit/{rev}`
    Commit,
    /// `GET /api/models/{repo}/revision/{rev}`
    Info,
    /// `HEAD`/`GET /{repo}/resolve/{rev}/{file}`
    Resolve,
    /// `GET /api/models/{repo}/xet-write-token/{rev}` and `.../xet-read-token/{rev}`
    XetToken,
    /// `GET` of an object from the storage
    Object,
}

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer with this status (after reading the request).
    Status(u16),
    /// Read half of the request body, then close the connection without an answer.
    HangUp,
    /// Answer, but close the connection half-way through the response body.
    CutBody,
}

/// A file in a fake commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeFile {
    /// Stored in the git repository.
    Regular(Vec<u8>),
    /// An LFS pointer.
    Lfs {
        /// sha256.
        oid: String,
        /// Size in bytes.
        size: u64,
    },
}

/// A commit the fake received (or was seeded with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCommit {
    /// 40 hex digits.
    pub oid: String,
    /// The summary.
    pub message: String,
    /// All files of the tree at this commit.
    pub files: BTreeMap<String, FakeFile>,
}

/// A request as received.
#[derive(Debug, Clone)]
pub struct Logged {
    /// `"hub"` or `"storage"`.
    pub server: &'static str,
    /// The parsed request (headers and body included).
    pub request: Request,
}

#[derive(Debug, Default)]
struct FakeRepo {
    private: bool,
    commits: Vec<FakeCommit>,
    branches: BTreeMap<String, usize>,
    /// Upload modes answered at preupload, by path.
    modes: HashMap<String, String>,
}

#[derive(Debug, Default)]
struct State {
    token: String,
    hub_url: String,
    storage_url: String,
    repos: BTreeMap<String, FakeRepo>,
    objects: HashMap<String, Vec<u8>>,
    tickets: HashMap<String, (String, u64)>,
    faults: Vec<(Route, FaultKind, usize)>,
    log: Vec<Logged>,
    counter: u64,
    /// The Xet storage, when the fake speaks Xet ([`FakeHub::start_xet`]).
    xet: Option<Arc<xet::XetCas>>,
    /// Xet hashes of the objects uploaded through Xet, by sha256 oid.
    xet_hashes: HashMap<String, String>,
}

/// The running fake; stops when dropped.
pub struct FakeHub {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    addrs: Vec<std::net::SocketAddr>,
    /// The Hub's base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    /// The storage's base URL.
    pub storage_url: String,
}

impl FakeHub {
    /// Starts both listeners on loopback ports; `token` is the only valid one.
    pub fn start(token: &str) -> FakeHub {
        let hub = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let storage = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let url = format!("http://{}", hub.local_addr().unwrap());
        let storage_url = format!("http://{}", storage.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            token: token.into(),
            hub_url: url.clone(),
            storage_url: storage_url.clone(),
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let addrs = vec![hub.local_addr().unwrap(), storage.local_addr().unwrap()];
        for (listener, server) in [(hub, "hub"), (storage, "storage")] {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || serve(conn, server, &state));
                }
            });
        }
        FakeHub { state, stop, addrs, url, storage_url }
    }

    /// Starts a fake that also speaks Xet, as the Hub does today: the LFS batch answers `xet` to
    /// clients that offer it, the token endpoints hand out a local CAS server (xet-client's own),
    /// commits may name files uploaded there, and resolve announces their `X-Xet-Hash`.
    pub fn start_xet(token: &str) -> FakeHub {
        let hub = FakeHub::start(token);
        let cas = xet::XetCas::start().expect("start the local Xet CAS server");
        hub.state.lock().unwrap().xet = Some(Arc::new(cas));
        hub
    }

    /// The Xet hash the fake announces for the LFS object `oid`, if it came through Xet.
    pub fn xet_hash(&self, oid: &str) -> Option<String> {
        self.state.lock().unwrap().xet_hashes.get(oid).cloned()
    }

    /// Makes `route` fail `times` times with `kind`.
    pub fn fail(&self, route: Route, kind: FaultKind, times: usize) {
        self.state.lock().unwrap().faults.push((route, kind, times));
    }

    /// Creates (or adds a commit to) `repo` on `main` with these files; `.safetensors` files go
    /// to the LFS storage. Returns the commit oid.
    pub fn seed(&self, repo: &str, private: bool, files: &[(&str, &[u8])]) -> String {
        let mut st = self.state.lock().unwrap();
        let mut tree = BTreeMap::new();
        for (path, bytes) in files {
            let entry = if path.ends_with(".safetensors") {
                let oid = sha256_hex(bytes);
                st.objects.insert(oid.clone(), bytes.to_vec());
                FakeFile::Lfs { oid, size: bytes.len() as u64 }
            } else {
                FakeFile::Regular(bytes.to_vec())
            };
            tree.insert(path.to_string(), entry);
        }
        let oid = st.next_oid(repo);
        let r = st.repos.entry(repo.to_string()).or_default();
        r.private = private;
        let mut files = r.branches.get("main").map(|&i| r.commits[i].files.clone()).unwrap_or_default();
        files.extend(tree);
        r.commits.push(FakeCommit { oid: oid.clone(), message: "seed".into(), files });
        r.branches.insert("main".into(), r.commits.len() - 1);
        oid
    }

    /// The commits of `repo`, oldest first.
    pub fn commits(&self, repo: &str) -> Vec<FakeCommit> {
        self.state.lock().unwrap().repos.get(repo).map(|r| r.commits.clone()).unwrap_or_default()
    }

    /// Whether `repo` exists, and whether it is private.
    pub fn repo_private(&self, repo: &str) -> Option<bool> {
        self.state.lock().unwrap().repos.get(repo).map(|r| r.private)
    }

    /// The bytes of `path` at the head of `main` of `repo` (LFS files resolved).
    pub fn file(&self, repo: &str, path: &str) -> Option<Vec<u8>> {
        let st = self.state.lock().unwrap();
        let r = st.repos.get(repo)?;
        let c = &r.commits[*r.branches.get("main")?];
        match c.files.get(path)? {
            FakeFile::Regular(b) => Some(b.clone()),
            FakeFile::Lfs { oid, .. } => st.objects.get(oid).cloned(),
        }
    }

    /// Every request received so far, both servers.
    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loops so they see the flag.
        for a in &self.addrs {
            let _ = TcpStream::connect(a);
        }
        // The serving threads hold the state past this point (a process may exit first), so the
        // Xet CAS is stopped and its folder removed here.
        let cas = self.state.lock().unwrap_or_else(|p| p.into_inner()).xet.take();
        drop(cas);
    }
}

impl State {
    fn next_oid(&mut self, repo: &str) -> String {
        self.counter += 1;
        sha256_hex(format!("{repo}:{}", self.counter).as_bytes())[..40].to_string()
    }

    /// Takes one pending fault for `route`, if any.
    fn take_fault(&mut self, route: Route) -> Option<FaultKind> {
        let f = self.faults.iter_mut().find(|(r, _, n)| *r == route && *n > 0)?;
        f.2 -= 1;
        Some(f.1)
    }
}

/// One connection: read, route, answer, close.
fn serve(conn: TcpStream, server: &'static str, state: &Arc<Mutex<State>>) {
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(conn);
    let Some(mut req) = wire::read_head(&mut reader) else { return };
    let route = routes::route_of(server, &req);
    let fault = route.and_then(|r| state.lock().unwrap().take_fault(r));
    if fault == Some(FaultKind::HangUp) {
        let half = req.header("content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0) / 2;
        let _ = wire::read_body(&mut reader, &mut req, Some(half));
        state.lock().unwrap().log.push(Logged { server, request: req });
        let _ = writer.shutdown(std::net::Shutdown::Both);
        return;
    }
    if wire::read_body(&mut reader, &mut req, None).is_err() {
        return;
    }
    state.lock().unwrap().log.push(Logged { server, request: req.clone() });
    let resp = match fault {
        Some(FaultKind::Status(s)) => Response::error(s, "injected failure"),
        _ => routes::handle(server, &req, &mut state.lock().unwrap()),
    };
    let sent = if fault == Some(FaultKind::CutBody) { resp.body.len() / 2 } else { resp.body.len() };
    let _ = wire::write_cut(&mut writer, req.method == "HEAD", &resp, sent);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}
