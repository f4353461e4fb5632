//! Publishing an adapter folder: one commit, LFS for the weights, the model card completed;
//! failures (401, 5xx then success, refused connections, hang-ups) never leave a partial commit.

use lora_hub::fake_hub::{FakeFile, FakeHub, FaultKind, Route};
use lora_hub::{HubError, PublishOptions, UploadMode, no_progress, publish_folder};

use crate::support::*;

#[test]
fn publish_creates_the_repo_and_commits_every_file_once() {
    let hub = FakeHub::start(TOKEN);
    let dir = temp_dir("publish");
    let adapter = adapter_dir(&dir);
    let cfg = config(&hub.url, &dir, Some(TOKEN));
    let mut opts = PublishOptions::new("me/my-adapter");
    opts.private = true;
    let p = publish_folder(&adapter, &opts, &cfg, &no_progress()).unwrap();

    assert!(p.created);
    assert_eq!(hub.repo_private("me/my-adapter"), Some(true));
    let commits = hub.commits("me/my-adapter");
    assert_eq!(commits.len(), 1);
    assert_eq!(p.commit.oid, commits[0].oid);
    assert_eq!(p.commit.url, format!("{}/me/my-adapter/commit/{}", hub.url, commits[0].oid));
    let paths: Vec<&String> = commits[0].files.keys().collect();
    assert_eq!(paths, ["README.md", "adapter_config.json", "adapter_model.safetensors", "metrics.jsonl"]);
    assert!(matches!(commits[0].files["adapter_model.safetensors"], FakeFile::Lfs { size: 4096, .. }));
    assert!(matches!(commits[0].files["adapter_config.json"], FakeFile::Regular(_)));
    for name in ["adapter_model.safetensors", "adapter_config.json", "metrics.jsonl"] {
        assert_eq!(hub.file("me/my-adapter", name).unwrap(), std::fs::read(adapter.join(name)).unwrap(), "{name}");
    }
    let modes: Vec<(&str, UploadMode)> = p.files.iter().map(|f| (f.path.as_str(), f.mode)).collect();
    assert!(modes.contains(&("adapter_model.safetensors", UploadMode::Lfs)));

    // The model card got its front matter; the user's text is kept; the folder is untouched.
    let card = String::from_utf8(hub.file("me/my-adapter", "README.md").unwrap()).unwrap();
    assert!(card.starts_with("---\nbase_model: tiny-org/tiny-llama\nlibrary_name: peft\npipeline_tag: text-generation\ntags:\n- lora\n- peft\n- base_model:adapter:tiny-org/tiny-llama\n---\n"), "{card}");
    assert!(card.ends_with("# My adapter\n\nTrained on tiny text.\n"), "{card}");
    assert_eq!(std::fs::read_to_string(adapter.join("README.md")).unwrap(), "# My adapter\n\nTrained on tiny text.\n");
    assert_eq!(p.card_filled, ["base_model", "library_name", "pipeline_tag", "tags"]);

    // Publishing again: the repo exists (409 is fine), the weights are on the server already (no
    // PUT), and a second commit is made.
    let before = hub.log().len();
    let p2 = publish_folder(&adapter, &opts, &cfg, &no_progress()).unwrap();
    assert!(!p2.created);
    assert!(hub.log()[before..].iter().all(|l| l.server != "storage"), "an object the server has was sent again");
    assert_eq!(hub.commits("me/my-adapter").len(), 2);
}

