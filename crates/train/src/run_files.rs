//! The files of a run folder besides the adapter: `metrics.jsonl`, `loss.svg`, the model card
//! `README.md` and `manifest.json` with the sha256 of every input and of the adapter.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, TrainError};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer step, 1-based.
    pub step: u64,
    /// Mean loss per trained token of the step.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens (padding excluded) per second of wall time.
    pub tokens_per_s: f64,
    /// Validation loss, when evaluated at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// A preference run's metrics of the step, under TRL's names (`rewards/margins`, ...).
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub preference: Option<crate::preference::PreferenceMetrics>,
    /// A data-parallel run's seconds of the step spent in the reductions on this rank (transfers,
    /// and waiting for the slower ranks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm_s: Option<f64>,
}

/// sha256 of a file, in hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| TrainError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// sha256 of bytes, in hex.
pub fn sha256_bytes(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `lora`.
    pub tool: String,
    /// Version of lora that produced the run.
    pub version: String,
    /// Compute backend.
    pub backend: String,
    /// The recipe's seed.
    pub seed: u64,
    /// sha256 of each input file (base weights, config, tokenizer files, data), by path.
    pub inputs: BTreeMap<PathBuf, String>,
    /// sha256 of the produced `adapter_model.safetensors`.
    pub adapter_sha256: String,
    /// The dtype the frozen base was held in while training (`f32`, `bf16`, `f16`).
    #[serde(default)]
    pub base_dtype: String,
    /// How the base's linear layers were stored (`none`, `nf4`, `nf4-dq`): an NF4-trained adapter
    /// is evaluated and merged against the NF4 base.
    #[serde(default)]
    pub base_quantization: String,
    /// Worker threads of the run (`RAYON_NUM_THREADS`, or the cores): on the CPU the adapter is
    /// reproduced byte for byte with the same thread count, so `lora verify` re-runs with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Ranks of a data-parallel run (none: one process); `threads` is then each rank's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_size: Option<usize>,
    /// A data-parallel run's reduction (`exact` or `fast`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_reduce: Option<String>,
}

/// Files of the base model that determine the numbers.
pub fn model_input_files(dir: &Path) -> Vec<PathBuf> {
    if dir.is_file() {
        // A GGUF model file, and a tokenizer.json beside it when training uses that one.
        let mut files = vec![dir.to_path_buf()];
        let tok = dir.parent().map(|p| p.join("tokenizer.json"));
        files.extend(tok.filter(|t| t.is_file()));
        return files;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    name.ends_with(".safetensors")
                        || matches!(
                            name.as_str(),
                            "config.json"
                                | "model.safetensors.index.json"
                                | "tokenizer.json"
                                | "tokenizer_config.json"
                                | "generation_config.json"
                                | "chat_template.jinja"
                        )
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Appends one line to `metrics.jsonl`.
pub fn append_metrics(run: &Path, m: &StepMetrics) -> Result<()> {
    use std::io::Write;
    let path = run.join("metrics.jsonl");
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| TrainError::io(&path, e))?;
    writeln!(f, "{}", serde_json::to_string(m).expect("serializes")).map_err(|e| TrainError::io(&path, e))
}

/// Reads `metrics.jsonl`, keeping steps up to `max_step` (after a resume, later lines are rewritten).
pub fn read_metrics(run: &Path, max_step: u64) -> Vec<StepMetrics> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<StepMetrics>(l).ok())
        .filter(|m| m.step <= max_step)
        // Every preference metric has a default: an SFT line reads as one with none of them.
        .map(|m| StepMetrics { preference: m.preference.filter(|p| !p.is_empty()), ..m })
        .collect()
}

/// Rewrites `metrics.jsonl` with exactly these lines.
pub fn write_metrics(run: &Path, all: &[StepMetrics]) -> Result<()> {
    let text: String = all.iter().map(|m| serde_json::to_string(m).expect("serializes") + "\n").collect();
    lora_core::io::safetensors_write::write_atomic(&run.join("metrics.jsonl"), text.as_bytes()).map_err(Into::into)
}

