//! `lora merge`: adapter folds that transformers' and our model core's numbers agree with, model
//! merges from a configuration, and the errors of bad inputs.

use std::path::Path;

use lora_core::kernels::host::to_f32_vec;
use lora_core::{CausalLm, TokenBatch, default_device};
use lora_merge::ModelDir;
use lora_merge::dtype::decode_f32;

use crate::common::*;

fn tensor(path: &Path, name: &str) -> Vec<f32> {
    let m = ModelDir::open(path).unwrap();
    let t = m.get(name).unwrap();
    let mut v = vec![0f32; t.info.numel()];
    decode_f32(t.bytes(), t.info.dtype, &mut v);
    v
}

#[test]
fn fold_two_adapters_matches_peft_logits() {
    let fx = fixtures();
    let dir = temp_dir("fold");
    let out = dir.join("merged");
    let o = lora(&[
        "merge",
        s(&fx.join("models/llama")),
        s(&fx.join("merge/adapters/a1")),
        s(&fx.join("merge/adapters/a2")),
        "-o",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "README.md"] {
        assert!(out.join(f).is_file(), "{f} missing from the output");
    }
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("adapters/a1") && card.contains("adapters/a2"), "{card}");
    // The folded weights equal PEFT's merge_and_unload.
    let expected = fx.join("merge/expected/fold.safetensors");
    for name in ModelDir::open(&expected).unwrap().names().filter(|n| n.ends_with("weight")) {
        let (a, b) = (tensor(&out, name), tensor(&expected, name));
        let d = max_abs_diff(&a, &b);
        assert!(d < 1e-5, "{name}: max |ours − PEFT| = {d}");
    }
    // Our model core loads the folder and gives PEFT's merged logits.
    let ids: Vec<u32> = vec![0, 5, 17, 42, 99, 200, 383, 7];
    let model = CausalLm::load_dir(&out, &default_device()).unwrap();
    let logits = to_f32_vec(model.forward(&TokenBatch::single(ids), None).unwrap()).unwrap();
    let reference = tensor(&expected, "logits");
    let d = max_abs_diff(&logits, &reference);
    assert!(d < 1e-4, "max |logits − PEFT merged logits| = {d}");
    // An existing OUT is refused without --force, replaced with it.
    let (base, a1) = (fx.join("models/llama"), fx.join("merge/adapters/a1"));
    let again = ["merge", s(&base), s(&a1), "-o", s(&out)];
    assert_user_error(&lora(&again), "exists; pass --force");
    let mut forced = again.to_vec();
    forced.push("--force");
    assert!(lora(&forced).status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fold_in_f16_with_shards() {
    let fx = fixtures();
    let dir = temp_dir("f16");
    let out = dir.join("m");
    let o = lora(&[
        "merge",
        s(&fx.join("models/llama")),
        s(&fx.join("merge/adapters/a1")),
        "--weights",
        "0.5",
        "--dtype",
        "f16",
        "--shard-size",
        "50KB",
        "-o",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("model.safetensors.index.json").is_file());
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "float16");
    CausalLm::load_dir(&out, &default_device()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn merge_config_runs() {
    let fx = fixtures().join("merge");
    let dir = temp_dir("cfg");
    let text = std::fs::read_to_string(fx.join("configs/ties.toml")).unwrap();
    let text = ["base", "ft1", "ft2", "ft3"]
        .iter()
        .fold(text, |t, m| t.replace(&format!("\"{m}\""), &format!("\"{}\"", fx.join(m).display())));
    std::fs::write(dir.join("m.toml"), text).unwrap();
    let out = dir.join("out");
    let o = lora(&["merge", "--config", s(&dir.join("m.toml")), "-o", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ties merge"));
    // Bad configurations: unknown key, unknown parameter.
    std::fs::write(dir.join("bad.toml"), "merge_method = \"ties\"\nbase_modle = \"x\"\n").unwrap();
    assert_user_error(&lora(&["merge", "--config", s(&dir.join("bad.toml")), "-o", s(&dir.join("o2"))]), "base_modle");
    std::fs::write(dir.join("bad2.toml"), "merge_method = \"linear\"\n[parameters]\ndensity = 0.5\n").unwrap();
    assert_user_error(&lora(&["merge", "--config", s(&dir.join("bad2.toml")), "-o", s(&dir.join("o3"))]), "'density'");
    assert!(!dir.join("o2").exists() && !dir.join("o3").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn adapter_for_another_model_is_refused() {
    let fx = fixtures();
    let dir = temp_dir("wrongbase");
    let out = dir.join("m");
    // a1 was trained on models/llama (hidden 32); merge/base has hidden 16.
    let o = lora(&["merge", s(&fx.join("merge/base")), s(&fx.join("merge/adapters/a1")), "-o", s(&out)]);
    assert_user_error(&o, "module 'model.layers.0.mlp.down_proj'");
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn merge_adapters_and_extract() {
    let fx = fixtures();
    let dir = temp_dir("madapters");
    let (a1, a2) = (fx.join("merge/adapters/a1"), fx.join("merge/adapters/a2"));
    let o = lora(&["merge-adapters", s(&a1), s(&a2), "--method", "svd", "--rank", "12", "-o", s(&dir.join("svd"))]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("largest relative error"));
    assert!(dir.join("svd/adapter_model.safetensors").is_file() && dir.join("svd/adapter_config.json").is_file());
    assert_user_error(
        &lora(&["merge-adapters", s(&a1), s(&a2), "--method", "mean", "-o", s(&dir.join("x"))]),
        "--method 'mean'",
    );
    // Fold a1, then extract it back at its rank: all the energy is captured.
    let base = fx.join("models/llama");
    assert!(lora(&["merge", s(&base), s(&a1), "-o", s(&dir.join("fold"))]).status.success());
    let o = lora(&["extract", s(&base), s(&dir.join("fold")), "--rank", "4", "-o", s(&dir.join("ex"))]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("mean energy captured 1.0000"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `lora merge BASE ADAPTER... --check` compares OUT with the base running the adapters unmerged
/// (at their weights): in f32 the two agree to rounding and in greedy tokens; a bf16 OUT drifts
/// more, still within what bf16 explains; with `--quantized-base` the check runs on the NF4 base.
#[test]
fn merge_check_compares_out_with_the_unmerged_adapters() {
    let fx = fixtures();
    let dir = temp_dir("merge-check");
    let (base, a, b) = (fx.join("models/llama"), fx.join("lora/adapter-qv"), fx.join("lora/adapter-rslora"));
    let run = |tag: &str, extra: &[&str]| -> f64 {
        let out = dir.join(tag);
        let mut args = vec!["merge", s(&base), s(&a), s(&b), "--weights", "1,0.5", "-o", s(&out), "--check"];
        args.extend_from_slice(extra);
        let o = lora(&args);
        assert!(o.status.success(), "{tag}: {}", stderr(&o));
        let text = stdout(&o);
        let line = text
            .lines()
            .find(|l| l.starts_with("check: merged vs base + adapters"))
            .unwrap_or_else(|| panic!("{text}"));
        // bf16 rounding may flip a near-tie of this random model's flat logits; f32 may not.
        assert!(tag == "bf16" || line.ends_with("greedy tokens agree"), "{line}");
        line.split("max |Δ logits| ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap()
    };
    let f32_diff = run("f32", &["--dtype", "f32"]);
    let bf16_diff = run("bf16", &["--dtype", "bf16"]);
    assert!(f32_diff < 1e-4, "f32: {f32_diff}");
    assert!(bf16_diff > f32_diff * 10.0, "bf16 rounding should show: {bf16_diff} vs {f32_diff}");
    assert!(run("nf4", &["--dtype", "f32", "--quantized-base", "nf4"]) < 1e-4);
}

/// QLoRA: `--quantized-base nf4` folds into dequant(NF4(W)), so the merged folder gives what
/// transformers + bitsandbytes + PEFT give with the adapter on the NF4 base; the plain fold does not.
/// `eval --quantize nf4 --adapter` scores the unmerged adapter on that base to the same loss.
#[test]
fn quantized_base_fold_matches_bitsandbytes_peft_and_eval_on_nf4() {
    let fx = fixtures();
    let dir = temp_dir("qlora-fold");
    let golden = lora_formats::safetensors::SafetensorsFile::open(fx.join("qlora/golden.safetensors")).unwrap();
    let (want, _) = golden.to_f32("logits.nf4.adapter-qv").unwrap();
    let ids: Vec<u32> = golden
        .bytes(golden.info("input_ids").unwrap())
        .chunks_exact(8)
        .map(|c| c[0] as u32 | (c[1] as u32) << 8)
        .collect();
    let batch = TokenBatch::rows(ids.chunks(16).map(<[u32]>::to_vec).collect());
    let mut diffs = Vec::new();
    for (tag, extra) in [("nf4", vec!["--quantized-base", "nf4"]), ("plain", vec![])] {
        let out = dir.join(tag);
        let (base, adapter) = (fx.join("models/llama"), fx.join("lora/adapter-qv"));
        let mut args = vec!["merge", s(&base), s(&adapter), "-o", s(&out)];
        args.extend(extra);
        let o = lora(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let model = CausalLm::load_dir(&out, &default_device()).unwrap();
        let got = to_f32_vec(model.forward(&batch, None).unwrap()).unwrap();
        diffs.push(max_abs_diff(&got, &want));
    }
    assert!(diffs[0] <= 1e-4, "nf4 fold vs bitsandbytes+PEFT: {}", diffs[0]);
    assert!(diffs[1] > 1e-3, "the plain fold should differ from the NF4 model: {}", diffs[1]);
    let card = std::fs::read_to_string(dir.join("nf4/README.md")).unwrap();
    assert!(card.contains("dequant(NF4(W))"), "{card}");

    let data = dir.join("eval.jsonl");
    std::fs::write(&data, "{\"text\": \"In the beginning was the word.\"}\n{\"text\": \"And the light shineth.\"}\n")
        .unwrap();
    let eval = |model: &Path, extra: &[&str]| -> f64 {
        let mut args = vec!["eval", "--model", s(model), "--data", s(&data), "--json"];
        args.extend_from_slice(extra);
        let o = lora(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()["mean_loss"].as_f64().unwrap()
    };
    let merged = eval(&dir.join("nf4"), &[]);
    let adapter = fx.join("lora/adapter-qv");
    let on_nf4 = eval(&fx.join("models/llama"), &["--adapter", s(&adapter), "--quantize", "nf4"]);
    let on_dense = eval(&fx.join("models/llama"), &["--adapter", s(&adapter)]);
    assert!((merged - on_nf4).abs() < 1e-5, "merged {merged} vs adapter on NF4 {on_nf4}");
    assert!((on_dense - on_nf4).abs() > 1e-4, "NF4 should change the loss: {on_dense} vs {on_nf4}");
    let bf16 = eval(&fx.join("models/llama"), &["--adapter", s(&adapter), "--dtype", "bf16"]);
    assert!((bf16 - on_dense).abs() < 0.05 && bf16 != on_dense, "bf16 base: {bf16} vs f32 {on_dense}");
}

/// What the model core would refuse, a merge refuses too, before writing anything.
#[test]
fn merges_refuse_bases_and_adapters_the_model_core_refuses() {
    let fx = fixtures();
    let d = temp_dir("merge-validate");
    let copy = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| -> std::path::PathBuf {
        let dir = d.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in std::fs::read_dir(fx.join("models/llama")).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
        }
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        edit(&mut cfg);
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        dir
    };
    let adapter = fx.join("lora/adapter-qv");
    let run = |base: &std::path::Path, adapter: &std::path::Path, out: &str| {
        lora(&["merge", s(base), s(adapter), "-o", s(&d.join(out))])
    };
    let heads = copy("heads", &|c| c["num_attention_heads"] = 5.into());
    assert_user_error(&run(&heads, &adapter, "o1"), "config.json");
    let arch = copy("arch", &|c| c["architectures"] = serde_json::json!(["GPT2LMHeadModel"]));
    assert_user_error(&run(&arch, &adapter, "o2"), "unsupported architecture 'GPT2LMHeadModel'");
    let none = copy("noconfig", &|_| {});
    std::fs::remove_file(none.join("config.json")).unwrap();
    assert_user_error(&run(&none, &adapter, "o3"), "no config.json");
    let r0 = d.join("r0");
    std::fs::create_dir_all(&r0).unwrap();
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        std::fs::copy(adapter.join(f), r0.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r0.join("adapter_config.json")).unwrap()).unwrap();
    cfg["r"] = 0.into();
    std::fs::write(r0.join("adapter_config.json"), cfg.to_string()).unwrap();
    assert_user_error(&run(&fx.join("models/llama"), &r0, "o4"), "adapter_config.json: r must be at least 1");
    let gguf = fx.join("gguf/llama-f32.gguf");
    assert_user_error(&run(&gguf, &adapter, "o7"), "rope_freqs, which config.json cannot express");
    for o in ["o1", "o2", "o3", "o4", "o7"] {
        assert!(!d.join(o).exists(), "{o} was written");
    }

    // mergekit's density is a fraction in (0, 1].
    let toml = d.join("merge.toml");
    let base = fx.join("models/llama");
    std::fs::write(
        &toml,
        format!(
            "merge_method = \"ties\"\nbase_model = \"{b}\"\n\n[[models]]\nmodel = \"{b}+{a}\"\nparameters = {{ weight = 1.0, density = 1.5 }}\n",
            b = base.display(),
            a = adapter.display()
        ),
    )
    .unwrap();
    let o = lora(&["merge", "--config", s(&toml), "-o", s(&d.join("o5"))]);
    assert_user_error(&o, "density 1.5 of model 1 is outside (0, 1]");
    assert!(!d.join("o5").exists());
    // A syntax error is located as a recipe's is: FILE:LINE:COL.
    std::fs::write(&toml, "merge_method = \"ties\"\nbase_model = \"x\"\n[[models]\n").unwrap();
    let o = lora(&["merge", "--config", s(&toml), "-o", s(&d.join("o6"))]);
    assert_user_error(&o, "merge.toml:3:");
}

/// A full disk (a 4 KiB tmpfs as the output's filesystem, where this test may mount one; it returns
/// at once elsewhere): `lora merge` and `lora export` fail naming the path, and leave nothing behind.
#[test]
fn full_disk_is_an_error_naming_the_path_and_leaves_nothing() {
    struct Mount(std::path::PathBuf);
    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let d = temp_dir("full-disk");
    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4k", "tmpfs", s(&mnt)])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|st| st.success());
    if !mounted {
        eprintln!("full_disk test: cannot mount a tmpfs here (not root?); nothing checked");
        return;
    }
    let _guard = Mount(mnt.clone());
    let fx = fixtures();
    let (base, adapter) = (fx.join("models/llama"), fx.join("lora/adapter-qv"));
    let out = mnt.join("merged");
    let o = lora(&["merge", s(&base), s(&adapter), "-o", s(&out)]);
    assert_user_error(&o, "No space left on device");
    assert!(stderr(&o).contains(s(&mnt)), "{}", stderr(&o));
    let gguf = mnt.join("adapter.gguf");
    let o = lora(&["export", s(&adapter), "--base", s(&base), "-o", s(&gguf)]);
    assert_user_error(&o, "No space left on device");
    assert!(stderr(&o).contains(s(&mnt)), "{}", stderr(&o));
    let left: Vec<_> = std::fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind on the full disk: {left:?}");
}

/// `kill -9` of `lora merge` at moments spread over a merge of a ~100 MB model: OUT never exists
/// after a kill (the work happens in `.OUT.partial`), and the next run, which clears the stale
/// partial folder, completes.
#[test]
fn kill_9_during_a_merge_never_leaves_out() {
    use lora_core::io::random_model::{LlamaShape, write_random_llama};
    let d = temp_dir("kill9-merge");
    let model = d.join("model");
    let shape = LlamaShape { hidden: 512, layers: 8, heads: 8, kv_heads: 8, inter: 1536, vocab: 8192, tied: false };
    write_random_llama(&model, &shape, "f32").unwrap();
    let cfg = d.join("merge.toml");
    let m = model.display();
    std::fs::write(
        &cfg,
        format!(
            "merge_method = \"linear\"\n[[models]]\nmodel = \"{m}\"\nparameters = {{ weight = 0.5 }}\n\
             [[models]]\nmodel = \"{m}\"\nparameters = {{ weight = 0.5 }}\n"
        ),
    )
    .unwrap();
    let out = d.join("out");
    let args = ["merge", "--config", s(&cfg), "-o", s(&out)];
    let complete = |o: &Path| o.join("model.safetensors").exists() || o.join("model.safetensors.index.json").exists();
    let killed = kill_at_fractions(&args, &out, &complete);
    assert!(killed >= 3, "only {killed} kills landed during the merge");
    assert!(lora(&args).status.success(), "the merge after the kills");
    assert!(!d.join(".out.partial").exists());
    assert!(out.join("config.json").exists());
    std::fs::remove_dir_all(&d).unwrap();
}

/// mergekit's `tokenizer_source: base`: a model with a larger vocabulary (8 rows more) or a smaller
/// one (8 rows fewer) merges at the base's vocabulary, its extra rows dropped and its missing rows
/// taken from the base, each vocabulary tensor reported; without the key the mismatch is an error
/// that names it.
#[test]
fn other_vocabulary_sizes_merge_at_the_base_vocabulary_with_tokenizer_source_base() {
    use lora_core::io::safetensors_write::{StoredDtype, write_safetensors};
    use lora_formats::safetensors::SafetensorsFile;
    let fx = fixtures().join("merge");
    let d = temp_dir("vocab-merge");
    let read = |dir: &Path| -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
        let f = SafetensorsFile::open(dir.join("model.safetensors")).unwrap();
        let names: Vec<String> = f.tensors().keys().cloned().collect();
        names
            .into_iter()
            .map(|n| {
                let (v, s) = f.to_f32(&n).unwrap();
                (n, (s, v))
            })
            .collect()
    };
    let (base, ft1) = (read(&fx.join("base")), read(&fx.join("ft1")));
    let vocab = base["lm_head.weight"].0[0];
    let hidden = base["lm_head.weight"].0[1];
    // ft1 with its vocabulary resized to `rows` (extra rows: 0.25).
    let resized = |name: &str, rows: usize| {
        let dir = d.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = ft1
            .iter()
            .map(|(n, (s, v))| {
                if n.ends_with("embed_tokens.weight") || n == "lm_head.weight" {
                    let mut v = v.clone();
                    v.resize(rows * hidden, 0.25);
                    (n.clone(), vec![rows, hidden], v)
                } else {
                    (n.clone(), s.clone(), v.clone())
                }
            })
            .collect();
        write_safetensors(&dir.join("model.safetensors"), &tensors, StoredDtype::F32, &Default::default()).unwrap();
        let cfg = std::fs::read_to_string(fx.join("ft1/config.json")).unwrap();
        std::fs::write(
            dir.join("config.json"),
            cfg.replace(&format!("\"vocab_size\": {vocab}"), &format!("\"vocab_size\": {rows}")),
        )
        .unwrap();
        dir
    };
    let (big, small) = (resized("big", vocab + 8), resized("small", vocab - 8));
    let config = |model: &Path, source: bool| {
        let path = d.join("merge.yml");
        let b = fx.join("base");
        std::fs::write(
            &path,
            format!(
                "merge_method: linear\nbase_model: {}\n{}dtype: float32\nmodels:\n  - model: {}\n    parameters: {{weight: 0.5}}\n  - model: {}\n    parameters: {{weight: 0.5}}\n",
                b.display(),
                if source { "tokenizer_source: base\n" } else { "" },
                b.display(),
                model.display()
            ),
        )
        .unwrap();
        path
    };
    let o = lora(&["merge", "--config", s(&config(&big, false)), "-o", s(&d.join("refused"))]);
    assert_user_error(&o, "the vocabularies differ: set tokenizer_source: base");
    assert!(!d.join("refused").exists());
    for (model, rows_of_ft1) in [(&big, vocab), (&small, vocab - 8)] {
        let out = d.join(format!("out-{}", model.file_name().unwrap().to_string_lossy()));
        let o = lora(&["merge", "--config", s(&config(model, true)), "-o", s(&out)]);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = stdout(&o);
        let what = if model == &big {
            "the 8 rows beyond the base's vocabulary dropped"
        } else {
            "the 8 missing rows taken from the base"
        };
        assert_eq!(text.matches(what).count(), 2, "{text}");
        let merged = read(&out);
        for (n, (shape, v)) in &merged {
            assert_eq!(shape, &base[n].0, "{n}");
            for (i, x) in v.iter().enumerate() {
                // Rows of the model beyond its own vocabulary are the base's.
                let theirs = if i < rows_of_ft1 * hidden
                    || base[n].0.len() != 2
                    || !(n.ends_with("embed_tokens.weight") || n == "lm_head.weight")
                {
                    ft1[n].1[i]
                } else {
                    base[n].1[i]
                };
                let want = 0.5 * base[n].1[i] + 0.5 * theirs;
                assert!((x - want).abs() <= 1e-6, "{n}[{i}]: {x} vs {want}");
            }
        }
    }
}

/// `lora quantize` then `lora generate` on its output: the tokens of the source folder loaded with
/// `--quantize nf4-dq` (the same codes), and `inspect` names the quantization; an existing OUT is
/// refused without --force.
#[test]
fn quantize_writes_a_four_bit_folder_that_generates_as_nf4() {
    let d = temp_dir("quantize-cli");
    let src = fixtures().join("models/llama");
    let out = d.join("q4");
    let o = lora(&["quantize", src.to_str().unwrap(), "-o", out.to_str().unwrap(), "--double-quant"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let generate = |args: &[&str]| {
        let mut all = vec!["generate", "--prompt", "The quick", "--max-new-tokens", "6"];
        all.extend_from_slice(args);
        let o = lora(&all);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    assert_eq!(
        generate(&["--model", out.to_str().unwrap()]),
        generate(&["--model", src.to_str().unwrap(), "--quantize", "nf4-dq"])
    );
    let o = lora(&["inspect", out.to_str().unwrap()]);
    assert!(stdout(&o).contains("bitsandbytes 4-bit NF4, double-quantized scales"), "{}", stdout(&o));
    let o = lora(&["quantize", src.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
}

/// A PEFT DoRA adapter through the CLI: `inspect` says what it is, `lora merge --check` folds it and
/// finds the folded model equal to base + adapter run unmerged, and `lora export` of the adapter itself
/// says to export the merged model instead, writing nothing.
#[test]
fn dora_adapters_inspect_fold_check_and_refuse_gguf() {
    let fx = fixtures();
    let (base, dora) = (fx.join("models/llama"), fx.join("lora/dora/adapter"));
    let o = lora(&["inspect", s(&dora)]);
    assert!(o.status.success() && stdout(&o).contains("PEFT DoRA"), "{}", stdout(&o));
    let d = temp_dir("dora-cli");
    let out = d.join("merged");
    let o = lora(&["merge", s(&base), s(&dora), "-o", s(&out), "--check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("greedy tokens agree"), "{}", stdout(&o));
    let gguf = d.join("dora.gguf");
    let o = lora(&["export", s(&dora), "--base", s(&base), "-o", s(&gguf)]);
    assert_user_error(&o, "export the merged model");
    assert!(!gguf.exists());
}