#[test]
fn bad_folders_and_missing_tokens_are_refused_before_any_request() {
    let hub = FakeHub::start(TOKEN);
    let dir = temp_dir("publish-bad");
    let adapter = adapter_dir(&dir);
    let opts = PublishOptions::new("me/x");

    let err = publish_folder(&adapter, &opts, &config(&hub.url, &dir, None), &no_progress()).unwrap_err();
    assert!(matches!(err, HubError::NoToken { .. }) && err.to_string().contains("HF_TOKEN"), "{err}");

    let cfg = config(&hub.url, &dir, Some(TOKEN));
    std::fs::write(adapter.join("training_args.bin"), b"pickle").unwrap();
    let msg = publish_folder(&adapter, &opts, &cfg, &no_progress()).unwrap_err().to_string();
    assert!(msg.contains("training_args.bin is a pickle"), "{msg}");
    std::fs::remove_file(adapter.join("training_args.bin")).unwrap();

    // A card whose base_model is a local path: ask for --base-model.
    std::fs::write(adapter.join("README.md"), "---\nbase_model: ../models/llama\n---\nhi\n").unwrap();
    let msg = publish_folder(&adapter, &opts, &cfg, &no_progress()).unwrap_err().to_string();
    assert!(msg.contains("README.md") && msg.contains("--base-model"), "{msg}");

    std::fs::remove_file(adapter.join("adapter_model.safetensors")).unwrap();
    let msg = publish_folder(&adapter, &opts, &cfg, &no_progress()).unwrap_err().to_string();
    assert!(msg.contains("no adapter_model.safetensors"), "{msg}");
    assert!(hub.log().is_empty());
}

#[test]
fn a_wrong_token_is_a_clear_401() {
    let hub = FakeHub::start(TOKEN);
    let dir = temp_dir("publish-401");
    let adapter = adapter_dir(&dir);
    let cfg = config(&hub.url, &dir, Some("hf_wrong"));
    let err = publish_folder(&adapter, &PublishOptions::new("me/x"), &cfg, &no_progress()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HubError::Unauthorized { status: 401, has_token: true, .. }), "{msg}");
    assert!(msg.contains("/api/repos/create") && msg.contains("token is invalid"), "{msg}");
    assert!(hub.commits("me/x").is_empty());
}

#[test]
fn transient_failures_are_retried() {
    let hub = FakeHub::start(TOKEN);
    let dir = temp_dir("publish-retry");
    let adapter = adapter_dir(&dir);
    let cfg = config(&hub.url, &dir, Some(TOKEN));
    hub.fail(Route::Create, FaultKind::Status(502), 1);
    hub.fail(Route::Preupload, FaultKind::Status(500), 1);
    hub.fail(Route::Batch, FaultKind::Status(503), 1);
    hub.fail(Route::Upload, FaultKind::HangUp, 1);
    hub.fail(Route::Commit, FaultKind::Status(500), 1);
    let p = publish_folder(&adapter, &PublishOptions::new("me/retry"), &cfg, &no_progress()).unwrap();
    assert_eq!(hub.commits("me/retry").len(), 1);
    assert_eq!(hub.commits("me/retry")[0].oid, p.commit.oid);
    assert_eq!(hub.file("me/retry", "adapter_model.safetensors").unwrap(), weights(9, 4096));
}

#[test]
fn a_failed_upload_never_commits() {
    let hub = FakeHub::start(TOKEN);
    let dir = temp_dir("publish-hangup");
    let adapter = adapter_dir(&dir);
    let cfg = config(&hub.url, &dir, Some(TOKEN));
    // The storage hangs up mid-body on every attempt.
    hub.fail(Route::Upload, FaultKind::HangUp, 100);
    let msg =
        publish_folder(&adapter, &PublishOptions::new("me/broken"), &cfg, &no_progress()).unwrap_err().to_string();
    assert!(msg.contains("/upload/") && msg.contains("after 3 attempts"), "{msg}");
    assert!(hub.commits("me/broken").is_empty(), "a commit was made with a missing file");
    assert!(hub.log().iter().all(|l| !l.request.path.contains("/commit/")));

    // Connection refused: nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = config(&format!("http://127.0.0.1:{port}"), &dir, Some(TOKEN));
    let err = publish_folder(&adapter, &PublishOptions::new("me/x"), &cfg, &no_progress()).unwrap_err();
    assert!(matches!(err, HubError::Connection { attempts: 3, .. }), "{err}");
}
