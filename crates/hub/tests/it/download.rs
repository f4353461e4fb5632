//! Downloads into the Hugging Face cache layout, cache-first resolution, offline mode.

use lora_hub::fake_hub::{FakeHub, FaultKind, Route};
use lora_hub::{HubError, RepoId, RepoKind, ResolveOptions, no_progress};

use crate::support::*;

fn opts(hub: &lora_hub::HubConfig) -> ResolveOptions {
    ResolveOptions { hub: hub.clone(), progress: no_progress() }
}

#[test]
fn download_writes_the_huggingface_cache_layout_and_only_what_lora_needs() {
    let hub = FakeHub::start(TOKEN);
    let files = model_files();
    let commit = seed(&hub, "tiny-org/tiny-llama", false, &files);
    let dir = temp_dir("layout");
    let cfg = config(&hub.url, &dir, None);

    let repo = RepoId::parse("tiny-org/tiny-llama").unwrap();
    let snap = lora_hub::download(&repo, RepoKind::Model, &cfg, &no_progress()).unwrap();
    assert_eq!(snap.commit, commit);
    let root = dir.join("hub/models--tiny-org--tiny-llama");
    assert_eq!(snap.path, root.join("snapshots").join(&commit));
    // refs/main holds the commit sha without a newline, as huggingface_hub writes it.
    assert_eq!(std::fs::read_to_string(root.join("refs/main")).unwrap(), commit);

    let wanted = [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    for (name, bytes) in &files {
        let p = snap.path.join(name);
        if wanted.contains(name) {
            assert_eq!(&std::fs::read(&p).unwrap(), bytes, "{name}");
            // A relative symlink into blobs/, named by the sha256 for LFS files.
            let target = std::fs::read_link(&p).unwrap();
            assert!(target.starts_with("../../blobs"), "{name} -> {}", target.display());
            if name.ends_with(".safetensors") {
                use sha2::Digest;
                let sha: String = sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(target.file_name().unwrap().to_str().unwrap(), sha);
            }
        } else {
            assert!(!p.exists(), "{name} must not be fetched");
        }
    }
    assert!(
        std::fs::read_dir(root.join("blobs")).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("incomplete"))
    );

    // A second download asks the Hub again but moves no blob.
    let before = hub.log().len();
    lora_hub::download(&repo, RepoKind::Model, &cfg, &no_progress()).unwrap();
    let gets =
        hub.log()[before..].iter().filter(|l| l.request.method == "GET" && l.request.path.contains("resolve")).count();
    let storage = hub.log()[before..].iter().filter(|l| l.server == "storage").count();
    assert_eq!((gets, storage), (0, 0));
}

#[test]
fn resolve_uses_a_complete_cache_without_the_network_and_offline_lists_missing_files() {
    let hub = FakeHub::start(TOKEN);
    seed(&hub, "tiny-org/tiny-llama", false, &model_files());
    let dir = temp_dir("offline");
    let cfg = config(&hub.url, &dir, None);
    let online = lora_hub::resolve_model("tiny-org/tiny-llama", &opts(&cfg)).unwrap();
    let endpoint = hub.url.clone();
    drop(hub);

    // No server any more: the cache answers, offline or not.
    let again = lora_hub::resolve_model("tiny-org/tiny-llama", &opts(&cfg)).unwrap();
    assert_eq!(again, online);
    let mut off = cfg.clone();
    off.offline = true;
    assert_eq!(lora_hub::resolve_model("tiny-org/tiny-llama@main", &opts(&off)).unwrap(), online);
    // A local folder is itself.
    assert_eq!(lora_hub::resolve_model(online.to_str().unwrap(), &opts(&off)).unwrap(), online);

    // An empty cache, offline: the error lists every missing file and where it looked.
    let empty = temp_dir("offline-empty");
    let mut cfg = config(&endpoint, &empty, None);
    cfg.offline = true;
    let err = lora_hub::resolve_model("tiny-org/tiny-llama", &opts(&cfg)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HubError::OfflineMissing { .. }), "{msg}");
    for needle in [
        "tiny-org/tiny-llama@main",
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "models--tiny-org--tiny-llama/refs/main",
        "offline",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }

    // A partial snapshot (a shard deleted): offline names exactly that shard.
    let mut off = config(&endpoint, &dir, None);
    off.offline = true;
    std::fs::remove_file(online.join("model-00002-of-00002.safetensors")).unwrap();
    let msg = lora_hub::resolve_model("tiny-org/tiny-llama", &opts(&off)).unwrap_err().to_string();
    assert!(msg.contains("missing: model-00002-of-00002.safetensors;"), "{msg}");
}

