//! Rotary position embeddings in Hugging Face's rotate-half layout (not burn's interleaved
//! `RotaryEncoding`): the head is split into two halves [x1, x2] and rotated as
//! [x1·cos − x2·sin, x2·cos + x1·sin], with frequency i shared by channels i and i + head_dim/2.
//!
//! References: RoFormer (arXiv:2104.09864); transformers `modeling_rope_utils.py` for the llama3
//! schedule. Tables are computed on the host in f32 exactly as transformers does (inv_freq in f32,
//! angle = f32(inv_freq · position)), then uploaded once per forward call.
//!
//! Partial rotary embeddings (Qwen3.5: `partial_rotary_factor`) rotate only the first `rotary_dim`
//! channels of each head, rotate-half within them, and pass the rest through. Qwen3.5's interleaved
//! M-RoPE is this with text-only positions: its three position rows (time, height, width) are then
//! equal, so each frequency gets the same angle whichever row it is taken from.

use burn::tensor::{Device, Tensor, TensorData};

use crate::network::config::{ModelConfig, RopeScaling};

/// Inverse frequencies of one head.
#[derive(Debug, Clone)]
pub struct Rope {
    /// `inv_freq`: [rotary_dim / 2].
    inv_freq: Vec<f32>,
    /// Rotated channels of a head (the whole head unless the rotation is partial).
    rotary_dim: usize,
}

impl Rope {
    /// Builds the frequency table from the config's theta and scaling.
    pub fn new(cfg: &ModelConfig) -> Self {
        let dim = cfg.rotary_dim;
        let base: Vec<f64> = (0..dim / 2).map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / dim as f64)).collect();
        let inv_freq = match &cfg.rope_scaling {
            RopeScaling::Default => base,
            RopeScaling::Factors(f) => base.iter().zip(f).map(|(b, &f)| b / f as f64).collect(),
            &RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                // 1) wavelengths longer than the low-frequency bound are stretched by `factor`,
                // 2) shorter than the high-frequency bound are kept,
                // 3) in between, interpolated smoothly.
                let low_wavelen = original_max_position_embeddings / low_freq_factor;
                let high_wavelen = original_max_position_embeddings / high_freq_factor;
                base.into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
                        if medium {
                            let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
        };
        Self { inv_freq: inv_freq.into_iter().map(|f| f as f32).collect(), rotary_dim: dim }
    }

    /// cos and sin tables for the given positions, one row of positions per batch element.
    ///
    /// # Shapes
    /// - positions: `batch` rows of `seq` positions
    /// - output: (cos, sin), each `[batch, 1, seq, rotary_dim]`
    pub fn tables(&self, positions: &[Vec<usize>], device: &Device) -> (Tensor<4>, Tensor<4>) {
        let b = positions.len();
        let t = positions.first().map_or(0, Vec::len);
        let (hd, half) = (self.rotary_dim, self.rotary_dim / 2);
        let mut cos = Vec::with_capacity(b * t * hd);
        let mut sin = Vec::with_capacity(b * t * hd);
        for row in positions {
            for &p in row {
                let angles: Vec<f32> = self.inv_freq.iter().map(|f| f * p as f32).collect();
                // emb = cat(freqs, freqs): both halves of the head share the angles.
                for k in 0..hd {
                    let a = angles[k % half] as f64;
                    cos.push(a.cos() as f32);
                    sin.push(a.sin() as f32);
                }
            }
        }
        let cos = Tensor::from_data(TensorData::new(cos, [b, 1, t, hd]), device);
        let sin = Tensor::from_data(TensorData::new(sin, [b, 1, t, hd]), device);
        (cos, sin)
    }
}

/// Applies the rotation to the first `rotary_dim` channels of each head (all of them unless the
/// rotation is partial).
///
/// # Shapes
/// - x: `[batch, heads, seq, head_dim]`
/// - cos, sin: `[batch, 1, seq, rotary_dim]`
/// - output: `[batch, heads, seq, head_dim]`
pub fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [b, h, t, hd] = x.dims();
    let rd = cos.dims()[3];
    if rd < hd {
        let rotated = apply_rope(x.clone().slice([0..b, 0..h, 0..t, 0..rd]), cos, sin);
        return Tensor::cat(vec![rotated, x.slice([0..b, 0..h, 0..t, rd..hd])], 3);
    }
    let half = hd / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..t, half..hd]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3); // [b, h, t, hd]
    x * cos.clone() + rotated * sin.clone()
}
