//! `lora train`, `lora verify` and `--adapter` end to end through the binary.

use crate::common::*;

#[test]
fn train_verify_and_use_the_adapter() {
    let d = temp_dir("main");
    let run = d.join("run");
    let o = train_tiny(&run, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("step 12/12") && err.contains("done: 12 steps"),
        "plain progress lines without a terminal: {err}"
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), run.display().to_string());

    // verify passes on an untouched run.
    let o = lora(&["verify", s(&run)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("reproduced byte for byte"));

    // The adapter changes generation and evaluation; weight 0 is the base again.
    let model = root().join("tests/fixtures/models/llama");
    let generate = |extra: &[&str]| {
        let mut args =
            vec!["generate", "--model", s(&model), "--prompt", "The quick brown fox", "--max-new-tokens", "8"];
        args.extend_from_slice(extra);
        let o = lora(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let plain = generate(&[]);
    assert_ne!(generate(&["--adapter", s(&run)]), plain);
    assert_eq!(generate(&["--adapter", s(&run), "--adapter-weights", "0"]), plain);

    let data = root().join("datasets/tiny-text.jsonl");
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--model", s(&model), "--data", s(&data), "--json"];
        args.extend_from_slice(extra);
        let o = lora(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["mean_loss"].as_f64().unwrap()
    };
    let before = eval(&[]);
    let after = eval(&["--adapter", s(&run)]);
    assert!(after < before - 0.1, "training data loss {before} -> {after}");

    // Existing output is not overwritten without --force.
    let o = train_tiny(&run, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists; pass --force"));
}

#[test]
fn verify_fails_with_exit_1_when_a_data_byte_changes() {
    let d = temp_dir("verify");
    let data = d.join("train.jsonl");
    std::fs::copy(root().join("datasets/tiny-text.jsonl"), &data).unwrap();
    let run = d.join("run");
    let o = train_tiny(&run, &[&format!("data.train=\"{}\"", data.display())]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[20] ^= 0x01;
    std::fs::write(&data, bytes).unwrap();
    let o = lora(&["verify", s(&run)]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("changed:") && err.contains("train.jsonl"), "{err}");
}

#[test]
fn bad_recipes_exit_2_and_create_no_run_folder() {
    let d = temp_dir("bad");
    let out = d.join("never");
    let cases: &[(&[&str], &str)] = &[
        (&["train.lr=0"], "train.lr must be positive"),
        (&["train.batch_size=0"], "train.batch_size must be at least 1"),
        (&["train.learning_rate=1e-3"], "did you mean 'train.lr'?"),
        (&["model.base=\"/nonexistent\""], "is not a model folder"),
        (&["lora.targets=[\"nope_proj\"]"], "match no module; available:"),
        (&["train.max_steps=\"ten\""], "--set train.max_steps=\"ten\""),
        (&["train.device=\"cuda\""], "without CUDA support"),
    ];
    for (set, needle) in cases {
        if *needle == "without CUDA support" && cfg!(feature = "cuda") {
            continue;
        }
        let o = train_tiny(&out, set);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{set:?}: {err}");
        assert!(err.starts_with("error: ") && err.contains(needle), "{set:?}: expected {needle:?} in {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "{set:?} created the run folder");
    }
    // A recipe file with an unknown key: file, line and column.
    let recipe = d.join("bad.toml");
    let text =
        std::fs::read_to_string(root().join("recipes/tiny.toml")).unwrap().replace("lr = 1e-2", "learning_rate = 1e-2");
    let text = text.replace("../", &format!("{}/", root().display()));
    std::fs::write(&recipe, text).unwrap();
    let o = lora(&["train", s(&recipe)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.contains("bad.toml:") && err.contains("unknown key 'learning_rate' in [train]; did you mean 'lr'?"),
        "{err}"
    );
}

#[test]
fn dry_run_prints_the_resolved_recipe() {
    let d = temp_dir("dry");
    let out = d.join("never");
    let recipe = root().join("recipes/tiny.toml");
    let set = format!("output.dir=\"{}\"", out.display());
    let o = lora(&["train", s(&recipe), "--set", &set, "--dry-run"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("[train]") && text.contains("lr = 0.01") && text.contains("# trainable parameters: 1920"),
        "{text}"
    );
    assert!(text.contains("# memory plan: base 182.5 KB (f32 dense)") && text.contains("recomputation off"), "{text}");
    let o = lora(&[
        "train",
        s(&recipe),
        "--set",
        &set,
        "--set",
        "model.quantize=\"nf4\"",
        "--set",
        "train.gradient_checkpointing=true",
        "--dry-run",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("(f32 nf4 linears)") && text.contains("recomputation on"), "{text}");
    assert!(!out.exists());
}

#[test]
fn eval_scores_chat_data_on_assistant_tokens_only() {
    let model = root().join("tests/fixtures/models/llama");
    let data = root().join("datasets/quickstart-chat.jsonl");
    let run = |format: &str| {
        let o = lora(&["eval", "--model", s(&model), "--data", s(&data), "--format", format, "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let chat = run("auto");
    assert_eq!(chat["examples"], 320);
    let scored = chat["predicted_tokens"].as_u64().unwrap();
    // Only the assistant answers (and their <|im_end|>) count: far fewer than all tokens.
    assert!(scored > 320 * 10 && scored < 320 * 100, "{scored}");
    assert_eq!(run("chat"), chat);
    // Text data given as chat is refused with the file named.
    let text = root().join("datasets/tiny-text.jsonl");
    let o = lora(&["eval", "--model", s(&model), "--data", s(&text), "--format", "chat"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tiny-text.jsonl:1: missing array field \"messages\""));
}

/// `--dry-run --show N` renders the first N examples with the trained tokens in [[...]] (no
/// terminal here): the user turn untrained, the assistant answer and its end-of-turn trained.
#[test]
fn dry_run_show_marks_the_trained_tokens() {
    let d = temp_dir("show");
    let data = root().join("datasets/quickstart-chat.jsonl");
    let recipe = root().join("recipes/tiny.toml");
    let sets = [
        format!("output.dir=\"{}\"", d.join("run").display()),
        format!("data.train=\"{}\"", data.display()),
        "data.format=\"chat\"".to_string(),
        "data.max_seq_len=96".to_string(),
    ];
    let mut args = vec!["train", s(&recipe), "--dry-run", "--show", "2"];
    for set in &sets {
        args.extend(["--set", set.as_str()]);
    }
    let o = lora(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.matches("\n# example ").count(), 2, "{out}");
    let first = out.split("\n# example 1 of ").nth(1).unwrap();
    let (head, body) = first.split_once('\n').unwrap();
    assert!(head.contains(" tokens, ") && head.ends_with(" trained"), "{head}");
    let (prompt, rest) = body.split_once("[[").expect("a trained span");
    assert!(prompt.contains("What is the shepherd?") && !prompt.contains("Hear me"), "{body}");
    let trained = rest.split("]]").next().unwrap();
    assert!(trained.contains("Hear me, friend") && trained.contains("<|im_end|>"), "{body}");
    assert!(!d.join("run").exists());
}

/// A recipe whose `data.chat_template` renders conversations differently from the model's own
/// template is warned about (the adapter would learn a format inference does not send); the model's
/// own template given in the recipe is not.
#[test]
fn a_chat_template_unlike_the_models_own_is_warned_about() {
    let d = temp_dir("template-warning");
    let recipe = root().join("recipes/tiny.toml");
    let run = |template: &std::path::Path| {
        let sets = [
            format!("output.dir=\"{}\"", d.join("run").display()),
            format!("data.train=\"{}\"", root().join("datasets/quickstart-chat.jsonl").display()),
            "data.format=\"chat\"".to_string(),
            "data.max_seq_len=160".to_string(),
            format!("data.chat_template=\"{}\"", template.display()),
        ];
        let mut args = vec!["train", s(&recipe), "--dry-run"];
        for set in &sets {
            args.extend(["--set", set.as_str()]);
        }
        let o = lora(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    };
    let err = run(&fixtures().join("chat_templates/llama3.jinja"));
    assert!(err.contains("warning: data.chat_template renders a conversation differently"), "{err}");
    assert!(err.contains("<|start_header_id|>") && err.contains("<|im_start|>"), "{err}");
    // The model's own template, as a file: no warning.
    let base = root().join("recipes").join(
        std::fs::read_to_string(&recipe)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("base = "))
            .unwrap()
            .trim_matches('"'),
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("tokenizer_config.json")).unwrap()).unwrap();
    let own = d.join("own.jinja");
    std::fs::write(&own, cfg["chat_template"].as_str().expect("the tiny model has a chat template")).unwrap();
    let err = run(&own);
    assert!(!err.contains("renders a conversation differently"), "{err}");
}

/// Starts the tiny recipe for `steps` steps (a checkpoint every `save_every`) and returns the
/// child once its stderr has printed a line containing `wait_for`, with a thread collecting the
/// rest of its stderr.
fn start_training_until(
    out: &std::path::Path,
    steps: u64,
    save_every: u64,
    wait_for: &str,
) -> (std::process::Child, std::thread::JoinHandle<String>) {
    use std::io::{BufRead, BufReader};
    let recipe = root().join("recipes/tiny.toml");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lora"));
    cmd.args(["train", s(&recipe)]);
    for set in run_sets(out, steps, save_every) {
        cmd.args(["--set", &set]);
    }
    let mut child = cmd.stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("training ended before the awaited line").unwrap();
        if line.contains(wait_for) {
            break;
        }
    }
    // Keep draining stderr so that the child never blocks on a full pipe.
    let rest = std::thread::spawn(move || lines.map_while(|l| l.ok()).collect::<Vec<_>>().join("\n"));
    (child, rest)
}

fn run_sets(out: &std::path::Path, steps: u64, save_every: u64) -> [String; 3] {
    [
        format!("output.dir=\"{}\"", out.display()),
        format!("train.max_steps={steps}"),
        format!("train.save_every={save_every}"),
    ]
}

/// `lora train --resume` of the run in `out`.
fn resume(out: &std::path::Path, steps: u64, save_every: u64) -> std::process::Output {
    let recipe = root().join("recipes/tiny.toml");
    let sets = run_sets(out, steps, save_every);
    let mut args = vec!["train", s(&recipe), "--resume"];
    for set in &sets {
        args.extend(["--set", set.as_str()]);
    }
    lora(&args)
}

/// `--resume` on `out` completes; then `lora verify` re-runs the recipe from scratch and must find
/// the adapter identical byte for byte.
fn resume_and_verify(out: &std::path::Path, steps: u64, save_every: u64) {
    let o = resume(out, steps, save_every);
    assert!(o.status.success(), "resume: {}", stderr(&o));
    assert!(stderr(&o).contains("resuming at step"), "{}", stderr(&o));
    let o = lora(&["verify", s(out)]);
    assert!(o.status.success(), "verify after resume: {}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("reproduced byte for byte"), "{}", stdout(&o));
}

/// Ctrl-C (SIGINT) during training: the step finishes, a checkpoint is written, the exit is
/// non-zero with a message naming --resume; resuming gives the uninterrupted run's adapter.
#[test]
fn sigint_checkpoints_and_resume_reproduces_the_run() {
    let d = temp_dir("sigint");
    let out = d.join("run");
    let (mut child, rest) = start_training_until(&out, 60, 0, "step 3/60");
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    let err = rest.join().unwrap();
    assert_eq!(status.code(), Some(2), "interrupted training must exit with status 2: {err}");
    assert!(err.contains("interrupted at step") && err.contains("continue with --resume"), "{err}");
    assert!(!out.join("adapter_model.safetensors").exists(), "an interrupted run wrote a final adapter");
    assert_eq!(std::fs::read_dir(out.join("checkpoints")).unwrap().count(), 1, "one checkpoint at the interruption");
    resume_and_verify(&out, 60, 0);
}

/// `kill -9` mid-run: nothing but the checkpoints survives (no final adapter), and `--resume`
/// continues from the last one to the uninterrupted run's adapter, also when the kill landed in
/// the middle of writing the next checkpoint (its half-written temporary folder is ignored, then
/// cleared); killed before any checkpoint, `--resume` is a clear error.
#[test]
fn kill_9_then_resume_reproduces_the_run() {
    let d = temp_dir("kill9");
    let out = d.join("run");
    let (mut child, _) = start_training_until(&out, 60, 5, "checkpoint: ");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!out.join("adapter_model.safetensors").exists());
    // What a kill in the middle of the next checkpoint's write leaves: its temporary folder with a
    // truncated state file and no state.json (written last).
    let ckpts = out.join("checkpoints");
    let last = std::fs::read_dir(&ckpts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("step-"))
        .max()
        .unwrap();
    let torn = ckpts.join(".tmp-step-99999999-4242");
    std::fs::create_dir_all(&torn).unwrap();
    let state = std::fs::read(last.join("state.safetensors")).unwrap();
    std::fs::write(torn.join("state.safetensors"), &state[..state.len() / 2]).unwrap();
    resume_and_verify(&out, 60, 5);
    // A finished run keeps no checkpoint folder; none of it may survive.
    let left: Vec<_> = std::fs::read_dir(&ckpts)
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "half-written checkpoints left: {left:?}");

    let early = d.join("early");
    let (mut child, _) = start_training_until(&early, 60, 50, "step 1/60");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_user_error(&resume(&early, 60, 50), "to resume");
}

/// `[train] loraplus_lr_ratio` (LoRA+) trains B faster than A: a run with it ends elsewhere than one
/// without, is recorded in the recipe the run keeps, reproduces byte for byte under `lora verify`,
/// and a ratio that is not positive is an error naming the key.
#[test]
fn loraplus_trains_b_at_its_own_rate() {
    let d = temp_dir("loraplus");
    let (plain, plus) = (d.join("plain"), d.join("plus"));
    let o = train_tiny(&plain, &["train.max_steps=3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = train_tiny(&plus, &["train.max_steps=3", "train.loraplus_lr_ratio=16.0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let read = |dir: &std::path::Path| std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    assert_ne!(read(&plain), read(&plus), "LoRA+ changed nothing");
    let kept = std::fs::read_to_string(plus.join("recipe.toml")).unwrap();
    assert!(kept.contains("loraplus_lr_ratio = 16.0"), "{kept}");
    let o = lora(&["verify", s(&plus)]);
    assert!(o.status.success() && stdout(&o).contains("reproduced byte for byte"), "{}", stderr(&o));
    let o = train_tiny(&d.join("bad"), &["train.loraplus_lr_ratio=-1.0"]);
    assert_user_error(&o, "loraplus_lr_ratio");
}

/// `[lora] use_dora = true` trains a DoRA adapter (with dropout, PEFT's dropped input on both terms):
/// PEFT's config and magnitude keys, byte for byte again under `lora verify`, folded by `lora merge
/// --check`; a run can start from a PEFT DoRA adapter (`init_from`).
#[test]
fn dora_trains_verifies_and_folds() {
    let d = temp_dir("dora-train");
    let run = d.join("run");
    let o = train_tiny(&run, &["train.max_steps=3", "lora.use_dora=true", "lora.dropout=0.1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["use_dora"], true);
    let file = lora_formats::safetensors::SafetensorsFile::open(run.join("adapter_model.safetensors")).unwrap();
    let magnitudes: Vec<_> = file.tensors().keys().filter(|k| k.ends_with(".lora_magnitude_vector")).cloned().collect();
    // q_proj and v_proj of the tiny Llama's 3 layers.
    assert_eq!(magnitudes.len(), 6, "{magnitudes:?}");
    for m in &magnitudes {
        let a = m.replace("lora_magnitude_vector", "lora_B.weight");
        assert_eq!(file.info(m).unwrap().shape, vec![file.info(&a).unwrap().shape[0]], "{m}");
    }
    let o = lora(&["verify", s(&run)]);
    assert!(o.status.success() && stdout(&o).contains("reproduced byte for byte"), "{}", stderr(&o));
    let base = root().join("tests/fixtures/models/llama");
    let o = lora(&["merge", s(&base), s(&run), "-o", s(&d.join("merged")), "--check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let from = root().join("tests/fixtures/lora/dora-train/adapter-init");
    let set = format!("lora.init_from=\"{}\"", from.display());
    let o = train_tiny(&d.join("from"), &["train.max_steps=2", &set]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = std::fs::read_to_string(d.join("from/adapter_config.json")).unwrap();
    assert!(cfg.contains("\"use_dora\": true"), "{cfg}");
}

/// `[lora] init = "pissa" | "pissa_niter_N" | "olora"`: the run trains on the residual base and saves
/// the rank-2r adapter for the original base (config, card), reproduced by `lora verify`; DoRA with
/// it is refused by key.
#[test]
fn pissa_and_olora_runs_save_the_converted_adapter() {
    let d = temp_dir("pissa-train");
    for init in ["pissa", "pissa_niter_2", "olora"] {
        let run = d.join(init);
        let set = format!("lora.init=\"{init}\"");
        let o = train_tiny(&run, &["train.max_steps=2", &set]);
        assert!(o.status.success(), "{init}: {}", stderr(&o));
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!((cfg["r"].as_u64(), cfg["lora_alpha"].as_f64()), (Some(8), Some(16.0)), "{init}");
        assert_eq!(cfg["init_lora_weights"], true, "{init}");
        let card = std::fs::read_to_string(run.join("README.md")).unwrap();
        assert!(card.contains("residual base") && card.contains(init), "{card}");
        if init == "olora" {
            let o = lora(&["verify", s(&run)]);
            assert!(o.status.success() && stdout(&o).contains("reproduced byte for byte"), "{}", stderr(&o));
        }
    }
    let o = train_tiny(&d.join("bad"), &["lora.init=\"pissa\"", "lora.use_dora=true"]);
    assert_user_error(&o, "lora.init");
    let o = train_tiny(&d.join("bad2"), &["lora.init=\"pissa_niter_x\""]);
    assert_user_error(&o, "pissa_niter_N");
}

/// `[lora] trainable_token_indices`: the rows are saved as PEFT saves them, the run verifies, `lora
/// merge --check` folds them (also a PEFT adapter of a tied model, whose head reads the same rows),
/// and llama.cpp export of the adapter itself says to fold first.
#[test]
fn trainable_tokens_train_fold_and_refuse_adapter_gguf() {
    let d = temp_dir("tokens-train");
    let run = d.join("run");
    let o = train_tiny(&run, &["train.max_steps=2", "lora.trainable_token_indices=[5, 17]"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["trainable_token_indices"], serde_json::json!([5, 17]));
    let file = lora_formats::safetensors::SafetensorsFile::open(run.join("adapter_model.safetensors")).unwrap();
    let key = "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta";
    assert_eq!(file.info(key).unwrap().shape, vec![2, 32]);
    let o = lora(&["verify", s(&run)]);
    assert!(o.status.success() && stdout(&o).contains("reproduced byte for byte"), "{}", stderr(&o));
    let fx = root().join("tests/fixtures");
    for (base, adapter, out) in [
        (fx.join("models/llama"), run.clone(), d.join("merged")),
        (fx.join("models/llama-tied"), fx.join("lora/tokens-llama-tied/adapter-trained"), d.join("merged-tied")),
    ] {
        let o = lora(&["merge", s(&base), s(&adapter), "-o", s(&out), "--check"]);
        assert!(o.status.success(), "{}: {}", adapter.display(), stderr(&o));
        let merged = lora_formats::safetensors::SafetensorsFile::open(out.join("model.safetensors")).unwrap();
        let (rows, _) = merged.to_f32("model.embed_tokens.weight").unwrap();
        let (trained, _) = lora_formats::safetensors::SafetensorsFile::open(adapter.join("adapter_model.safetensors"))
            .unwrap()
            .to_f32(key)
            .unwrap();
        assert_eq!(&rows[17 * 32..18 * 32], &trained[32..64], "{}: row 17 is the trained one", adapter.display());
    }
    // An untied head's trained rows (PEFT's {"embed_tokens": [...], "lm_head": [...]}) fold into lm_head.
    let (adapter, out) = (fx.join("lora/tokens-llama-head/adapter-trained"), d.join("merged-head"));
    let o = lora(&["merge", s(&fx.join("models/llama")), s(&adapter), "-o", s(&out), "--check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let merged = lora_formats::safetensors::SafetensorsFile::open(out.join("model.safetensors")).unwrap();
    let (head, _) = merged.to_f32("lm_head.weight").unwrap();
    let (trained, _) = lora_formats::safetensors::SafetensorsFile::open(adapter.join("adapter_model.safetensors"))
        .unwrap()
        .to_f32("base_model.model.lm_head.token_adapter.trainable_tokens_delta")
        .unwrap();
    // lm_head's ids are [0, 17, 33, 250]: row 33 is the third trained one.
    assert_eq!(&head[33 * 32..34 * 32], &trained[64..96]);
    let o = lora(&["export", s(&run), "--base", s(&fx.join("models/llama")), "-o", s(&d.join("a.gguf"))]);
    assert_user_error(&o, "fold it");
    let o = train_tiny(&d.join("bad"), &["lora.trainable_token_indices=[5000]"]);
    assert_user_error(&o, "outside the vocabulary");
}

/// `[data] add_special_tokens`: the tokenizer and the vocabulary grow, the new rows train (the
/// untied head's too), the run carries the grown tokenizer; `lora merge --check` writes a model of
/// the grown vocabulary with that tokenizer (PEFT's adapter with its saved tables too), and `lora
/// export` carries the new tokens into GGUF.
#[test]
fn added_special_tokens_grow_train_merge_and_export() {
    let d = temp_dir("added-tokens");
    let run = d.join("run");
    let o = train_tiny(&run, &["train.max_steps=2", r#"data.add_special_tokens=["<|tool_call|>", "<|tool_result|>"]"#]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["trainable_token_indices"], serde_json::json!({"embed_tokens": [384, 385], "lm_head": [384, 385]}));
    let tok = std::fs::read_to_string(run.join("tokenizer.json")).unwrap();
    assert!(tok.contains("<|tool_call|>") && tok.contains("<|tool_result|>"));
    let o = lora(&["verify", s(&run)]);
    assert!(o.status.success() && stdout(&o).contains("reproduced byte for byte"), "{}", stderr(&o));
    let fx = root().join("tests/fixtures");
    for (base, adapter, out) in [
        (fx.join("models/llama"), run.clone(), d.join("merged")),
        (fx.join("models/llama-tied"), fx.join("lora/added-llama-tied/adapter-trained"), d.join("merged-peft")),
    ] {
        let o = lora(&["merge", s(&base), s(&adapter), "-o", s(&out), "--check"]);
        assert!(o.status.success(), "{}: {}", adapter.display(), stderr(&o));
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["vocab_size"], 386, "{}", adapter.display());
        let merged = lora_formats::safetensors::SafetensorsFile::open(out.join("model.safetensors")).unwrap();
        assert_eq!(merged.info("model.embed_tokens.weight").unwrap().shape, vec![386, 32]);
        assert!(std::fs::read_to_string(out.join("tokenizer.json")).unwrap().contains("<|tool_call|>"));
    }
    let gguf = d.join("merged.gguf");
    let o = lora(&["export", s(&d.join("merged")), "-o", s(&gguf)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&gguf).unwrap();
    assert!(bytes.windows(13).any(|w| w == b"<|tool_call|>"), "the GGUF file's vocabulary lacks the added token");
    let o = lora(&[
        "generate",
        "--model",
        s(&fx.join("models/llama")),
        "--adapter",
        s(&run),
        "--prompt",
        "hello <|tool_call|>",
        "--max-new-tokens",
        "2",
    ]);
    assert!(o.status.success() && stderr(&o).contains("the adapter's, with its added tokens"), "{}", stderr(&o));
}

/// A run that `mpirun` starts on several ranks needs the `mpi` feature: without it the error says so
/// (the default build runs a single process); a bad `grad_reduce` names the key.
#[test]
fn mpi_ranks_without_the_mpi_feature_and_bad_reductions_are_refused() {
    let d = temp_dir("mpi-refused");
    let recipe = root().join("recipes/tiny.toml");
    let set = format!("output.dir=\"{}\"", d.join("run").display());
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_lora"))
        .args(["train", s(&recipe), "--set", &set])
        .envs([("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_RANK", "0")])
        .env_remove("MASTER_ADDR")
        .output()
        .unwrap();
    if cfg!(not(feature = "mpi")) {
        assert_user_error(&o, "`mpi` feature");
        assert!(!d.join("run").exists(), "nothing written");
    }
    let o = train_tiny(&d.join("bad"), &["train.grad_reduce=\"slow\""]);
    assert_user_error(&o, "train.grad_reduce");
    let o = train_tiny(&d.join("bad"), &["train.distributed=\"gloo\""]);
    assert_user_error(&o, "train.distributed");
}
