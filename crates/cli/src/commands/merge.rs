//! `lora merge`: fold PEFT adapters into their base, or run a model merge from a mergekit
//! configuration (mergekit's YAML, or the same keys in TOML).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use lora_merge::recipe::Syntax;
use lora_merge::safetensors::parse_size;
use lora_merge::{DType, FoldOptions, MergeConfig, MergeOptions, fold_adapters, merge_with_config};

/// Fold PEFT adapters into their base model, or merge models from a configuration (TIES, DARE, SLERP, ...).
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  lora merge BASE ADAPTER1 ADAPTER2 --weights 1,0.5 -o OUT\n  lora merge --config mergekit_config.yml -o OUT"
)]
pub struct Args {
    /// The base model folder, then one or more PEFT adapter folders to fold into it.
    #[arg(value_name = "BASE ADAPTER...")]
    paths: Vec<PathBuf>,
    /// A model merge: mergekit's configuration (merge_method, base_model, models, ...), as mergekit's
    /// YAML (.yml, .yaml) or in TOML.
    #[arg(long, conflicts_with_all = ["weights"])]
    config: Option<PathBuf>,
    /// The output folder (written beside as a temporary folder, then renamed).
    #[arg(short, long)]
    out: PathBuf,
    /// One weight per adapter, comma-separated (default 1 each).
    #[arg(long, value_delimiter = ',')]
    weights: Option<Vec<f64>>,
    /// Output dtype of the float tensors: f32, f16 or bf16 (default: the base's).
    #[arg(long)]
    dtype: Option<String>,
    /// Largest shard, e.g. 5GB, 500MB (more than one shard adds model.safetensors.index.json).
    #[arg(long, default_value = "5GB")]
    shard_size: String,
    /// Replace OUT if it exists.
    #[arg(long)]
    force: bool,
    /// Write NaN/inf results instead of failing on them.
    #[arg(long)]
    allow_nonfinite: bool,
    /// Fold into the weights a QLoRA adapter was trained against: every decoder linear layer becomes
    /// dequant(NF4(W)) + ΔW (bitsandbytes' NF4; nf4-dq: double-quantized scales). Without it, adapters
    /// fold into the original weights, as PEFT's merge_and_unload does.
    #[arg(long, value_parser = ["nf4", "nf4-dq"], conflicts_with = "config")]
    quantized_base: Option<String>,
    /// Seed of the random methods (DARE, DELLA); overrides the configuration's random_seed.
    #[arg(long)]
    seed: Option<u64>,
    /// After writing, run fixed probe sequences through BASE with the adapters attached (unmerged,
    /// with their weights) and through OUT; print the largest logit difference and whether greedy
    /// tokens agree. A drift beyond what OUT's dtype explains is an error and OUT is removed.
    #[arg(long, conflicts_with = "config")]
    check: bool,
    /// Never touch the network: Hub ids (as BASE or ADAPTER, or as models of a configuration) must be
    /// in the Hugging Face cache.
    #[arg(long)]
    offline: bool,
}

