//! bitsandbytes' 4-bit checkpoints, as transformers writes them (`save_pretrained` of a model loaded
//! with `BitsAndBytesConfig(load_in_4bit=True)`, the Hub's `*-bnb-4bit` repositories).
//!
//! A quantized weight `W` of shape `[out, in]` is stored as:
//! - `W`: the packed codes, `uint8 [out·in / 2, 1]`, two per byte, the first in the high nibble;
//! - `W.absmax`: one f32 scale per block of 64 values, or, with double quantization, one `uint8`
//!   index per block into `W.nested_quant_map` (bitsandbytes' dynamic map, `float32 [256]`) scaled by
//!   `W.nested_absmax` (`float32`, one per 256 blocks) plus the quant state's `nested_offset`;
//! - `W.quant_map`: the 16 NF4 code values;
//! - `W.quant_state.bitsandbytes__nf4`: a JSON object in `uint8` bytes: `quant_type`, `blocksize`,
//!   `dtype`, `shape`, and with double quantization `nested_blocksize`, `nested_dtype`,
//!   `nested_offset`.
//!
//! [`read_nf4`] rebuilds the [`Nf4Tensor`] lora's NF4 code uses (the same layout, bit for bit).

use std::borrow::Cow;

use serde::Deserialize;

use crate::dtype::{DType, decode_f32, encode_f32};
use crate::nf4::{Absmax, BLOCK, CODE, DOUBLE_BLOCK, Nf4Tensor, dynamic_map};

/// The suffix of the quant-state tensor of an NF4 weight.
pub const NF4_STATE: &str = ".quant_state.bitsandbytes__nf4";
/// The suffix of the quant-state tensor of an FP4 weight (refused: lora computes NF4).
pub const FP4_STATE: &str = ".quant_state.bitsandbytes__fp4";

/// One stored tensor: its dtype, shape and little-endian bytes.
pub type Stored<'a> = (DType, Vec<usize>, Cow<'a, [u8]>);

/// The quant state's JSON.
#[derive(Debug, Deserialize)]
struct QuantState {
    quant_type: String,
    blocksize: usize,
    dtype: String,
    shape: Vec<usize>,
    #[serde(default)]
    nested_blocksize: Option<usize>,
    #[serde(default)]
    nested_offset: Option<f32>,
}

/// The logical shape a quant state (the JSON bytes of `W.quant_state.bitsandbytes__nf4`) records.
pub fn quant_state_shape(bytes: &[u8]) -> Result<Vec<usize>, String> {
    serde_json::from_slice::<QuantState>(bytes)
        .map(|s| s.shape)
        .map_err(|e| format!("not bitsandbytes' quant state JSON: {e}"))
}

/// Whether tensor `name` is a part of a 4-bit weight other than its codes (`.absmax`, `.quant_map`,
/// nested scales, the quant state).
pub fn is_companion(name: &str) -> bool {
    [".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", NF4_STATE, FP4_STATE]
        .iter()
        .any(|s| name.ends_with(s))
}

/// The tensors that hold the 4-bit weight `name` besides `name` itself.
pub fn companion_names(name: &str) -> Vec<String> {
    ["absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state.bitsandbytes__nf4"]
        .iter()
        .map(|s| format!("{name}.{s}"))
        .collect()
}

/// A 4-bit weight read back: the codes and scales, and the dtype the checkpoint quantized from.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored4Bit {
    /// The weight in lora's NF4 layout.
    pub nf4: Nf4Tensor,
    /// `dtype` of the quant state (`bfloat16`, `float16`, `float32`): the weights' dtype before
    /// quantization.
    pub dtype: String,
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    let mut out = vec![0f32; bytes.len() / 4];
    decode_f32(&bytes[..out.len() * 4], DType::F32, &mut out);
    out
}

