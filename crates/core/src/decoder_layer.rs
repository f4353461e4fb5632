//! One pre-norm decoder layer: x + attn(norm(x)), then + mlp(norm(·)).

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::attention::{Attention, AttentionMask};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::kv_cache::LayerCache;
use crate::load_options::LoadOptions;
use crate::mlp::Mlp;
use crate::norm::RmsNorm;
use crate::weights::Weights;

/// `model.layers.N`.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// `input_layernorm`.
    pub input_layernorm: RmsNorm,
    /// `self_attn`.
    pub self_attn: Attention,
    /// `post_attention_layernorm`.
    pub post_attention_layernorm: RmsNorm,
    /// `mlp`.
    pub mlp: Mlp,
}

impl DecoderLayer {
    /// Loads `{prefix}.*`.
    pub fn load(w: &Weights, prefix: &str, cfg: &ModelConfig, opts: &LoadOptions, device: &Device) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            input_layernorm: RmsNorm::load(w, &format!("{prefix}.input_layernorm"), h, eps, device)?,
            self_attn: Attention::load(w, &format!("{prefix}.self_attn"), cfg, opts, device)?,
            post_attention_layernorm: RmsNorm::load(w, &format!("{prefix}.post_attention_layernorm"), h, eps, device)?,
            mlp: Mlp::load(w, &format!("{prefix}.mlp"), cfg, opts, device)?,
        })
    }

    /// # Shapes
    /// - x: `[batch, seq, hidden]`
    /// - output: `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: &AttentionMask,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let h = x.clone() + self.self_attn.forward(self.input_layernorm.forward(x), cos, sin, mask, cache);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}