/// Runs `lora merge`.
pub fn run(a: Args) -> Result<()> {
    let shard_size = parse_size(&a.shard_size)
        .with_context(|| format!("--shard-size '{}': expected a size such as 5GB or 500MB", a.shard_size))?;
    let started = Instant::now();
    if let Some(config) = &a.config {
        if !a.paths.is_empty() {
            bail!("--config takes no BASE/ADAPTER arguments (the models are listed in {})", config.display());
        }
        if a.dtype.is_some() {
            bail!("with --config, set the output dtype with `out_dtype` in {}", config.display());
        }
        let opts = MergeOptions { shard_size, force: a.force, allow_nonfinite: a.allow_nonfinite, seed: a.seed };
        let (mut cfg, text) = MergeConfig::load(config)?;
        let dir = config.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        resolve_hub_models(&mut cfg, dir, a.offline)?;
        // The configuration is kept beside the output as written (Hub ids and all), as mergekit does.
        let r = lora_merge::safetensors::catch_read_failures(|| {
            merge_with_config(&cfg, dir, &a.out, &opts, (Syntax::of(config), &text))
        })?;
        let secs = started.elapsed().as_secs_f64();
        for note in &r.vocabulary {
            println!("vocabulary: {note}");
        }
        print_kept_f32(&r.kept_f32);
        println!(
            "{}: {} merge, {} tensors in {}, {:.2} GB read in {secs:.2} s ({:.2} GB/s)",
            r.out.display(),
            r.method,
            r.tensors,
            r.dtype.torch_name(),
            r.bytes_read as f64 / 1e9,
            r.bytes_read as f64 / 1e9 / secs.max(1e-9)
        );
        return Ok(());
    }
    let Some((base, adapters)) = a.paths.split_first() else {
        bail!("give BASE and ADAPTER folders, or --config merge.toml");
    };
    // Hub ids (`org/name[@revision]`) where no such folder exists: from the cache, else downloaded.
    let hub = |p: &PathBuf, model: bool| -> Result<PathBuf> {
        Ok(PathBuf::from(hub_or_path(&p.to_string_lossy(), None, model, a.offline)?))
    };
    let base = &hub(base, true)?;
    let adapters = &adapters.iter().map(|p| hub(p, false)).collect::<Result<Vec<_>>>()?;
    if adapters.is_empty() {
        bail!("give at least one ADAPTER folder after BASE {}", base.display());
    }
    // A GGUF base is written out as a Hugging Face folder (f32, dequantized) beside OUT, folded into,
    // and removed.
    let gguf_tmp = crate::model_args::is_gguf_file(base).then(|| {
        let name = a.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        a.out.with_file_name(format!(".{name}.gguf-base"))
    });
    // Removes the temporary folder however the merge ends (errors and panics included).
    struct Cleanup(Option<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(p) = &self.0 {
                let _ = std::fs::remove_dir_all(p);
            }
        }
    }
    let _cleanup = Cleanup(gguf_tmp.clone());
    if let Some(tmp) = &gguf_tmp {
        if a.out.exists() && !a.force {
            bail!("{}: the output folder exists; pass --force to replace it", a.out.display());
        }
        let _ = std::fs::remove_dir_all(tmp);
        if let Err(e) = lora_core::io::gguf::to_folder::gguf_to_folder(base, tmp) {
            let _ = std::fs::remove_dir_all(tmp);
            return Err(e.into());
        }
        eprintln!("base: {} read as a Hugging Face folder (dequantized to f32) for the fold", base.display());
    }
    // The merged folder of a GGUF base defaults to the file's own precision (f32 for F32 files, f16 for
    // F16, bf16 for BF16 and quantized ones), not to the f32 of the dequantized dump.
    let gguf_dtype = gguf_tmp.as_ref().map(|_| {
        let file_type = lora_merge::gguf::GgufFile::open(base)
            .ok()
            .and_then(|g| g.get("general.file_type").and_then(lora_merge::gguf::Value::as_u64));
        match file_type {
            Some(0) => DType::F32,
            Some(1) => DType::F16,
            _ => DType::BF16,
        }
    });
    let result = fold_into(&a, gguf_tmp.as_deref().unwrap_or(base), adapters, shard_size, started, gguf_dtype);
    if let Some(tmp) = &gguf_tmp {
        let _ = std::fs::remove_dir_all(tmp);
    }
    result
}

fn fold_into(
    a: &Args,
    base: &std::path::Path,
    adapters: &[PathBuf],
    shard_size: u64,
    started: Instant,
    default_dtype: Option<DType>,
) -> Result<()> {
    let dtype = a
        .dtype
        .as_deref()
        .map(|s| DType::from_user(s).with_context(|| format!("--dtype '{s}': use f32, f16 or bf16")))
        .transpose()?
        .or(default_dtype);
    let opts = FoldOptions {
        weights: a.weights.clone(),
        dtype,
        shard_size,
        allow_nonfinite: a.allow_nonfinite,
        force: a.force,
        nf4_base: a.quantized_base.as_deref().map(|q| q == "nf4-dq"),
    };
    let r = fold_adapters(base, adapters, &a.out, &opts)?;
    let secs = started.elapsed().as_secs_f64();
    if a.check {
        match check_fold(a, base, adapters, r.dtype) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&a.out);
                bail!(
                    "{}: the merged model does not behave as the base with its adapters ({e:#}); removed",
                    a.out.display()
                );
            }
        }
    }
    for note in &r.relayouts {
        eprintln!("adapter {note}");
    }
    print_kept_f32(&r.kept_f32);
    println!(
        "{}: {} adapter(s) folded, {} of {} tensors updated ({} replaced), {}, {:.2} GB read in {secs:.2} s",
        r.out.display(),
        adapters.len(),
        r.updated,
        r.tensors,
        r.replaced,
        r.dtype.torch_name(),
        r.bytes_read as f64 / 1e9
    );
    Ok(())
}

