//! The token goes to the configured endpoint only, and into no output, file or error of ours.

use lora_hub::fake_hub::FakeHub;
use lora_hub::{PublishOptions, ResolveOptions, Token, no_progress, publish_folder};

use crate::support::*;

#[test]
fn the_token_never_leaks() {
    let hub = FakeHub::start(TOKEN);
    let dir = temp_dir("token");
    let adapter = adapter_dir(&dir);
    let cfg = config(&hub.url, &dir, Some(TOKEN));
    let p = publish_folder(&adapter, &PublishOptions::new("me/private"), &cfg, &no_progress()).unwrap();
    let opts = ResolveOptions { hub: cfg.clone(), progress: no_progress() };
    let local = lora_hub::resolve_adapter("me/private", &opts).unwrap();
    let mut bad = cfg.clone();
    bad.token = Token::new("hf_wrong");
    let err = publish_folder(&adapter, &PublishOptions::new("me/private"), &bad, &no_progress()).unwrap_err();

    // Reports, errors, debug prints of the configuration.
    for text in [
        format!("{p:?}"),
        format!("{opts:?}"),
        format!("{cfg:?}"),
        err.to_string(),
        format!("{err:?}"),
        format!("{local:?}"),
    ] {
        assert!(!text.contains(TOKEN), "token in {text}");
    }
    // Every file written (cache, adapter folder).
    for (path, bytes) in all_files(&dir) {
        assert!(!String::from_utf8_lossy(&bytes).contains(TOKEN), "token in {}", path.display());
    }
    // What the servers received: the token only in the Authorization header of Hub requests.
    let log = hub.log();
    assert!(log.iter().any(|l| l.server == "storage"));
    for l in &log {
        assert!(!String::from_utf8_lossy(&l.request.body).contains(TOKEN), "token in the body of {}", l.request.path);
        for (k, v) in &l.request.headers {
            if v.contains(TOKEN) {
                assert!(
                    l.server == "hub" && k == "authorization",
                    "token in header {k} of {} {}",
                    l.server,
                    l.request.path
                );
            }
        }
        if l.server == "storage" {
            assert!(l.request.header("authorization").is_none(), "storage got an Authorization header");
        }
    }
}

#[test]
fn token_from_the_file_and_the_environment() {
    let dir = temp_dir("token-file");
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    // HF_TOKEN may be set in the environment running the tests: only check the file when not.
    if std::env::var("HF_TOKEN").is_err() {
        assert_eq!(Token::from_env_or_file(&dir.join("token")), Token::new(TOKEN));
    }
    assert_eq!(format!("{:?} {}", Token::new(TOKEN).unwrap(), Token::new(TOKEN).unwrap()), "Token(***) ***");
    assert!(Token::new("  \n").is_none());
}
