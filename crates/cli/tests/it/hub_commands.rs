//! `lora publish` and `lora download` end to end against the loopback fake Hub: train a tiny
//! adapter, publish it, download it by id into an empty cache, and get the same bytes and the
//! same generations and losses; offline mode; the token in no output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lora_hub::fake_hub::FakeHub;

use crate::common::*;

const TOKEN: &str = "hf_CliTokenThatMustNeverLeak9876543210";

/// Runs `lora` with a Hub environment of its own: `endpoint`, `home` as HF_HOME, and `token`.
fn lora_hub(args: &[&str], endpoint: &str, home: &Path, token: Option<&str>, outputs: &mut Vec<String>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lora"));
    cmd.args(args)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN_PATH")
        .env_remove("HF_TOKEN");
    if let Some(t) = token {
        cmd.env("HF_TOKEN", t);
    }
    let o = cmd.output().expect("run lora");
    outputs.push(String::from_utf8_lossy(&o.stdout).into_owned());
    outputs.push(String::from_utf8_lossy(&o.stderr).into_owned());
    o
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn all_files(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            all_files(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
}

#[test]
fn train_publish_download_and_load_gives_identical_bytes_and_logits() {
    let d = temp_dir("roundtrip");
    let mut outputs = Vec::new();
    let run = d.join("run");
    ok(&train_tiny(&run, &[]));

    let hub = FakeHub::start(TOKEN);
    let home = d.join("home");
    // The trained card names the local fixture as its base: publish needs a Hub id for it.
    let o = lora_hub(&["publish", s(&run), "--repo", "me/tiny-adapter"], &hub.url, &home, Some(TOKEN), &mut outputs);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--base-model"), "{}", String::from_utf8_lossy(&o.stderr));
    let args = ["publish", s(&run), "--repo", "me/tiny-adapter", "--base-model", "tiny-org/tiny-llama", "-m", "first"];
    let url = ok(&lora_hub(&args, &hub.url, &home, Some(TOKEN), &mut outputs));
    let commits = hub.commits("me/tiny-adapter");
    assert_eq!(url, format!("{}/me/tiny-adapter/commit/{}", hub.url, commits[0].oid));
    assert_eq!(commits[0].message, "first");

    // Download by id into an empty cache (another HF_HOME), no token needed for a public repo.
    let fresh = d.join("fresh-home");
    let path = PathBuf::from(ok(&lora_hub(&["download", "me/tiny-adapter"], &hub.url, &fresh, None, &mut outputs)));
    assert!(path.starts_with(fresh.join("hub/models--me--tiny-adapter/snapshots")), "{}", path.display());
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        assert_eq!(std::fs::read(path.join(f)).unwrap(), std::fs::read(run.join(f)).unwrap(), "{f} differs");
    }
    assert_eq!(std::fs::read(path.join("README.md")).unwrap(), hub.file("me/tiny-adapter", "README.md").unwrap());

    // Loaded from the cache, the adapter gives the same generation and the same loss.
    let model = root().join("tests/fixtures/models/llama");
    let data = root().join("datasets/tiny-text.jsonl");
    for adapter in [&run, &path] {
        let g = [
            "generate",
            "--model",
            s(&model),
            "--adapter",
            s(adapter),
            "--prompt",
            "The quick brown fox",
            "--max-new-tokens",
            "8",
        ];
        outputs.push(ok(&Command::new(env!("CARGO_BIN_EXE_lora")).args(g).output().unwrap()));
        let e = ["eval", "--model", s(&model), "--adapter", s(adapter), "--data", s(&data), "--json"];
        outputs.push(ok(&Command::new(env!("CARGO_BIN_EXE_lora")).args(e).output().unwrap()));
    }
    let n = outputs.len();
    assert_eq!(outputs[n - 4], outputs[n - 2], "generation differs");
    assert_eq!(outputs[n - 3], outputs[n - 1], "eval differs");

    // Offline with the populated cache: no server needed.
    let endpoint = hub.url.clone();
    drop(hub);
    let again = ok(&lora_hub(&["download", "me/tiny-adapter", "--offline"], &endpoint, &fresh, None, &mut outputs));
    assert_eq!(PathBuf::from(again), path);
    // Offline with an empty cache: the missing files, and where they were looked for.
    let empty = d.join("empty-home");
    let o = lora_hub(
        &["download", "me/tiny-adapter", "--kind", "adapter", "--offline"],
        &endpoint,
        &empty,
        None,
        &mut outputs,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("missing: adapter_config.json, adapter_model.safetensors")
            && err.contains("models--me--tiny-adapter"),
        "{err}"
    );
    // The server is gone: online, the refused connection is reported after the retries.
    let o = lora_hub(&["download", "other/model"], &endpoint, &empty, None, &mut outputs);
    assert_eq!(o.status.code(), Some(2));

    // The token appears in no output and no file.
    for text in &outputs {
        assert!(!text.contains(TOKEN), "token printed: {text}");
    }
    let mut files = Vec::new();
    all_files(&d, &mut files);
    for (p, bytes) in files {
        assert!(!String::from_utf8_lossy(&bytes).contains(TOKEN), "token written to {}", p.display());
    }
}

#[test]
fn publish_with_a_wrong_token_exits_2_with_a_token_message() {
    let d = temp_dir("badtoken");
    let adapter = d.join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    std::fs::write(adapter.join("adapter_config.json"), br#"{"base_model_name_or_path":"a/b"}"#).unwrap();
    std::fs::write(adapter.join("adapter_model.safetensors"), b"\0\0").unwrap();
    let hub = FakeHub::start(TOKEN);
    let mut outputs = Vec::new();
    let o = lora_hub(
        &["publish", s(&adapter), "--repo", "me/x"],
        &hub.url,
        &d.join("home"),
        Some("hf_wrong"),
        &mut outputs,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.starts_with("error: publishing") && err.contains("HTTP 401") && err.contains("token"), "{err}");
    // No token at all: said before any request.
    let o = lora_hub(&["publish", s(&adapter), "--repo", "me/x"], &hub.url, &d.join("home"), None, &mut outputs);
    assert!(String::from_utf8_lossy(&o.stderr).contains("set HF_TOKEN"));
    assert!(hub.commits("me/x").is_empty());
}

#[test]
fn a_model_downloaded_by_id_generates_as_the_original_folder() {
    let d = temp_dir("model");
    let model = root().join("tests/fixtures/models/llama");
    let hub = FakeHub::start(TOKEN);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for e in std::fs::read_dir(&model).unwrap() {
        let p = e.unwrap().path();
        files.push((p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()));
    }
    files.push(("pytorch_model.bin".into(), b"never fetched".to_vec()));
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let commit = hub.seed("tiny-org/tiny-llama", false, &refs);

    let mut outputs = Vec::new();
    let home = d.join("home");
    let args = ["download", "tiny-org/tiny-llama", "--kind", "model"];
    let path = PathBuf::from(ok(&lora_hub(&args, &hub.url, &home, None, &mut outputs)));
    assert_eq!(path, home.join("hub/models--tiny-org--tiny-llama/snapshots").join(&commit));
    assert!(!path.join("pytorch_model.bin").exists());
    let generate = |m: &Path| {
        let g = ["generate", "--model", s(m), "--prompt", "The quick brown fox", "--max-new-tokens", "8"];
        ok(&Command::new(env!("CARGO_BIN_EXE_lora")).args(g).output().unwrap())
    };
    assert_eq!(generate(&path), generate(&model));

    // HF_HUB_CACHE wins over HF_HOME: the same snapshot, found offline from another HF_HOME.
    drop(hub);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lora"));
    cmd.args(["download", "tiny-org/tiny-llama@main", "--offline"])
        .env("HF_HOME", d.join("elsewhere"))
        .env("HF_HUB_CACHE", home.join("hub"))
        .env_remove("HF_HUB_OFFLINE");
    assert_eq!(PathBuf::from(ok(&cmd.output().unwrap())), path);
    // HF_HUB_OFFLINE=1 does what --offline does.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lora"));
    cmd.args(["download", "tiny-org/tiny-llama"]).env("HF_HOME", d.join("elsewhere")).env("HF_HUB_OFFLINE", "1");
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("missing: config.json, tokenizer.json, model.safetensors"), "{err}");
}

#[test]
fn recipe_with_a_hub_base_trains_and_pushes_to_hub() {
    let d = temp_dir("push");
    let model = root().join("tests/fixtures/models/llama");
    let hub = FakeHub::start(TOKEN);
    let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&model)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    hub.seed("tiny-org/tiny-llama", false, &refs);
    let home = d.join("home");
    let mut outputs = Vec::new();

    // `--model ID` in generate resolves through the cache.
    let g = ["generate", "--model", "tiny-org/tiny-llama", "--prompt", "The quick brown fox", "--max-new-tokens", "6"];
    let by_id = ok(&lora_hub(&g, &hub.url, &home, None, &mut outputs));
    let by_dir = ok(&Command::new(env!("CARGO_BIN_EXE_lora"))
        .args(["generate", "--model", s(&model), "--prompt", "The quick brown fox", "--max-new-tokens", "6"])
        .output()
        .unwrap());
    assert_eq!(by_id, by_dir);

    // A recipe whose base is the Hub id, published after training.
    let run = d.join("run");
    let recipe = root().join("recipes/tiny.toml");
    let sets = [
        format!("output.dir=\"{}\"", run.display()),
        "model.base=\"tiny-org/tiny-llama\"".to_string(),
        "output.push_to_hub=\"me/pushed\"".to_string(),
    ];
    let mut args = vec!["train", s(&recipe)];
    for x in &sets {
        args.extend(["--set", x.as_str()]);
    }
    // Without a token nothing is trained.
    let o = lora_hub(&args, &hub.url, &home, None, &mut outputs);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("push_to_hub needs a Hub token"));
    assert!(!run.exists());
    let o = lora_hub(&args, &hub.url, &home, Some(TOKEN), &mut outputs);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("published: "), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(hub.commits("me/pushed").len(), 1);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["base_model_name_or_path"], "tiny-org/tiny-llama");
    assert!(std::fs::read_to_string(run.join("README.md")).unwrap().contains("base_model: tiny-org/tiny-llama"));
    // The token is in no output.
    assert!(outputs.iter().all(|o| !o.contains(TOKEN)));
    let mut written = Vec::new();
    all_files(&run, &mut written);
    assert!(written.iter().all(|(_, b)| !String::from_utf8_lossy(b).contains(TOKEN)));
}