/// Names the tensors a dtype conversion left in f32, and why.
fn print_kept_f32(kept: &[String]) {
    if !kept.is_empty() {
        println!(
            "kept in float32 ({} tensors, as the architecture keeps them: rounding them changes the model): {}",
            kept.len(),
            kept.join(", ")
        );
    }
}

/// `s` as given, unless it is no folder here (nor beside the configuration, `config_dir`) and reads
/// as a Hub id (`org/name[@revision]`): then the snapshot folder of that model (`model`) or adapter,
/// from the Hugging Face cache or downloaded into it (never with `offline`).
fn hub_or_path(s: &str, config_dir: Option<&Path>, model: bool, offline: bool) -> Result<String> {
    let local = Path::new(s).exists() || config_dir.is_some_and(|d| d.join(s).exists());
    if s.is_empty() || local || !matches!(lora_hub::Reference::parse(s), Ok(lora_hub::Reference::Hub(_))) {
        return Ok(s.to_string());
    }
    let dir = if model { crate::hub_refs::model(s, offline)? } else { crate::hub_refs::adapter(s, offline)? };
    Ok(dir.to_string_lossy().into_owned())
}

/// Replaces the Hub ids among a configuration's models (published mergekit recipes name models so)
/// by their snapshot folders: each model, and the adapter of a `model+adapter` entry, that is no
/// folder here or beside the configuration but reads as a Hub id, is taken from the Hugging Face
/// cache or downloaded into it (never with `--offline`).
fn resolve_hub_models(cfg: &mut MergeConfig, config_dir: &Path, offline: bool) -> Result<()> {
    let one = |s: &str, model: bool| hub_or_path(s, Some(config_dir), model, offline);
    let entry = |s: &str| -> Result<String> {
        match s.split_once('+') {
            Some((m, ad)) if !ad.is_empty() => Ok(format!("{}+{}", one(m, true)?, one(ad, false)?)),
            _ => one(s, true),
        }
    };
    if let Some(b) = &cfg.base_model {
        cfg.base_model = Some(entry(b)?);
    }
    for m in &mut cfg.models {
        m.model = entry(&m.model)?;
    }
    for slice in &mut cfg.slices {
        for src in &mut slice.sources {
            src.model = entry(&src.model)?;
        }
    }
    if let Some(t) = &cfg.tokenizer_source {
        cfg.tokenizer_source = Some(entry(t)?);
    }
    Ok(())
}

/// `--check`: probe logits of BASE with the adapters attached at their weights (as inference with
/// the unmerged adapters computes them; with `--quantized-base`, on the NF4 base) against OUT's.
fn check_fold(a: &Args, base: &Path, adapters: &[PathBuf], dtype: DType) -> Result<String> {
    let device = lora_core::default_device();
    let mut opts = lora_core::LoadOptions::default();
    if let Some(q) = &a.quantized_base {
        opts.quantize = lora_core::Quantize::Nf4 { double_quant: q == "nf4-dq" };
    }
    let mut model = lora_core::CausalLm::load_dir_with(base, &device, &opts)?;
    let weights = a.weights.clone().unwrap_or_else(|| vec![1.0; adapters.len()]);
    for (adapter, w) in adapters.iter().zip(weights) {
        lora_core::adapter::load_adapter(&mut model, adapter, w, false)?;
    }
    let vocab = model.config.vocab_size;
    let want = crate::probe::probe_logits(&model)?;
    drop(model);
    let got = crate::probe::probe_logits(&lora_core::CausalLm::load_dir(&a.out, &device)?)?;
    // The fold is computed in f32; what is left is OUT's rounding.
    let tol = match dtype {
        DType::F32 | DType::F64 => 1e-4,
        DType::F16 => 5e-3,
        _ => 3e-2,
    };
    crate::probe::judge("merged vs base + adapters", &want, &got, vocab, tol)
}
