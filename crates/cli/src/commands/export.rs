//! `lora export`: a PEFT adapter as a llama.cpp / Ollama LoRA adapter (GGUF).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lora_merge::export_adapter_gguf;
use lora_merge::gguf::GgmlType;

use crate::probe::{judge, probe_logits};

/// Export a PEFT adapter as a llama.cpp / Ollama LoRA adapter, or a whole model folder as a GGUF model.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  lora export runs/my-run --base models/llama -o my-run.gguf\n  llama-cli -m base.gguf --lora my-run.gguf"
)]
pub struct Args {
    /// A PEFT adapter folder (adapter_config.json, adapter_model.safetensors), or a Hugging Face model
    /// folder (config.json, safetensors, tokenizer.json) to write as a whole GGUF model.
    adapter: PathBuf,
    /// The base the adapter was trained on: a model folder (config.json) or a GGUF model file; default:
    /// the adapter's base_model_name_or_path when it is a local folder.
    #[arg(long)]
    base: Option<PathBuf>,
    /// The output .gguf file (written under a temporary name, then renamed).
    #[arg(short, long)]
    out: PathBuf,
    /// Tensor type: f32, f16, bf16 or q8_0 (tensors whose rows are not whole Q8_0 blocks stay f16).
    #[arg(long = "type", default_value = "f16", value_parser = ["f32", "f16", "bf16", "q8_0"])]
    ggml_type: String,
    /// Replace OUT (and its Modelfile) if they exist.
    #[arg(long)]
    force: bool,
    /// Skip the check that the written file gives the adapter's logits.
    #[arg(long)]
    no_check: bool,
}

/// Runs `lora export`.
pub fn run(a: Args) -> Result<()> {
    if !a.adapter.join("adapter_config.json").is_file() && a.adapter.join("config.json").is_file() {
        return export_model(&a);
    }
    let base = match a.base {
        Some(b) => b,
        None => {
            let cfg = lora_merge::AdapterConfig::load(&a.adapter.join("adapter_config.json"))?;
            let named = cfg.base_model_name_or_path.map(PathBuf::from);
            named.filter(|p| p.join("config.json").is_file()).with_context(|| {
                format!("{}: its base_model_name_or_path is not a local model folder; pass --base", a.adapter.display())
            })?
        }
    };
    let t = ggml_type(&a.ggml_type);
    refuse_existing(&a.out, a.force)?;
    let staged = staging(&a.out);
    let r = export_adapter_gguf(&a.adapter, &base, &staged, t, true)?;
    if !a.no_check {
        match check(&a.adapter, &base, &staged, t) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                let _ = std::fs::remove_file(&staged);
                return Err(
                    e.context(format!("{}: the export does not behave as the adapter; removed", a.out.display()))
                );
            }
        }
    }
    publish(&staged, &a.out)?;
    let modelfile = write_modelfile(&base, &a.out, &r.architecture, a.force)?;
    for f in &r.fallbacks {
        println!("{f}: rows are not whole Q8_0 blocks of 32 values; written as F16");
    }
    println!(
        "{}: {} modules as {}, adapter.lora.alpha = {}{}",
        a.out.display(),
        r.modules,
        t.name(),
        r.alpha,
        if r.folded > 0 {
            format!(" ({} modules with their own scale folded into B)", r.folded)
        } else {
            String::new()
        }
    );
    if let Some(m) = modelfile {
        let name = a.out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        println!(
            "Ollama: ollama create {name} -f {}    (llama.cpp: llama-cli -m BASE.gguf --lora {})",
            m.display(),
            a.out.display()
        );
    }
    Ok(())
}

fn ggml_type(name: &str) -> GgmlType {
    match name {
        "f32" => GgmlType::F32,
        "bf16" => GgmlType::Bf16,
        "q8_0" => GgmlType::Q8_0,
        _ => GgmlType::F16,
    }
}

/// Allowed drift of logits relative to their size, per tensor type.
fn tolerance(t: GgmlType) -> f32 {
    match t {
        GgmlType::F32 => 1e-5,
        GgmlType::F16 => 2e-3,
        GgmlType::Bf16 => 1e-2,
        _ => 2e-2,
    }
}