/// A mergekit recipe that names its models by Hub id (as published recipes do) merges them from the
/// Hub: the same bytes as the merge of the local folders; the recipe is kept as written; offline
/// with an empty cache, the error names the model.
#[test]
fn a_merge_recipe_with_hub_ids_merges_as_the_local_folders() {
    let d = temp_dir("merge-hub");
    let fx = root().join("tests/fixtures/merge");
    let hub = FakeHub::start(TOKEN);
    let seed = |id: &str, dir: &Path| {
        let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
            .collect();
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
        hub.seed(id, false, &refs);
    };
    seed("merge-org/ft1", &fx.join("ft1"));
    seed("merge-org/ft2", &fx.join("ft2"));
    let recipe = |a: &str, b: &str| {
        format!(
            "merge_method: linear\ndtype: float32\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.3}}\n  - model: {b}\n    parameters: {{weight: 0.7}}\n"
        )
    };
    let (hub_cfg, local_cfg) = (d.join("hub.yml"), d.join("local.yml"));
    std::fs::write(&hub_cfg, recipe("merge-org/ft1", "merge-org/ft2")).unwrap();
    std::fs::write(&local_cfg, recipe(s(&fx.join("ft1")), s(&fx.join("ft2")))).unwrap();
    let home = d.join("home");
    let mut outputs = Vec::new();
    let (from_hub, from_local) = (d.join("from-hub"), d.join("from-local"));
    ok(&lora_hub(&["merge", "--config", s(&hub_cfg), "-o", s(&from_hub)], &hub.url, &home, None, &mut outputs));
    ok(&lora(&["merge", "--config", s(&local_cfg), "-o", s(&from_local)]));
    let bytes = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert_eq!(bytes(&from_hub), bytes(&from_local));
    let kept = std::fs::read_to_string(from_hub.join("mergekit_config.yml")).unwrap();
    assert!(kept.contains("model: merge-org/ft1"), "{kept}");
    // Offline, from an empty cache: refused, naming the model, and nothing written.
    let out = d.join("offline");
    let args = ["merge", "--config", s(&hub_cfg), "-o", s(&out), "--offline"];
    let o = lora_hub(&args, &hub.url, &d.join("empty-home"), None, &mut outputs);
    assert!(!o.status.success() && !out.exists());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("merge-org/ft1"), "{err}");
}

