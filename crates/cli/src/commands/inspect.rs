//! `lora inspect`: what a model folder or safetensors file holds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use lora_core::ModelConfig;
use lora_core::io::weights::Weights;
use lora_formats::safetensors::SafetensorsFile;
use serde_json::json;

/// Show what a model (a folder, a .safetensors or a .gguf file) or a PEFT adapter holds: architecture, parameters, dtypes, tensors.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model folder, a .safetensors file, a .gguf file, or a PEFT adapter folder.
    path: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// With an adapter: the base model folder to check it against (which checkpoint form the
    /// adapter names, and whether every module it adapts exists in the base).
    #[arg(long, value_name = "MODEL_DIR")]
    base: Option<PathBuf>,
}

struct Row {
    name: String,
    shape: Vec<usize>,
    dtype: String,
}

/// Runs `lora inspect`.
pub fn run(a: Args) -> Result<()> {
    let path = &a.path;
    if !path.exists() {
        bail!("{}: no such file or folder", path.display());
    }
    if crate::model_args::is_gguf_file(path) {
        return inspect_gguf(path, a.json);
    }
    let adapter_cfg = path.join("adapter_config.json");
    if path.is_dir() && adapter_cfg.is_file() {
        return inspect_adapter(path, &adapter_cfg, a.json, a.base.as_deref());
    }
    let (files, config) = if path.is_dir() {
        let w = Weights::open_dir(path)?;
        let files: Vec<PathBuf> = w.files().iter().map(|f| f.path().to_path_buf()).collect();
        let cfg_path = path.join("config.json");
        let config = cfg_path.is_file().then(|| ModelConfig::from_file(&cfg_path));
        (files, config)
    } else {
        (vec![path.clone()], None)
    };
    let mut rows = Vec::new();
    for f in &files {
        let st = SafetensorsFile::open(f)?;
        for (name, info) in st.tensors() {
            rows.push(Row { name: name.clone(), shape: info.shape.clone(), dtype: format!("{:?}", info.dtype) });
        }
    }
    rows.sort_by(|a, b| natural_key(&a.name).cmp(&natural_key(&b.name)));
    let params: usize = rows.iter().map(|r| r.shape.iter().product::<usize>()).sum();
    let mut dtypes: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rows {
        *dtypes.entry(r.dtype.as_str()).or_default() += 1;
    }
    let arch = match &config {
        Some(Ok(c)) => Some(describe(c)),
        Some(Err(e)) => Some(format!("not loadable by lora: {e}")),
        None => None,
    };
    let family = match &config {
        Some(Ok(c)) => Some(family(c)),
        _ => None,
    };
    let four_bit = four_bit_summary(&rows, config.as_ref().and_then(|c| c.as_ref().ok()));
    if a.json {
        let v = json!({
            "path": path,
            "architecture": arch,
            "family": family,
            "four_bit": four_bit,
            "parameters": params,
            "dtypes": dtypes,
            "files": files,
            "tensors": rows.iter().map(|r| json!({"name": r.name, "shape": r.shape, "dtype": r.dtype})).collect::<Vec<_>>(),
        });
        return emit(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    let mut o = String::new();
    let _ = writeln!(o, "path:         {}", path.display());
    if let Some(arch) = arch {
        let _ = writeln!(o, "architecture: {arch}");
    }
    if let Some(family) = family {
        let _ = writeln!(o, "family:       {family}");
    }
    if let Some(q) = &four_bit {
        let _ = writeln!(o, "4-bit:        {q}");
    }
    let _ = writeln!(o, "parameters:   {} ({})", group(params), human(params));
    let d: Vec<String> = dtypes.iter().map(|(k, v)| format!("{k} ({v} tensors)")).collect();
    let _ = writeln!(o, "dtypes:       {}", d.join(", "));
    let names: Vec<String> = files.iter().map(|f| file_name(f)).collect();
    let _ = writeln!(o, "files:        {}", names.join(", "));
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(o, "\n{:<w$}  {:<16}  dtype", "name", "shape");
    for r in &rows {
        let _ = writeln!(o, "{:<w$}  {:<16}  {}", r.name, format!("{:?}", r.shape), r.dtype);
    }
    emit(&o)
}

/// A GGUF file: its metadata (arrays summarised), what lora makes of it, and its tensors.
fn inspect_gguf(path: &Path, as_json: bool) -> Result<()> {
    let g = lora_merge::gguf::GgufFile::open(path)?;
    let (arch, family) = match g.get("general.type").and_then(lora_merge::gguf::Value::as_str) {
        Some("adapter") => (Ok("a LoRA adapter (general.type = adapter)".to_string()), None),
        _ => match lora_core::io::gguf::model::config(&g) {
            Ok(c) => (Ok(describe(&c)), Some(family(&c))),
            Err(e) => (Err(e), None),
        },
    };
    let arch = arch.unwrap_or_else(|e| format!("not loadable by lora: {e}"));
    let params: u64 = g.tensors.iter().map(|t| t.numel()).sum();
    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    for t in &g.tensors {
        *types.entry(lora_merge::gguf::GgmlType::name_of_id(t.type_id)).or_default() += 1;
    }
    if as_json {
        let meta: serde_json::Map<String, serde_json::Value> =
            g.metadata.iter().map(|(k, v)| (k.clone(), json!(v.to_string()))).collect();
        let v = json!({
            "path": path,
            "format": format!("GGUF v{}", g.version),
            "architecture": arch,
            "family": family,
            "parameters": params,
            "types": types,
            "metadata": meta,
            "tensors": g.tensors.iter().map(|t| json!({
                "name": t.name, "shape": t.shape(), "type": lora_merge::gguf::GgmlType::name_of_id(t.type_id)
            })).collect::<Vec<_>>(),
        });
        return emit(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    let mut o = String::new();
    let _ = writeln!(o, "path:         {} (GGUF v{})", path.display(), g.version);
    let _ = writeln!(o, "architecture: {arch}");
    if let Some(family) = family {
        let _ = writeln!(o, "family:       {family}");
    }
    let _ = writeln!(o, "parameters:   {} ({})", group(params as usize), human(params as usize));
    let d: Vec<String> = types.iter().map(|(k, v)| format!("{k} ({v} tensors)")).collect();
    let _ = writeln!(o, "types:        {}", d.join(", "));
    let _ = writeln!(o, "\nmetadata:");
    for (k, v) in &g.metadata {
        let text = v.to_string();
        let text = if text.len() > 100 {
            format!("{}... ({} bytes)", &text[..text.floor_char_boundary(100)], text.len())
        } else {
            text
        };
        let _ = writeln!(o, "  {k} = {}", text.replace('\n', "\\n"));
    }
    let w = g.tensors.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(o, "\n{:<w$}  {:<16}  type", "name", "shape");
    for t in &g.tensors {
        let _ = writeln!(
            o,
            "{:<w$}  {:<16}  {}",
            t.name,
            format!("{:?}", t.shape()),
            lora_merge::gguf::GgmlType::name_of_id(t.type_id)
        );
    }
    emit(&o)
}

/// What a folder holds in bitsandbytes 4 bit: how many weights, and how many of them lie outside
/// the language model in parts the architecture carries but never runs (a vision tower, which
/// transformers' 4-bit save quantizes too). `None` when nothing is 4-bit.
fn four_bit_summary(rows: &[Row], config: Option<&ModelConfig>) -> Option<String> {
    let suffix = lora_formats::bnb4bit::NF4_STATE;
    let weights: Vec<&str> = rows.iter().filter_map(|r| r.name.strip_suffix(suffix)).collect();
    if weights.is_empty() {
        return None;
    }
    let carried: &[&str] = config.map_or(&[], |c| c.architecture.spec().carried);
    let outside: Vec<&str> = weights.iter().copied().filter(|w| carried.iter().any(|p| w.starts_with(p))).collect();
    let mut out = format!("{} weights in NF4", weights.len());
    if !outside.is_empty() {
        let mut parts: Vec<&str> =
            carried.iter().copied().filter(|p| outside.iter().any(|w| w.starts_with(p))).collect();
        parts.dedup();
        out += &format!(
            ", {} of them in parts lora carries but never runs ({})",
            outside.len(),
            parts.iter().map(|p| p.trim_end_matches('.')).collect::<Vec<_>>().join(", ")
        );
    }
    Some(out)
}

/// Which checkpoint form an adapter's module paths name, and whether every module exists in the
/// base folder `base` (as named, or under the mapping lora applies between Qwen3.5's two forms).
fn against_base(modules: &BTreeMap<String, (usize, usize, usize)>, base: &Path) -> Result<(String, String)> {
    let model = lora_merge::ModelDir::open(base)?;
    let layout = if modules.keys().all(|m| m.starts_with("model.language_model.")) {
        "Hub form (model.language_model.layers.N…)"
    } else if modules.keys().all(|m| m.starts_with("model.layers.")) {
        "text form (model.layers.N…)"
    } else {
        "mixed or other module paths"
    };
    let weights: Vec<String> = modules.keys().map(|m| format!("{m}.weight")).collect();
    let exists = |t: &str| model.get(t).is_some();
    let covers = if weights.iter().all(|t| exists(t)) {
        format!("covers {}: every module exists as named", base.display())
    } else if let Some(r) = lora_formats::hf_config::Relayout::find(weights.iter().map(String::as_str), exists) {
        format!("covers {} with its names mapped: {}", base.display(), r.describe())
    } else {
        let missing: Vec<&str> =
            modules.keys().zip(&weights).filter(|(_, t)| !exists(t)).map(|(m, _)| m.as_str()).collect();
        format!(
            "does not cover {}: {} of {} modules are not in it (first: {})",
            base.display(),
            missing.len(),
            modules.len(),
            missing[0]
        )
    };
    Ok((layout.to_string(), covers))
}

/// The architecture's declaration in one line (README's table reads the same declarations):
/// `model_type: models; blocks; GGUF`.
fn family(c: &ModelConfig) -> String {
    let spec = c.architecture.spec();
    let mut mixers: Vec<&str> = Vec::new();
    for m in &c.mixers {
        if !mixers.contains(&m.name()) {
            mixers.push(m.name());
        }
    }
    format!(
        "{}: {}; blocks: {}, {}; GGUF: {}",
        spec.model_type,
        spec.models,
        mixers.join(" + "),
        c.feed_forward.name(),
        spec.gguf.unwrap_or("not yet")
    )
}

/// One line about a configuration.
fn describe(c: &ModelConfig) -> String {
    format!(
        "{} ({} layers, hidden {}, heads {}/{} kv, head_dim {}, intermediate {}, vocab {}{})",
        c.checkpoint_class(),
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.intermediate_size,
        c.vocab_size,
        if c.tie_word_embeddings { ", tied embeddings" } else { "" }
    ) + &mixers(c)
        + &experts(c)
        + &c.quantization
            .as_ref()
            .map(|q| {
                format!(
                    "; bitsandbytes 4-bit NF4{}{}",
                    if q.double_quant { ", double-quantized scales" } else { "" },
                    if q.skip_modules.is_empty() {
                        String::new()
                    } else {
                        format!(", unquantized: {}", q.skip_modules.join(", "))
                    }
                )
            })
            .unwrap_or_default()
}

/// The routed experts of an MoE model (`; experts: 128 of 768 in 48 of 48 layers, top 8
/// renormalised`, and a shared expert); empty otherwise.
fn experts(c: &ModelConfig) -> String {
    let Some(m) = &c.moe else { return String::new() };
    let sparse = m.sparse.iter().filter(|&&s| s).count();
    format!(
        "; experts: {} of {} in {sparse} of {} layers, top {}{}{}",
        m.num_experts,
        m.intermediate_size,
        m.sparse.len(),
        m.top_k,
        if m.renormalize { " renormalised" } else { "" },
        m.shared_expert.map(|s| format!(", a shared expert of {s}")).unwrap_or_default()
    )
}

/// The layer pattern of a model whose layers are not all plain attention (Qwen3.5: `; layers:
/// 3× gated deltanet, gated attention, ...`), run-length encoded; empty otherwise.
fn mixers(c: &ModelConfig) -> String {
    if !c.is_hybrid() {
        return String::new();
    }
    let mut runs: Vec<(lora_core::network::config::TokenMixer, usize)> = Vec::new();
    for &m in &c.mixers {
        match runs.last_mut() {
            Some((last, n)) if *last == m => *n += 1,
            _ => runs.push((m, 1)),
        }
    }
    let parts: Vec<String> =
        runs.iter().map(|(m, n)| if *n == 1 { m.name().to_string() } else { format!("{n}× {}", m.name()) }).collect();
    let mut out = format!("; layers: {}", parts.join(", "));
    if let Some(l) = &c.linear_attention {
        out += &format!(
            "; Gated DeltaNet {}/{} heads of {}/{}, conv {}",
            l.num_key_heads, l.num_value_heads, l.key_head_dim, l.value_head_dim, l.conv_kernel
        );
    }
    out
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Sorts `layers.10` after `layers.9`.
fn natural_key(name: &str) -> Vec<(u64, String)> {
    name.split('.').map(|part| (part.parse::<u64>().unwrap_or(u64::MAX), part.to_string())).collect()
}

fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.2}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// Writes to stdout, returning (rather than panicking on) a closed pipe.
fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// A PEFT adapter folder: rank, alpha, scaling, targets, modules and parameters.
fn inspect_adapter(dir: &Path, cfg_path: &Path, json_out: bool, base: Option<&Path>) -> Result<()> {
    let cfg = lora_core::adapter::config::AdapterConfig::load(cfg_path)?;
    let weights = dir.join("adapter_model.safetensors");
    let st = SafetensorsFile::open(&weights)?;
    let mut modules: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new(); // module -> (r, in, out)
    let mut params = 0usize;
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for (name, info) in st.tensors() {
        params += info.shape.iter().product::<usize>();
        *dtypes.entry(format!("{:?}", info.dtype)).or_default() += 1;
        let inner = name.strip_prefix(lora_core::adapter::PEFT_PREFIX).unwrap_or(name);
        if let Some(m) = inner.strip_suffix(".lora_A.weight") {
            let e = modules.entry(m.to_string()).or_default();
            (e.0, e.1) = (info.shape[0], info.shape.get(1).copied().unwrap_or(0));
        } else if let Some(m) = inner.strip_suffix(".lora_B.weight") {
            modules.entry(m.to_string()).or_default().2 = info.shape[0];
        }
    }
    let targets = match &cfg.target_modules {
        Some(lora_core::adapter::config::TargetModules::Names(n)) => n.join(", "),
        Some(lora_core::adapter::config::TargetModules::Pattern(p)) => p.clone(),
        None => "-".into(),
    };
    let scaling = lora_core::network::lora::lora_scaling(cfg.lora_alpha, cfg.r, cfg.use_rslora);
    let against = base.map(|b| against_base(&modules, b)).transpose()?;
    if json_out {
        let mut v = json!({
            "path": dir, "kind": "peft-lora-adapter", "base_model": cfg.base_model_name_or_path,
            "r": cfg.r, "lora_alpha": cfg.lora_alpha, "use_rslora": cfg.use_rslora, "scaling": scaling,
            "target_modules": targets, "modules": modules.len(), "parameters": params, "dtypes": dtypes,
        });
        if let Some((layout, covers)) = &against {
            v["layout"] = json!(layout);
            v["covers_base"] = json!(covers);
        }
        return emit(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    let mut o = String::new();
    let _ = writeln!(o, "path:         {}", dir.display());
    let variant = if cfg.use_dora { "DoRA (magnitude vectors per module)" } else { "LoRA" };
    let _ = writeln!(o, "kind:         PEFT {variant} adapter ({})", cfg.task_type.as_deref().unwrap_or("-"));
    let _ = writeln!(o, "base model:   {}", cfg.base_model_name_or_path.as_deref().unwrap_or("-"));
    let _ = writeln!(
        o,
        "rank:         r = {}, alpha = {}{}, scaling {scaling}",
        cfg.r,
        cfg.lora_alpha,
        if cfg.use_rslora { " (rsLoRA)" } else { "" }
    );
    let _ = writeln!(o, "targets:      {targets} ({} modules)", modules.len());
    let _ = writeln!(o, "parameters:   {} ({})", group(params), human(params));
    let d: Vec<String> = dtypes.iter().map(|(k, v)| format!("{k} ({v} tensors)")).collect();
    let _ = writeln!(o, "dtypes:       {}", d.join(", "));
    if let Some((layout, covers)) = &against {
        let _ = writeln!(o, "layout:       {layout}");
        let _ = writeln!(o, "base:         {covers}");
    }
    let w = modules.keys().map(String::len).max().unwrap_or(6).max(6);
    let _ = writeln!(o, "\n{:<w$}  r    in     out", "module");
    for (m, (r, i, out)) in &modules {
        let _ = writeln!(o, "{m:<w$}  {r:<4} {i:<6} {out}");
    }
    emit(&o)
}