/// A loss curve (training loss, and validation loss where measured) as a standalone SVG.
pub fn loss_svg(metrics: &[StepMetrics]) -> String {
    let (w, h, pad) = (640.0, 360.0, 48.0);
    let max_step = metrics.iter().map(|m| m.step).max().unwrap_or(1).max(1) as f64;
    let losses: Vec<f64> =
        metrics.iter().flat_map(|m| std::iter::once(m.loss).chain(m.eval_loss)).filter(|l| l.is_finite()).collect();
    let (lo, hi) = losses.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &l| (a.min(l), b.max(l)));
    let (lo, hi) = if lo.is_finite() && hi > lo { (lo, hi) } else { (0.0, lo.max(1.0) + 1.0) };
    let x = |s: u64| pad + (s as f64 / max_step) * (w - 2.0 * pad);
    let y = |l: f64| h - pad - (l - lo) / (hi - lo) * (h - 2.0 * pad);
    let line = |pts: Vec<(f64, f64)>, color: &str| {
        let p: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
        format!("<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>", p.join(" "))
    };
    let train = line(metrics.iter().map(|m| (x(m.step), y(m.loss))).collect(), "#1f77b4");
    let eval = line(metrics.iter().filter_map(|m| m.eval_loss.map(|e| (x(m.step), y(e)))).collect(), "#d62728");
    // A preference run: its reward margin, in green on a scale of its own (right).
    let margins: Vec<(u64, f64)> = metrics
        .iter()
        .filter_map(|m| m.preference.map(|p| (m.step, p.rewards_margins)))
        .filter(|(_, v)| v.is_finite())
        .collect();
    let (margin, legend) = if margins.is_empty() {
        (String::new(), "loss (blue: train, red: validation)".to_string())
    } else {
        let (mlo, mhi) =
            margins.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &(_, v)| (a.min(v), b.max(v)));
        let (mlo, mhi) = if mhi > mlo { (mlo, mhi) } else { (mlo - 1.0, mlo + 1.0) };
        let ym = |v: f64| h - pad - (v - mlo) / (mhi - mlo) * (h - 2.0 * pad);
        let l = line(margins.iter().map(|&(s, v)| (x(s), ym(v))).collect(), "#2ca02c");
        (
            format!(
                "{l}\n<text x=\"{r}\" y=\"{pad}\" text-anchor=\"end\" fill=\"#2ca02c\">{mhi:.3}</text>\
                 <text x=\"{r}\" y=\"{b}\" text-anchor=\"end\" fill=\"#2ca02c\">{mlo:.3}</text>",
                r = w - 4.0,
                b = h - pad,
            ),
            "loss (blue: train, red: validation); green: reward margin (right scale)".to_string(),
        )
    };
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <text x=\"{pad}\" y=\"20\">{legend}</text>\n\
         <text x=\"4\" y=\"{pad}\">{hi:.3}</text><text x=\"4\" y=\"{b}\">{lo:.3}</text>\n\
         <text x=\"{r}\" y=\"{t}\" text-anchor=\"end\">step {max_step}</text>\n{train}\n{eval}\n{margin}\n</svg>\n",
        b = h - pad,
        r = w - pad,
        t = h - pad + 16.0,
    )
}

/// The card's paragraph on a start that moved the base (`[lora] init` PiSSA or OLoRA, rank `r`).
pub fn moving_init_text(init: &str, r: usize) -> String {
    format!(
        "\n\nThe adapter started from `{init}` (PEFT's `init_lora_weights`), which moves the base: it was trained on \
         the residual base and is saved converted, as PEFT's `path_initial_model_for_weight_conversion` does, to a \
         plain LoRA of rank {} (alpha doubled) that applies to the original base.",
        2 * r
    )
}

/// The model card of an adapter, with the YAML front matter the Hub reads.
pub fn model_card(base_model: &str, recipe_toml: &str, data: &str, metrics: &str) -> String {
    format!(
        "---\nbase_model: {base_model}\nlibrary_name: peft\npipeline_tag: text-generation\ntags:\n- lora\n- base_model:adapter:{base_model}\n- lora-rs\n---\n\n\
         # LoRA adapter for {base_model}\n\nTrained with [lora](https://github.com/lora-rs/lora). Load it with PEFT \
         (`PeftModel.from_pretrained(base, path)`) or with `lora generate --adapter`.\n\n\
         ## Data\n\n{data}\n\n## Results\n\n{metrics}\n\n## Recipe\n\n```toml\n{recipe_toml}```\n"
    )
}