#[test]
fn publish_and_download_through_xet_send_the_bytes_to_the_cas_and_bring_them_back_identical() {
    let d = temp_dir("xet");
    let mut outputs = Vec::new();
    // An adapter folder with ~1 MB of weights (several Xet chunks) and a model card.
    let adapter = d.join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    let weights: Vec<u8> = (0..1_000_003u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(adapter.join("adapter_model.safetensors"), &weights).unwrap();
    std::fs::write(
        adapter.join("adapter_config.json"),
        br#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["q_proj"],"base_model_name_or_path":"tiny-org/tiny-llama"}"#,
    )
    .unwrap();

    let hub = FakeHub::start_xet(TOKEN);
    let home = d.join("home");
    let url = ok(&lora_hub(
        &["publish", s(&adapter), "--repo", "me/xet-adapter"],
        &hub.url,
        &home,
        Some(TOKEN),
        &mut outputs,
    ));
    let commits = hub.commits("me/xet-adapter");
    assert_eq!(url, format!("{}/me/xet-adapter/commit/{}", hub.url, commits[0].oid));
    // The weights were committed by sha256 and their bytes went to the CAS, not to the LFS storage.
    let oid: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&weights).iter().map(|b| format!("{b:02x}")).collect()
    };
    assert_eq!(
        commits[0].files["adapter_model.safetensors"],
        lora_hub::fake_hub::FakeFile::Lfs { oid: oid.clone(), size: weights.len() as u64 }
    );
    assert!(hub.xet_hash(&oid).is_some(), "the weights did not come through Xet");
    assert_eq!(hub.file("me/xet-adapter", "adapter_model.safetensors").unwrap(), weights);
    let paths = |hub: &FakeHub, from: usize| -> Vec<String> {
        hub.log()[from..].iter().map(|l| format!("{} {} {}", l.server, l.request.method, l.request.path)).collect()
    };
    let published = paths(&hub, 0);
    assert!(published.iter().any(|p| p.contains("/xet-write-token/main")), "{published:?}");
    assert!(published.iter().all(|p| !p.starts_with("storage")), "{published:?}");

    // Download by id into an empty cache: through Xet, byte for byte, in the cache's layout.
    let before = hub.log().len();
    let fresh = d.join("fresh-home");
    let path = PathBuf::from(ok(&lora_hub(&["download", "me/xet-adapter"], &hub.url, &fresh, None, &mut outputs)));
    assert!(path.starts_with(fresh.join("hub/models--me--xet-adapter/snapshots")), "{}", path.display());
    assert_eq!(std::fs::read(path.join("adapter_model.safetensors")).unwrap(), weights);
    assert_eq!(
        std::fs::read(path.join("adapter_config.json")).unwrap(),
        std::fs::read(adapter.join("adapter_config.json")).unwrap()
    );
    let target = std::fs::read_link(path.join("adapter_model.safetensors")).unwrap();
    assert_eq!(target.file_name().unwrap().to_str().unwrap(), oid, "the blob is named by the sha256");
    let downloaded = paths(&hub, before);
    assert!(downloaded.iter().any(|p| p.contains("/xet-read-token/")), "{downloaded:?}");
    assert!(downloaded.iter().all(|p| !p.starts_with("storage")), "{downloaded:?}");

    for text in &outputs {
        assert!(!text.contains(TOKEN), "token printed: {text}");
    }
}
