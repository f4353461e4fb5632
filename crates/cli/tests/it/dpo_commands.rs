//! `lora train` with `[train] method = "dpo"` end to end: the run, its metrics, `verify`, the
//! dry run's pair preview, and the recipe errors of a preference run.

use crate::common::*;

/// A DPO recipe on the tiny Llama and the TRL fixture's four pairs, with `extra` appended.
fn dpo_recipe(dir: &std::path::Path, run: &std::path::Path, extra: &str) -> std::path::PathBuf {
    method_recipe(dir, run, "dpo", extra)
}

/// [`dpo_recipe`] with another `[train] method`.
fn method_recipe(dir: &std::path::Path, run: &std::path::Path, method: &str, extra: &str) -> std::path::PathBuf {
    let fx = fixtures();
    let text = format!(
        r#"[model]
base = "{}"
[lora]
r = 4
alpha = 8
targets = ["q_proj", "v_proj", "down_proj"]
[data]
train = "{}"
max_seq_len = 64
[train]
method = "{method}"
max_steps = 5
batch_size = 4
lr = 1e-3
schedule = "constant"
[output]
dir = "{}"
{extra}"#,
        fx.join("models/llama").display(),
        fx.join("dpo/data.jsonl").display(),
        run.display()
    );
    let path = dir.join(format!("{method}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A run's metrics.jsonl, a JSON object per step.
fn read_metrics(run: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn dpo_trains_logs_trl_metrics_and_verifies() {
    let d = temp_dir("dpo");
    let run = d.join("run");
    let recipe = dpo_recipe(&d, &run, "[preference]\nbeta = 0.1\n");
    let o = lora(&["train", s(&recipe)]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("data: 4 preference pairs") && err.contains("margin "), "{err}");
    let metrics = read_metrics(&run);
    assert_eq!(metrics.len(), 5);
    // A fresh adapter (B = 0) is its reference: the first loss is ln 2 and every reward 0.
    let first = &metrics[0];
    assert!((first["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6, "{first}");
    assert_eq!(first["rewards/margins"].as_f64().unwrap(), 0.0);
    // Training widens the margin and lowers the loss.
    let last = &metrics[4];
    assert!(last["rewards/margins"].as_f64().unwrap() > 0.01, "{last}");
    assert!(last["loss"].as_f64().unwrap() < first["loss"].as_f64().unwrap() - 1e-3, "{last}");
    assert!(last["logps/chosen"].as_f64().unwrap() > first["logps/chosen"].as_f64().unwrap(), "{last}");
    // The loss curve shows the margin too.
    let svg = std::fs::read_to_string(run.join("loss.svg")).unwrap();
    assert!(svg.contains("green: reward margin") && svg.matches("<polyline").count() == 3, "{svg}");
    // The card says how it was trained; verify reruns it byte for byte.
    let card = std::fs::read_to_string(run.join("README.md")).unwrap();
    assert!(
        card.contains("Trained with DPO (Sigmoid loss, beta 0.1")
            && card.contains("the base without the adapter as the reference"),
        "{card}"
    );
    let o = lora(&["verify", s(&run)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("reproduced byte for byte"));

    // lora eval on the pairs: the base is its own reference (ln 2, no margin); the trained adapter
    // ranks them right with a wider margin than its last step logged; as its own reference, ln 2.
    let model = fixtures().join("models/llama");
    let data = fixtures().join("dpo/data.jsonl");
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--model", s(&model), "--data", s(&data), "--json"];
        args.extend_from_slice(extra);
        let o = lora(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let base = eval(&["--format", "preference"]);
    assert!((base["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6, "{base}");
    let trained = eval(&["--adapter", s(&run)]); // the default format: the fields say pairs
    assert_eq!(trained["pairs"], 4);
    assert_eq!(trained["rewards/accuracies"].as_f64().unwrap(), 1.0, "{trained}");
    let logged = last["rewards/margins"].as_f64().unwrap();
    assert!(trained["rewards/margins"].as_f64().unwrap() > logged, "{trained} vs last step {logged}");
    let itself = eval(&["--adapter", s(&run), "--reference-adapter", s(&run)]);
    assert!((itself["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6, "{itself}");
}

#[test]
fn dpo_dry_run_shows_pairs_with_their_trained_tokens() {
    let d = temp_dir("dpo-show");
    let recipe = dpo_recipe(&d, &d.join("run"), "");
    let o = lora(&["train", s(&recipe), "--dry-run", "--show", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("# training data: 4 preference pairs"), "{out}");
    assert!(out.contains("# pair 1 of 4: prompt") && out.contains("## chosen") && out.contains("## rejected"), "{out}");
    assert!(!d.join("run").exists(), "a dry run wrote the run folder");
}

#[test]
fn bad_preference_recipes_exit_2_naming_the_key() {
    let d = temp_dir("dpo-bad");
    let run = d.join("run");
    for (extra, needle) in [
        (
            "[preference]\nloss_type = \"kto\"\n",
            "preference.loss_type must be \"sigmoid\", \"ipo\", \"hinge\" or \"robust\"",
        ),
        (
            "[preference]\nloss_type = \"ipo\"\nlabel_smoothing = 0.1\n",
            "preference.label_smoothing applies to the sigmoid, robust and SimPO losses",
        ),
        ("[preference]\nbeta = 0.0\n", "preference.beta must be positive"),
        ("[preference]\ngamma = 1.0\n", "gamma"),
    ] {
        let recipe = dpo_recipe(&d, &run, extra);
        let o = lora(&["train", s(&recipe)]);
        assert_user_error(&o, needle);
        assert!(!run.exists());
    }
    // The [preference] table on an SFT recipe, and DPO on another data format.
    let sft = method_recipe(&d, &run, "sft", "[preference]\nbeta = 0.2\n");
    assert_user_error(
        &lora(&["train", s(&sft)]),
        "preference.beta applies to the preference methods (dpo, simpo, orpo, kto)",
    );
    let text = std::fs::read_to_string(dpo_recipe(&d, &run, "")).unwrap();
    std::fs::write(d.join("chat.toml"), text.replace("max_seq_len = 64", "max_seq_len = 64\nformat = \"chat\""))
        .unwrap();
    assert_user_error(&lora(&["train", s(&d.join("chat.toml"))]), "data.format must be \"preference\" (or \"auto\")");
}

#[test]
fn preference_pairs_in_an_sft_recipe_point_to_dpo() {
    let d = temp_dir("dpo-sft-data");
    let train = format!("data.train=\"{}\"", fixtures().join("dpo/data.jsonl").display());
    let o = train_tiny(&d.join("run"), &[&train, "data.format=\"auto\""]);
    assert_user_error(&o, "preference pairs (\"chosen\", \"rejected\"): train on them with [train] method = \"dpo\"");
}

/// `lora train` itself against TRL: from TRL's IPO run's step-0 adapter (`[lora] init_from`, which
/// is then also the reference, as TRL's "ref" copy), the same data file and settings give TRL's
/// losses and metrics at every step and its final adapter.
#[test]
fn dpo_from_an_adapter_reproduces_trl_end_to_end() {
    let d = temp_dir("dpo-init-from");
    let run = d.join("run");
    let fx = fixtures().join("dpo");
    let text =
        std::fs::read_to_string(dpo_recipe(&d, &run, "[preference]\nbeta = 0.5\nloss_type = \"ipo\"\n")).unwrap();
    // The adapter's own configuration replaces r, alpha and targets.
    let text = text
        .replace("r = 4\nalpha = 8\ntargets = [\"q_proj\", \"v_proj\", \"down_proj\"]\n", "")
        .replace("[lora]\n", &format!("[lora]\ninit_from = \"{}\"\n", fx.join("ipo/adapter-init").display()));
    let recipe = d.join("init.toml");
    std::fs::write(&recipe, text).unwrap();
    let o = lora(&["train", s(&recipe)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("golden.json")).unwrap()).unwrap();
    let metrics = read_metrics(&run);
    for (step, (ours, want)) in metrics.iter().zip(golden["ipo"]["steps"].as_array().unwrap()).enumerate() {
        for key in ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"] {
            let (a, b) = (ours[key].as_f64().unwrap(), want[key].as_f64().unwrap());
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1e-2), "step {step}: {key} {a} vs TRL {b}");
        }
    }
    // The final adapter: TRL's, within 1e-4.
    let read = |dir: &std::path::Path| {
        lora_formats::safetensors::SafetensorsFile::open(dir.join("adapter_model.safetensors")).unwrap()
    };
    let (ours, theirs) = (read(&run), read(&fx.join("ipo/adapter-trained")));
    assert_eq!(ours.tensors().len(), theirs.tensors().len());
    for name in theirs.tensors().keys() {
        let (a, _) = ours.to_f32(name).unwrap();
        let (b, _) = theirs.to_f32(name).unwrap();
        let diff = max_abs_diff(&a, &b);
        assert!(diff <= 1e-4, "{name}: max |Δ| {diff:e}");
    }
    // The run folder's recipe says what was trained: the adapter's rank and alpha.
    let resolved = std::fs::read_to_string(run.join("recipe.toml")).unwrap();
    assert!(resolved.contains("r = 4") && resolved.contains("alpha = 8.0"), "{resolved}");
    // A key that contradicts the adapter is refused beside init_from; one that agrees is fine.
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(&recipe, text.replace("[lora]\n", "[lora]\nr = 8\n")).unwrap();
    std::fs::remove_dir_all(&run).unwrap();
    assert_user_error(&lora(&["train", s(&recipe)]), "lora.r is 8 but the init_from adapter's is 4");
    std::fs::write(&recipe, text.replace("[lora]\n", "[lora]\nr = 4\n")).unwrap();
    assert!(lora(&["train", s(&recipe), "--dry-run"]).status.success());
}

/// Ctrl-C in a DPO run from an adapter: the checkpoint, then `--resume` (which reads the reference
/// adapter from its folder again, not from the resumed values) gives the uninterrupted run's bytes.
#[test]
fn an_interrupted_dpo_run_resumes_to_the_same_adapter() {
    use std::io::{BufRead, BufReader};
    let d = temp_dir("dpo-resume");
    let run = d.join("run");
    let init = fixtures().join("dpo/rpo/adapter-init");
    let text = std::fs::read_to_string(dpo_recipe(&d, &run, "[preference]\nsft_weight = 0.5\n"))
        .unwrap()
        .replace("r = 4\nalpha = 8\ntargets = [\"q_proj\", \"v_proj\", \"down_proj\"]\n", "")
        .replace("[lora]\n", &format!("[lora]\ninit_from = \"{}\"\n", init.display()))
        .replace("max_steps = 5", "max_steps = 400\nbatch_size = 2")
        .replace("batch_size = 4\n", "");
    let recipe = d.join("resume.toml");
    std::fs::write(&recipe, text).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lora"))
        .args(["train", s(&recipe)])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while !lines.next().expect("training ended early").unwrap().contains("step 3/400") {}
    let rest = std::thread::spawn(move || lines.map_while(|l| l.ok()).collect::<Vec<_>>().join("\n"));
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    let err = rest.join().unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("interrupted at step"), "{err}");
    let o = lora(&["train", s(&recipe), "--resume"]);
    assert!(o.status.success() && stderr(&o).contains("resuming at step"), "{}", stderr(&o));
    let o = lora(&["verify", s(&run)]);
    assert!(o.status.success() && stdout(&o).contains("reproduced byte for byte"), "{}{}", stdout(&o), stderr(&o));
}

/// `method = "simpo"`: reference-free, TRL CPOConfig's defaults (gamma 0.5, an SFT term of 1), the
/// keys that need a reference refused.
#[test]
fn simpo_trains_without_a_reference() {
    let d = temp_dir("simpo");
    let run = d.join("run");
    let recipe = method_recipe(&d, &run, "simpo", "[preference]\nbeta = 2.0\ngamma = 0.3\n");
    let o = lora(&["train", s(&recipe)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let metrics = read_metrics(&run);
    let (first, last) = (&metrics[0], &metrics[4]);
    assert!(last["loss"].as_f64().unwrap() < first["loss"].as_f64().unwrap(), "{first} -> {last}");
    // SimPO's log-probabilities are per-token means, its rewards beta times them.
    let (lc, rc) = (first["logps/chosen"].as_f64().unwrap(), first["rewards/chosen"].as_f64().unwrap());
    assert!(lc > -20.0 && (rc - 2.0 * lc).abs() < 1e-9, "{first}");
    let card = std::fs::read_to_string(run.join("README.md")).unwrap();
    assert!(
        card.contains("Trained with SimPO") && card.contains("gamma 0.3") && card.contains("no reference model"),
        "{card}"
    );
    let o = lora(&["verify", s(&run)]);
    assert!(o.status.success() && stdout(&o).contains("reproduced byte for byte"), "{}", stderr(&o));
    for (extra, needle) in [
        (
            "[preference]\nloss_type = \"ipo\"\n".to_string(),
            "preference.loss_type does not apply to method = \"simpo\"",
        ),
        (
            format!("[preference]\nreference_adapter = \"{}\"\n", fixtures().join("dpo/ipo/adapter-init").display()),
            "preference.reference_adapter does not apply",
        ),
    ] {
        let recipe = method_recipe(&d, &d.join("run2"), "simpo", &extra);
        assert_user_error(&lora(&["train", s(&recipe)]), needle);
    }
    // gamma belongs to SimPO.
    let recipe = dpo_recipe(&d, &d.join("run3"), "[preference]\ngamma = 1.0\n");
    assert_user_error(&lora(&["train", s(&recipe)]), "preference.gamma is SimPO's");
}

/// `method = "orpo"`: reference-free, its NLL term on the chosen sequences; verify reproduces it.
#[test]
fn orpo_trains_and_verifies() {
    let d = temp_dir("orpo");
    let run = d.join("run");
    let recipe = method_recipe(&d, &run, "orpo", "[preference]\nbeta = 0.5\n");
    let o = lora(&["train", s(&recipe)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let metrics = read_metrics(&run);
    assert!(metrics[4]["loss"].as_f64().unwrap() < metrics[0]["loss"].as_f64().unwrap(), "{metrics:?}");
    let card = std::fs::read_to_string(run.join("README.md")).unwrap();
    assert!(card.contains("Trained with ORPO (Orpo loss, beta 0.5") && card.contains("SFT term weight 1"), "{card}");
    let o = lora(&["verify", s(&run)]);
    assert!(o.status.success() && stdout(&o).contains("reproduced byte for byte"), "{}", stderr(&o));
    let recipe = method_recipe(&d, &d.join("run2"), "orpo", "[preference]\nlabel_smoothing = 0.1\n");
    assert_user_error(
        &lora(&["train", s(&recipe)]),
        "label_smoothing applies to the sigmoid, robust and SimPO losses, not \"orpo\"",
    );
}

/// A KTO recipe on unpaired examples (4 desirable, 2 undesirable, micro-batches of 3, two per step).
fn kto_recipe(dir: &std::path::Path, run: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let path = method_recipe(dir, run, "kto", &format!("[preference]\nbeta = 0.1\nundesirable_weight = 1.5\n{extra}"));
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replace("dpo/data.jsonl", "dpo/kto_data.jsonl")
        .replace("batch_size = 4", "batch_size = 3\ngrad_accum = 2")
        .replace("max_steps = 5", "max_steps = 4");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn kto_trains_logs_trl_metrics_and_verifies() {
    let d = temp_dir("kto");
    let run = d.join("run");
    let recipe = kto_recipe(&d, &run, "");
    let o = lora(&["train", s(&recipe)]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("data: 6 KTO examples") && err.contains(" kl "), "{err}");
    let metrics = read_metrics(&run);
    assert_eq!(metrics.len(), 4);
    // A fresh adapter (B = 0) is its reference: no KL, no reward, at the first step; KTO has no
    // accuracy.
    let first = &metrics[0];
    assert_eq!(first["kl"].as_f64().unwrap(), 0.0, "{first}");
    assert_eq!(first["rewards/chosen"].as_f64().unwrap(), 0.0, "{first}");
    assert!(first.get("rewards/accuracies").is_none(), "{first}");
    // Training separates the desirable from the undesirable completions and lowers the loss.
    let last = &metrics[3];
    assert!(last["rewards/chosen"].as_f64().unwrap() > 0.0, "{last}");
    assert!(last["rewards/rejected"].as_f64().unwrap() < 0.0, "{last}");
    assert!(last["loss"].as_f64().unwrap() < first["loss"].as_f64().unwrap() - 1e-3, "{last}");
    let card = std::fs::read_to_string(run.join("README.md")).unwrap();
    assert!(
        card.contains("Trained with KTO (Kto loss, beta 0.1, desirable weight 1, undesirable weight 1.5"),
        "{card}"
    );
    let o = lora(&["verify", s(&run)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("reproduced byte for byte"));

    // lora eval on the examples: the base is its own reference (every reward 0); the trained
    // adapter rewards the desirable completions.
    let model = fixtures().join("models/llama");
    let data = fixtures().join("dpo/kto_data.jsonl");
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--model", s(&model), "--data", s(&data), "--json", "--loss-type", "kto"];
        args.extend_from_slice(extra);
        let o = lora(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let base = eval(&[]);
    assert_eq!(base["examples"], 6);
    assert_eq!(base["rewards/chosen"].as_f64().unwrap(), 0.0, "{base}");
    assert!((base["loss"].as_f64().unwrap() - 0.5).abs() < 1e-9, "{base}");
    let trained = eval(&["--adapter", s(&run)]);
    assert!(trained["rewards/chosen"].as_f64().unwrap() > 0.0, "{trained}");
    assert!(trained["loss"].as_f64().unwrap() < 0.5, "{trained}");
}

#[test]
fn kto_dry_run_shows_examples_and_unpairs_pairs() {
    let d = temp_dir("kto-show");
    let recipe = kto_recipe(&d, &d.join("run"), "");
    let o = lora(&["train", s(&recipe), "--dry-run", "--show", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("# training data: 6 KTO examples"), "{out}");
    assert!(out.contains("# example 1 of 6: desirable") && out.contains("## KL row"), "{out}");
    // Preference pairs on a KTO recipe: every pair gives a desirable and an undesirable example.
    let text = std::fs::read_to_string(&recipe).unwrap().replace("kto_data.jsonl", "data.jsonl");
    std::fs::write(&recipe, text).unwrap();
    let o = lora(&["train", s(&recipe), "--dry-run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("# training data: 8 KTO examples"), "{}", stdout(&o));
    assert!(!d.join("run").exists(), "a dry run wrote the run folder");
}

#[test]
fn bad_kto_recipes_exit_2_naming_the_key() {
    let d = temp_dir("kto-bad");
    let run = d.join("run");
    for (extra, needle) in [
        ("loss_type = \"sigmoid\"\n", "preference.loss_type must be \"kto\" or \"apo_zero_unpaired\""),
        ("gamma = 0.5\n", "preference.gamma does not apply to method = \"kto\""),
        ("desirable_weight = 0.0\n", "preference.desirable_weight must be positive"),
    ] {
        let recipe = kto_recipe(&d, &run, extra);
        assert_user_error(&lora(&["train", s(&recipe)]), needle);
    }
    // One example per micro-batch leaves the KL estimate nothing to mismatch.
    let recipe = kto_recipe(&d, &run, "");
    let text = std::fs::read_to_string(&recipe).unwrap().replace("batch_size = 3", "batch_size = 1");
    std::fs::write(&recipe, text).unwrap();
    assert_user_error(&lora(&["train", s(&recipe)]), "train.batch_size must be at least 2 with method = \"kto\"");
    // KTO's weights on a DPO recipe.
    let recipe = dpo_recipe(&d, &run, "[preference]\ndesirable_weight = 2.0\n");
    assert_user_error(&lora(&["train", s(&recipe)]), "preference.desirable_weight is KTO's");
    assert!(!run.exists());
}

/// `[data] fields`: orca_dpo_pairs' `question`, UltraFeedback's whole conversations beside a
/// prompt string, and KTO data with its own names read as the canonical files are.
#[test]
fn data_fields_map_a_datasets_own_names() {
    let d = temp_dir("dpo-fields");
    let run = d.join("run");
    let data_line = |recipe: &std::path::Path| {
        let o = lora(&["train", s(recipe), "--dry-run"]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o).lines().find(|l| l.starts_with("# training data:")).unwrap().to_string()
    };
    let with_data = |recipe: &std::path::Path, data: &std::path::Path, fields: &str| {
        let text = std::fs::read_to_string(recipe).unwrap();
        let text = text.replace(s(&fixtures().join("dpo/data.jsonl")), s(data));
        let text = text.replace(s(&fixtures().join("dpo/kto_data.jsonl")), s(data));
        let text = text.replace("max_seq_len = 64\n", &format!("max_seq_len = 64\nfields = {fields}\n"));
        let path = d.join("mapped.toml");
        std::fs::write(&path, text).unwrap();
        path
    };
    // Pairs: the canonical file, and the same pairs as orca_dpo_pairs names them.
    let canonical = data_line(&dpo_recipe(&d, &run, ""));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(fixtures().join("dpo/data.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let orca = d.join("orca.jsonl");
    let text: String = rows
        .iter()
        .map(|r| {
            let v = serde_json::json!({"system": "", "question": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]});
            format!("{v}\n")
        })
        .collect();
    std::fs::write(&orca, text).unwrap();
    let mapped = with_data(&dpo_recipe(&d, &run, ""), &orca, "{ prompt = \"question\" }");
    assert_eq!(data_line(&mapped), canonical);
    // Without the mapping the record has no prompt and no shared beginning: an error on line 1.
    let unmapped = with_data(&dpo_recipe(&d, &run, ""), &orca, "{}");
    let o = lora(&["train", s(&unmapped), "--dry-run"]);
    assert!(!o.status.success() && stderr(&o).contains("orca.jsonl:1:"), "{}", stderr(&o));
    // A mapped field a record lacks names both names.
    let missing = with_data(&dpo_recipe(&d, &run, ""), &orca, "{ prompt = \"instruction\" }");
    let o = lora(&["train", s(&missing), "--dry-run"]);
    assert!(stderr(&o).contains("missing field \"instruction\" ([data] fields maps prompt to it)"), "{}", stderr(&o));
    // UltraFeedback's form: a prompt string beside conversations; "" leaves it out.
    let uf = d.join("uf.jsonl");
    let conv =
        |u: &str, a: &str| serde_json::json!([{"role": "user", "content": u}, {"role": "assistant", "content": a}]);
    std::fs::write(
        &uf,
        format!("{}\n", serde_json::json!({"prompt": "Name a fruit.", "chosen": conv("Name a fruit.", "An apple."), "rejected": conv("Name a fruit.", "A brick.")})),
    )
    .unwrap();
    let o = lora(&["train", s(&with_data(&dpo_recipe(&d, &run, ""), &uf, "{}")), "--dry-run"]);
    assert!(stderr(&o).contains("uf.jsonl:1:"), "{}", stderr(&o));
    let line = data_line(&with_data(&dpo_recipe(&d, &run, ""), &uf, "{ prompt = \"\" }"));
    assert!(line.starts_with("# training data: 1 preference pairs"), "{line}");
    // KTO: its own names for completion and label.
    let canonical = data_line(&kto_recipe(&d, &run, ""));
    let renamed = d.join("kto.jsonl");
    let text: String = std::fs::read_to_string(fixtures().join("dpo/kto_data.jsonl"))
        .unwrap()
        .lines()
        .map(|l| l.replace("\"completion\"", "\"response\"").replace("\"label\"", "\"good\"") + "\n")
        .collect();
    std::fs::write(&renamed, text).unwrap();
    let mapped = with_data(&kto_recipe(&d, &run, ""), &renamed, "{ completion = \"response\", label = \"good\" }");
    assert_eq!(data_line(&mapped), canonical);
    // Recipe errors: a name no method has, KTO's names on DPO, two names on one field.
    for (recipe, fields, needle) in [
        (dpo_recipe(&d, &run, ""), "{ question = \"prompt\" }", "data.fields cannot map \"question\""),
        (dpo_recipe(&d, &run, ""), "{ label = \"good\" }", "data.fields cannot map \"label\""),
        (dpo_recipe(&d, &run, ""), "{ chosen = \"a\", rejected = \"a\" }", "maps both chosen and rejected to \"a\""),
    ] {
        assert_user_error(&lora(&["train", s(&with_data(&recipe, &orca, fields))]), needle);
    }
    assert!(!run.exists());
}

/// DPO and KTO on a 4-bit (NF4) base with recomputation: the reference is the same quantized base
/// without the adapter, so a fresh adapter's first DPO loss is ln 2 and its first KTO rewards 0;
/// the runs learn, say QLoRA on their cards, and verify byte for byte.
#[test]
fn preference_methods_train_on_a_4_bit_base() {
    let d = temp_dir("dpo-nf4");
    for (method, recipe) in [("dpo", dpo_recipe(&d, &d.join("dpo"), "")), ("kto", kto_recipe(&d, &d.join("kto"), ""))] {
        let run = d.join(method);
        let o = lora(&[
            "train",
            s(&recipe),
            "--set",
            "model.quantize=\"nf4\"",
            "--set",
            "train.gradient_checkpointing=true",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let metrics = read_metrics(&run);
        let (first, last) = (&metrics[0], metrics.last().unwrap());
        match method {
            "dpo" => {
                assert!((first["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6, "{first}");
                assert!(last["rewards/margins"].as_f64().unwrap() > 0.01, "{last}");
            }
            _ => {
                assert_eq!(first["rewards/chosen"].as_f64().unwrap(), 0.0, "{first}");
                assert!(last["rewards/chosen"].as_f64().unwrap() > 0.0, "{last}");
            }
        }
        assert!(last["loss"].as_f64().unwrap() < first["loss"].as_f64().unwrap(), "{method}: {last}");
        let card = std::fs::read_to_string(run.join("README.md")).unwrap();
        assert!(card.contains("Trained as QLoRA"), "{card}");
        let o = lora(&["verify", s(&run)]);
        assert!(o.status.success() && stdout(&o).contains("reproduced byte for byte"), "{}", stderr(&o));
    }
}