#[test]
fn revisions_adapters_and_refusals() {
    let hub = FakeHub::start(TOKEN);
    let first = seed(&hub, "o/m", false, &model_files());
    // A second commit changes the config.
    seed(&hub, "o/m", false, &[("config.json", br#"{"model_type":"qwen2"}"#.to_vec())]);
    let dir = temp_dir("revs");
    let cfg = config(&hub.url, &dir, None);
    let old = lora_hub::resolve_model(&format!("o/m@{first}"), &opts(&cfg)).unwrap();
    assert!(old.ends_with(&first));
    assert_eq!(std::fs::read(old.join("config.json")).unwrap(), br#"{"model_type":"llama"}"#);
    let new = lora_hub::resolve_model("o/m", &opts(&cfg)).unwrap();
    assert_eq!(std::fs::read(new.join("config.json")).unwrap(), br#"{"model_type":"qwen2"}"#);

    // An adapter repository.
    seed(
        &hub,
        "o/adapter",
        false,
        &[("adapter_config.json", b"{}".to_vec()), ("adapter_model.safetensors", weights(7, 300))],
    );
    let a = lora_hub::resolve_adapter("o/adapter", &opts(&cfg)).unwrap();
    assert_eq!(std::fs::read(a.join("adapter_model.safetensors")).unwrap(), weights(7, 300));
    // `Any` sees it is an adapter.
    let repo = RepoId::parse("o/adapter").unwrap();
    assert_eq!(lora_hub::download(&repo, RepoKind::Any, &cfg, &no_progress()).unwrap().path, a);

    // Pickles only: refused with the reason.
    seed(&hub, "o/pickles", false, &[("config.json", b"{}".to_vec()), ("pytorch_model.bin", weights(1, 10))]);
    let msg = lora_hub::resolve_model("o/pickles", &opts(&cfg)).unwrap_err().to_string();
    assert!(
        msg.contains("o/pickles@main") && msg.contains("pytorch_model.bin") && msg.contains("safetensors only"),
        "{msg}"
    );

    // Unknown repository: a 404 naming the URL.
    let msg = lora_hub::resolve_model("o/nope", &opts(&cfg)).unwrap_err().to_string();
    assert!(msg.contains("no folder 'o/nope'") && msg.contains("/api/models/o/nope/revision/main: 404"), "{msg}");

    // A private repository without a token: the error speaks of the token.
    seed(&hub, "o/private", true, &model_files());
    let msg = lora_hub::resolve_model("o/private", &opts(&cfg)).unwrap_err().to_string();
    assert!(msg.contains("401") && msg.contains("HF_TOKEN"), "{msg}");
    let with_token = config(&hub.url, &dir, Some(TOKEN));
    lora_hub::resolve_model("o/private", &opts(&with_token)).unwrap();

    // Not a reference at all.
    for bad in ["./no/such/dir", "a/b/c", "org/na--me", "org/name@"] {
        assert!(lora_hub::resolve_model(bad, &opts(&cfg)).is_err(), "{bad}");
    }
}

#[test]
fn downloads_retry_transient_failures() {
    let hub = FakeHub::start(TOKEN);
    seed(&hub, "o/m", false, &model_files());
    let dir = temp_dir("dl-retry");
    let cfg = config(&hub.url, &dir, None);
    hub.fail(Route::Info, FaultKind::Status(503), 1);
    hub.fail(Route::Object, FaultKind::Status(500), 2);
    lora_hub::resolve_model("o/m", &opts(&cfg)).unwrap();

    // The storage closes the connection half-way through a body: the file is fetched again, whole.
    let dir = temp_dir("dl-retry-cut");
    let cfg = config(&hub.url, &dir, None);
    hub.fail(Route::Object, FaultKind::CutBody, 2);
    let path = lora_hub::resolve_model("o/m", &opts(&cfg)).unwrap();
    for (name, bytes) in model_files().iter().filter(|(n, _)| n.starts_with("model-")) {
        assert_eq!(&std::fs::read(path.join(name)).unwrap(), bytes, "{name}");
    }
    // Cut on every attempt: an error, and no file in the snapshot.
    let dir = temp_dir("dl-retry-cut-2");
    let cfg = config(&hub.url, &dir, None);
    hub.fail(Route::Object, FaultKind::CutBody, 100);
    let msg = lora_hub::resolve_model("o/m", &opts(&cfg)).unwrap_err().to_string();
    assert!(msg.contains("/o/m/resolve/") && msg.contains("after 3 attempts"), "{msg}");
    let snapshots = dir.join("hub/models--o--m/snapshots");
    assert!(all_files(&snapshots).iter().all(|(p, _)| !p.to_string_lossy().contains("model-0000")));

    // Past the retry budget, the error says how many attempts were made.
    let dir = temp_dir("dl-retry-2");
    let cfg = config(&hub.url, &dir, None);
    hub.fail(Route::Info, FaultKind::Status(500), 3);
    let msg = lora_hub::resolve_model("o/m", &opts(&cfg)).unwrap_err().to_string();
    assert!(msg.contains("HTTP 500"), "{msg}");

    // Connection refused: a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = config(&format!("http://127.0.0.1:{port}"), &dir, None);
    let msg = lora_hub::resolve_model("o/m", &opts(&cfg)).unwrap_err().to_string();
    assert!(msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("after 3 attempts"), "{msg}");
}
