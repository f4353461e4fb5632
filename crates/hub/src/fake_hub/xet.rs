//! The fake Hub's Xet storage, what the Hub's CAS is to hf-hub: xet-client's own local CAS server
//! (its `simulation` feature, the REST API xet-client's `RemoteClient` speaks) on 127.0.0.1, on a
//! tokio runtime of its own, with its data in a temporary folder.
//!
//! The Hub's side of Xet lives in `routes`: the `xet-write-token` / `xet-read-token` endpoints that
//! hand out this server's URL, the `xet` answer at the LFS batch, `X-Xet-Hash` on resolve. What the
//! Hub learns from the CAS is here: which uploaded file has a given sha256 (the oid a commit names),
//! read as the Hub reads it, from the file metadata of the shards the client uploaded.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use xet_client::cas_client::{DirectAccessClient, LocalClient, LocalServer};
use xet_core_structures::metadata_shard::{MDBShardFile, new_shard_file_cache};
use xet_runtime::core::XetContext;

/// A running local CAS server; stops and removes its data when dropped.
pub(crate) struct XetCas {
    runtime: tokio::runtime::Runtime,
    client: Arc<LocalClient>,
    dir: PathBuf,
    /// `http://127.0.0.1:PORT`, the `casUrl` of the token endpoints.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl XetCas {
    /// Starts the server on a free loopback port.
    pub fn start() -> std::io::Result<XetCas> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let dir = std::env::temp_dir().join(format!(
            "lora-fake-cas-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let ctx = XetContext::default().map_err(std::io::Error::other)?;
        let client = runtime.block_on(LocalClient::new(ctx, &dir)).map_err(std::io::Error::other)?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let server = LocalServer::from_client(client.clone(), None, "127.0.0.1".into(), port);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            let _ = server.serve_until_stopped(listener, stopped).await;
        });
        Ok(XetCas { runtime, client, dir, url: format!("http://127.0.0.1:{port}"), stop: Some(stop) })
    }

    /// The Xet hash and the bytes of the uploaded file whose sha256 is `oid` (lower-case hex).
    pub fn file_by_sha256(&self, oid: &str) -> Option<(String, Vec<u8>)> {
        // The CAS stores shards without a key expiry, which `load_all_valid` takes for expired.
        let shards = MDBShardFile::load_managed_directory(
            self.dir.join("shards"),
            true,
            true,
            false,
            0,
            &new_shard_file_cache(),
        )
        .ok()?;
        for shard in shards {
            for info in shard.read_all_file_info_sections().ok()? {
                if info.metadata_ext.as_ref().is_some_and(|ext| ext.sha256.hex() == oid) {
                    let hash = info.metadata.file_hash;
                    let bytes = self.runtime.block_on(self.client.get_file_data(&hash, None)).ok()?;
                    return Some((hash.hex(), bytes.to_vec()));
                }
            }
        }
        None
    }
}

impl std::fmt::Debug for XetCas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XetCas").field("url", &self.url).field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Drop for XetCas {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