/// `lora export MODEL_DIR -o model.gguf`: the whole model, checked against the folder.
fn export_model(a: &Args) -> Result<()> {
    let t = ggml_type(&a.ggml_type);
    refuse_existing(&a.out, a.force)?;
    let staged = staging(&a.out);
    let r = lora_merge::export_model_gguf(&a.adapter, &staged, t, true)?;
    if !a.no_check {
        let device = lora_core::default_device();
        let check = || -> Result<String> {
            let folder = lora_core::CausalLm::load_dir(&a.adapter, &device)?;
            let vocab = folder.config.vocab_size;
            let want = probe_logits(&folder)?;
            drop(folder);
            let got = probe_logits(&lora_core::CausalLm::load_dir(&staged, &device)?)?;
            judge("GGUF vs folder", &want, &got, vocab, tolerance(t))
        };
        match check() {
            Ok(line) => println!("{line}"),
            Err(e) => {
                let _ = std::fs::remove_file(&staged);
                anyhow::bail!("{}: the exported model does not behave as the folder ({e:#}); removed", a.out.display());
            }
        }
    }
    publish(&staged, &a.out)?;
    let stem = a.out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let modelfile = a.out.with_file_name(format!("{stem}.Modelfile"));
    if !modelfile.exists() || a.force {
        let abs = std::fs::canonicalize(&a.out).unwrap_or_else(|_| a.out.clone());
        std::fs::write(
            &modelfile,
            format!(
                "# Ollama: ollama create {stem} -f {}\nFROM {}\n{}",
                modelfile.display(),
                abs.display(),
                chat_lines(&r.architecture)
            ),
        )
        .with_context(|| format!("writing {}", modelfile.display()))?;
    }
    println!(
        "{}: {} model, {} tensors as {} (pre-tokenizer {}); Ollama: ollama create {stem} -f {}",
        a.out.display(),
        r.architecture,
        r.tensors,
        t.name(),
        r.pre,
        modelfile.display()
    );
    Ok(())
}

/// OUT exists and `--force` was not given: refused before anything is written.
fn refuse_existing(out: &Path, force: bool) -> Result<()> {
    anyhow::ensure!(force || !out.exists(), "{}: the output exists; pass --force to replace it", out.display());
    Ok(())
}

/// The hidden name an export is written and checked under (`.NAME.unchecked.gguf` beside OUT), so
/// that OUT appears only once complete and checked: a failed check, an error or a `kill -9` leaves
/// at most this file, which the next export replaces.
fn staging(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    out.with_file_name(format!(".{name}.unchecked.gguf"))
}

/// Gives the checked file OUT's name (a rename on the same file system: atomic).
fn publish(staged: &Path, out: &Path) -> Result<()> {
    std::fs::rename(staged, out).with_context(|| format!("renaming {} to {}", staged.display(), out.display()))
}

/// Runs fixed probe sequences through the base with the PEFT adapter and with the written GGUF read
/// back by lora's own reader; the largest logit difference must stay within what the tensor type
/// allows, relative to the logits' size.
fn check(adapter: &Path, base: &Path, out: &Path, t: GgmlType) -> Result<String> {
    let device = lora_core::default_device();
    // One model at a time: the base is loaded again for the second adapter.
    let logits = |with: &Path| -> Result<(Vec<f32>, usize)> {
        let mut model = lora_core::CausalLm::load_dir(base, &device)?;
        lora_core::adapter::load_adapter(&mut model, with, 1.0, false)?;
        Ok((probe_logits(&model)?, model.config.vocab_size))
    };
    let ((want, vocab), (got, _)) = (logits(adapter)?, logits(out)?);
    judge("base + GGUF adapter vs base + PEFT adapter", &want, &got, vocab, tolerance(t))
}

/// An Ollama Modelfile beside the adapter: `FROM` the base, `ADAPTER` the file.
fn write_modelfile(base: &Path, out: &Path, architecture: &str, force: bool) -> Result<Option<PathBuf>> {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "adapter".into());
    let path = out.with_file_name(format!("{stem}.Modelfile"));
    if path.exists() && !force {
        println!("{}: exists; not replaced (pass --force)", path.display());
        return Ok(None);
    }
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let text = format!(
        "# Ollama: ollama create {stem} -f {}\n# FROM is the base the adapter was trained on (a GGUF file, or a safetensors folder Ollama can import).\nFROM {}\nADAPTER {}\n{}",
        path.display(),
        abs(base).display(),
        abs(out).display(),
        chat_lines(architecture)
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(path))
}

/// Qwen3.5's chat format for Ollama: ChatML, with the assistant's reasoning inside `<think>` …
/// `</think>` (kept for the last turn only, as Qwen's template drops it from earlier ones) and the
/// generation prompt opening a `<think>` block, or an empty one when thinking is turned off
/// (`think: false`), as Qwen3.5's own template does with `enable_thinking`.
const QWEN35_OLLAMA: &str = r#"TEMPLATE """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if and $last .Thinking }}<think>
{{ .Thinking }}
</think>

{{ end }}{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ if and $.IsThinkSet (not $.Think) }}<think>

</think>

{{ else }}<think>
{{ end }}
{{- end }}
{{- end }}"""
PARAMETER stop "<|im_end|>"
PARAMETER stop "<|endoftext|>"
"#;

/// The Modelfile lines that give Ollama an architecture's chat format, where Ollama would not find
/// it from the GGUF alone: Qwen3.5's (`qwen35`); none for the others.
fn chat_lines(architecture: &str) -> &'static str {
    if lora_merge::gguf::qwen35::is_qwen35(architecture) { QWEN35_OLLAMA } else { "" }
}