/// Reads the 4-bit weight `name` through `get` (a tensor by name, `None` when absent). Every
/// inconsistency is an error naming the tensor.
pub fn read_nf4<'a>(name: &str, get: impl Fn(&str) -> Option<Stored<'a>>) -> Result<Stored4Bit, String> {
    let need = |suffix: &str| -> Result<Stored<'a>, String> {
        let n = if suffix.is_empty() { name.to_string() } else { format!("{name}.{suffix}") };
        get(&n).ok_or_else(|| format!("tensor '{n}' is missing (a 4-bit weight needs it)"))
    };
    if get(&format!("{name}{FP4_STATE}")).is_some() {
        return Err(format!("'{name}' is FP4 (bnb_4bit_quant_type = \"fp4\"); lora reads NF4 4-bit checkpoints"));
    }
    let (_, _, state) = need("quant_state.bitsandbytes__nf4")?;
    let state: QuantState = serde_json::from_slice(&state)
        .map_err(|e| format!("tensor '{name}{NF4_STATE}' is not bitsandbytes' quant state JSON: {e}"))?;
    if state.quant_type != "nf4" {
        return Err(format!("'{name}': quant_type '{}' is not supported; lora reads nf4", state.quant_type));
    }
    if state.blocksize != BLOCK {
        return Err(format!("'{name}': blocksize {} is not supported; lora reads blocks of {BLOCK}", state.blocksize));
    }
    let n: usize = state.shape.iter().product();
    let (dtype, _, codes) = need("")?;
    if dtype != DType::U8 || codes.len() != n.div_ceil(2) {
        return Err(format!(
            "tensor '{name}' holds {} {dtype:?} bytes; {n} values of shape {:?} pack into {} uint8 bytes",
            codes.len(),
            state.shape,
            n.div_ceil(2)
        ));
    }
    let (_, _, quant_map) = need("quant_map")?;
    if f32s(&quant_map).iter().map(|v| v.to_bits()).ne(CODE.iter().map(|v| v.to_bits())) {
        return Err(format!("tensor '{name}.quant_map' is not the NF4 code"));
    }
    let (absmax_dtype, _, absmax) = need("absmax")?;
    let absmax = match (absmax_dtype, state.nested_offset) {
        (DType::F32, None) => Absmax::F32(f32s(&absmax)),
        (DType::U8, Some(offset)) => {
            if state.nested_blocksize != Some(DOUBLE_BLOCK) {
                return Err(format!("'{name}': nested_blocksize {:?} is not {DOUBLE_BLOCK}", state.nested_blocksize));
            }
            let (_, _, nested_map) = need("nested_quant_map")?;
            let map = dynamic_map();
            if f32s(&nested_map).iter().map(|v| v.to_bits()).ne(map.iter().map(|v| v.to_bits())) {
                return Err(format!("tensor '{name}.nested_quant_map' is not bitsandbytes' dynamic map"));
            }
            let (_, _, nested) = need("nested_absmax")?;
            Absmax::Double { quantized: absmax.into_owned(), absmax: f32s(&nested), offset }
        }
        (d, offset) => {
            return Err(format!(
                "tensor '{name}.absmax' is {d:?} {} a nested_offset in the quant state; expected F32 without, or U8 with",
                if offset.is_some() { "with" } else { "without" }
            ));
        }
    };
    let nf4 = Nf4Tensor::from_parts(state.shape, codes.into_owned(), absmax).map_err(|m| format!("'{name}': {m}"))?;
    Ok(Stored4Bit { nf4, dtype: state.dtype })
}

/// bitsandbytes' quant state of a weight, as transformers serializes it (Python's `json.dumps`).
pub fn quant_state(q: &Nf4Tensor, dtype: DType) -> Vec<u8> {
    let shape: Vec<String> = q.shape.iter().map(usize::to_string).collect();
    let mut s = format!(
        "{{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"{}\", \"shape\": [{}]",
        dtype.torch_name(),
        shape.join(", ")
    );
    if let Absmax::Double { offset, .. } = &q.absmax {
        // Python prints the f32 offset as the shortest repr of its f64 value; so does Rust's f64.
        s += &format!(
            ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
            python_float(*offset as f64)
        );
    }
    s.push('}');
    s.into_bytes()
}

/// Python's `repr` of a float: the shortest round-trip digits, with `.0` on whole numbers and
/// exponents as `1e-05`.
fn python_float(v: f64) -> String {
    let s = format!("{v:?}");
    if let Some((m, e)) = s.split_once('e') {
        let e: i32 = e.parse().unwrap_or(0);
        return format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    s
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; 4 * v.len()];
    encode_f32(v, DType::F32, &mut out);
    out
}

/// The tensors one 4-bit weight is stored as, as transformers writes them: names, dtypes, shapes
/// and bytes (`dtype`: the weight's dtype before quantization).
pub fn parts(name: &str, q: &Nf4Tensor, dtype: DType) -> Vec<(String, DType, Vec<usize>, Vec<u8>)> {
    let mut out = vec![(name.to_string(), DType::U8, vec![q.packed.len(), 1], q.packed.clone())];
    match &q.absmax {
        Absmax::F32(a) => out.push((format!("{name}.absmax"), DType::F32, vec![a.len()], f32_bytes(a))),
        Absmax::Double { quantized, absmax, .. } => {
            out.push((format!("{name}.absmax"), DType::U8, vec![quantized.len()], quantized.clone()));
            out.push((format!("{name}.nested_absmax"), DType::F32, vec![absmax.len()], f32_bytes(absmax)));
            out.push((format!("{name}.nested_quant_map"), DType::F32, vec![256], f32_bytes(&dynamic_map())));
        }
        // Stacked weights' scales, stored decoded (the values each block was scaled by).
        Absmax::Stacked(_) => {
            let a = q.absmax.decode();
            out.push((format!("{name}.absmax"), DType::F32, vec![a.len()], f32_bytes(&a)));
        }
    }
    out.push((format!("{name}.quant_map"), DType::F32, vec![16], f32_bytes(&CODE)));
    let state = quant_state(q, dtype);
    out.push((format!("{name}.quant_state.bitsandbytes__nf4"), DType::U8, vec![state.len()], state));
    out
}

/// `config.json`'s `quantization_config` as transformers writes it (`BitsAndBytesConfig.to_dict()`).
pub fn quantization_config(
    double_quant: bool,
    compute_dtype: &str,
    skip_modules: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "_load_in_4bit": true, "_load_in_8bit": false, "bnb_4bit_compute_dtype": compute_dtype,
        "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": double_quant, "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false, "llm_int8_skip_modules": skip_modules,
        "llm_int8_threshold": 6.0, "load_in_4bit": true, "load_in_8bit": false,
        "quant_method": "bitsandbytes",
    })
}
