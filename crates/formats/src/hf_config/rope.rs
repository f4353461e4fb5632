//! Rotary position embeddings as config.json describes them: `rope_theta` / `rope_scaling`
//! (transformers 4) or `rope_parameters` (transformers 5).

use serde_json::Value;

use super::hf::HfConfig;

/// The frequency schedule of rotary position embeddings.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        /// Overall stretch of low frequencies.
        factor: f64,
        /// Wavelength boundary (in units of the original context) below which frequencies are stretched.
        low_freq_factor: f64,
        /// Wavelength boundary above which frequencies are kept.
        high_freq_factor: f64,
        /// The context length of pre-training.
        original_max_position_embeddings: f64,
    },
    /// Divisors of each inverse frequency, as GGUF files store Llama 3.1's schedule
    /// (`rope_freqs.weight`, one per pair of channels).
    Factors(Vec<f32>),
}

/// A number under `table`, if present: a value of any other type is an error naming the key, never
/// a silent default (a `rope_theta` written as a string would change every logit).
fn number(p: &Value, table: &str, key: &str) -> std::result::Result<Option<f64>, String> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| format!("{table}.{key} must be a number, not {v}")),
    }
}

/// RoPE's base, schedule and, when `rope_parameters` gives one, its `partial_rotary_factor`. Qwen3.5's
/// M-RoPE keys (`mrope_section`, `mrope_interleaved`) are accepted: with text-only positions the
/// three position rows are equal, and interleaved M-RoPE is ordinary rotate-half RoPE on the
/// rotary channels.
pub(super) fn resolve_rope(hf: &HfConfig) -> std::result::Result<(f64, RopeScaling, Option<f64>), String> {
    // transformers 5 keeps everything in rope_parameters; transformers 4 splits rope_theta / rope_scaling.
    let (table, params) = match (&hf.rope_parameters, &hf.rope_scaling) {
        (Some(p), _) if !p.is_null() => ("rope_parameters", Some(p)),
        (_, Some(s)) if !s.is_null() => ("rope_scaling", Some(s)),
        _ => ("", None),
    };
    let Some(p) = params else {
        return Ok((hf.rope_theta.unwrap_or(10000.0), RopeScaling::Default, None));
    };
    if !p.is_object() {
        return Err(format!("{table} must be an object, not {p}"));
    }
    let theta = number(p, table, "rope_theta")?.or(hf.rope_theta).unwrap_or(10000.0);
    let partial = number(p, table, "partial_rotary_factor")?;
    let kind = match p.get("rope_type").or_else(|| p.get("type")) {
        None | Some(Value::Null) => "default",
        Some(Value::String(s)) => s.as_str(),
        Some(v) => return Err(format!("{table}.rope_type must be a string, not {v}")),
    };
    let num = |key: &str| -> std::result::Result<f64, String> {
        number(p, table, key)?.ok_or_else(|| format!("rope type '{kind}' needs a numeric '{table}.{key}'"))
    };
    match kind {
        "default" => Ok((theta, RopeScaling::Default, partial)),
        "llama3" => Ok((
            theta,
            RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            },
            partial,
        )),
        other => Err(format!("rope type '{other}' is not supported; lora supports 'default' and 'llama3'")),
    }
}
