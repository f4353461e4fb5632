//! One pre-norm decoder layer: x + mixer(norm(x)), then + mlp(norm(·)). The token mixer is chosen per
//! layer from the config ([`TokenMixer`]): attention (`self_attn`, gated or not) or Gated DeltaNet
//! (`linear_attn`); exactly one of the two fields is set.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::error::Result;
use crate::generation::kv_cache::LayerCache;
use crate::io::load_options::LoadOptions;
use crate::io::weights::Weights;
use crate::network::attention::{Attention, AttentionMask};
use crate::network::config::{ModelConfig, TokenMixer};
use crate::network::gated_delta_net::{GatedDeltaNet, SequenceLayout};
use crate::network::mlp::Mlp;
use crate::network::norm::RmsNorm;

/// `model.layers.N`.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// `input_layernorm`.
    pub input_layernorm: RmsNorm,
    /// `self_attn`, in an attention layer.
    pub self_attn: Option<Attention>,
    /// `linear_attn`, in a Gated DeltaNet layer.
    pub linear_attn: Option<GatedDeltaNet>,
    /// `post_attention_layernorm`.
    pub post_attention_layernorm: RmsNorm,
    /// `mlp`.
    pub mlp: Mlp,
}

impl DecoderLayer {
    /// The mixer's linear layers with their names under the layer, in PEFT's (named_modules) order.
    pub fn mixer_linears(&self) -> Vec<(&'static str, &crate::network::linear::Linear)> {
        match (&self.self_attn, &self.linear_attn) {
            (Some(a), _) => vec![
                ("self_attn.q_proj", &a.q_proj),
                ("self_attn.k_proj", &a.k_proj),
                ("self_attn.v_proj", &a.v_proj),
                ("self_attn.o_proj", &a.o_proj),
            ],
            (None, Some(l)) => LINEAR_ATTN.into_iter().zip(l.linears()).collect(),
            (None, None) => Vec::new(),
        }
    }

    /// The mixer's linear layers (as [`Self::mixer_linears`]) and the MLP, borrowed mutably at once.
    pub fn linears_mut(&mut self) -> (Vec<(&'static str, &mut crate::network::linear::Linear)>, &mut Mlp) {
        let Self { self_attn, linear_attn, mlp, .. } = self;
        let mixer = match (self_attn, linear_attn) {
            (Some(a), _) => vec![
                ("self_attn.q_proj", &mut a.q_proj),
                ("self_attn.k_proj", &mut a.k_proj),
                ("self_attn.v_proj", &mut a.v_proj),
                ("self_attn.o_proj", &mut a.o_proj),
            ],
            (None, Some(g)) => LINEAR_ATTN.into_iter().zip(g.linears_mut()).collect(),
            (None, None) => Vec::new(),
        };
        (mixer, mlp)
    }
}

/// A Gated DeltaNet mixer's linear layers under the decoder layer, in [`GatedDeltaNet::linears`] order.
const LINEAR_ATTN: [&str; 5] = [
    "linear_attn.in_proj_qkv",
    "linear_attn.in_proj_z",
    "linear_attn.in_proj_b",
    "linear_attn.in_proj_a",
    "linear_attn.out_proj",
];

impl DecoderLayer {
    /// Loads `{prefix}.*`, layer `index` of the config's pattern.
    pub fn load(
        w: &Weights,
        prefix: &str,
        index: usize,
        cfg: &ModelConfig,
        opts: &LoadOptions,
        device: &Device,
    ) -> Result<Self> {
        let (h, eps, zc) = (cfg.hidden_size, cfg.rms_norm_eps, cfg.zero_centred_norms);
        // Loaded in the checkpoint's order, so that the first missing tensor named is the first one.
        let input_layernorm = RmsNorm::load_as(w, &format!("{prefix}.input_layernorm"), h, eps, zc, device)?;
        let mixer = cfg.mixers[index];
        let (self_attn, linear_attn) = match mixer {
            TokenMixer::GatedDeltaNet => {
                (None, Some(GatedDeltaNet::load(w, &format!("{prefix}.linear_attn"), cfg, opts, device)?))
            }
            m => {
                let gated = m == TokenMixer::GatedAttention;
                (Some(Attention::load(w, &format!("{prefix}.self_attn"), cfg, gated, opts, device)?), None)
            }
        };
        Ok(Self {
            input_layernorm,
            self_attn,
            linear_attn,
            post_attention_layernorm: RmsNorm::load_as(
                w,
                &format!("{prefix}.post_attention_layernorm"),
                h,
                eps,
                zc,
                device,
            )?,
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
        layout: &SequenceLayout,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let normed = self.input_layernorm.forward(x.clone());
        let mixed = match (&self.self_attn, &self.linear_attn) {
            (Some(a), _) => a.forward(normed, cos, sin, mask, cache),
            (None, Some(l)) => l.forward(normed, layout, cache),
            (None, None) => unreachable!("every layer is loaded with one token mixer"),
        };
        let h = x + mixed;
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}
