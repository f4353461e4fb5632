//! One pre-norm decoder layer: x + mixer(norm(x)), then + feed-forward(norm(·)). The token mixer is
//! chosen per layer from the config ([`TokenMixer`]): attention (`self_attn`, gated or not) or Gated
//! DeltaNet (`linear_attn`); exactly one of the two fields is set. So is the feed-forward block: the
//! gated MLP (`mlp`) or, in an MoE model's sparse layers, routed experts (`moe`).

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::error::Result;
use crate::generation::kv_cache::LayerCache;
use crate::io::load_options::LoadOptions;
use crate::io::weights::Weights;
use crate::network::attention::{Attention, AttentionMask};
use crate::network::config::{FeedForward, ModelConfig, TokenMixer};
use crate::network::experts::SparseMoe;
use crate::network::gated_delta_net::{GatedDeltaNet, SequenceLayout};
use crate::network::linear::Linear;
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
    /// `mlp`, in a dense layer.
    pub mlp: Option<Mlp>,
    /// `mlp` (Mixtral: `block_sparse_moe`) with routed experts, in a sparse layer.
    pub moe: Option<SparseMoe>,
}

impl DecoderLayer {
    /// The layer's linear layers with their names under the layer (the mixer's, then the
    /// feed-forward block's), in PEFT's (named_modules) order: the names are the block kinds' tables
    /// ([`TokenMixer::linear_names`], [`FeedForward::linear_names`]).
    pub fn linears(&self) -> Vec<(&'static str, &Linear)> {
        let mixer: Vec<&Linear> = match (&self.self_attn, &self.linear_attn) {
            (Some(a), _) => vec![&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj],
            (None, Some(l)) => l.linears().to_vec(),
            (None, None) => Vec::new(),
        };
        // A sparse layer's router and experts are listed by its block ([`SparseMoe::linears`]).
        let ffn: Vec<&Linear> = self.mlp.iter().flat_map(|m| [&m.gate_proj, &m.up_proj, &m.down_proj]).collect();
        let names = self.mixer_kind().linear_names().iter().chain(self.ffn_kind().linear_names());
        names.copied().zip(mixer.into_iter().chain(ffn)).collect()
    }

    /// [`Self::linears`] and the routed experts' block, borrowed mutably together.
    pub fn linears_and_experts_mut(&mut self) -> (Vec<(&'static str, &mut Linear)>, Option<&mut SparseMoe>) {
        let names = self.mixer_kind().linear_names().iter().chain(self.ffn_kind().linear_names());
        let Self { self_attn, linear_attn, mlp, moe, .. } = self;
        let mixer: Vec<&mut Linear> = match (self_attn, linear_attn) {
            (Some(a), _) => vec![&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj],
            (None, Some(g)) => g.linears_mut().into_iter().collect(),
            (None, None) => Vec::new(),
        };
        let ffn: Vec<&mut Linear> =
            mlp.iter_mut().flat_map(|m| [&mut m.gate_proj, &mut m.up_proj, &mut m.down_proj]).collect();
        (names.copied().zip(mixer.into_iter().chain(ffn)).collect(), moe.as_mut())
    }

    /// The kind of this layer's mixer, as far as its linear layers go (gated attention has the
    /// same ones as attention).
    fn mixer_kind(&self) -> TokenMixer {
        if self.linear_attn.is_some() { TokenMixer::GatedDeltaNet } else { TokenMixer::Attention }
    }

    /// The kind of this layer's feed-forward block, as far as its linear layers go.
    fn ffn_kind(&self) -> FeedForward {
        if self.moe.is_some() { FeedForward::QwenMoe } else { FeedForward::GatedMlp }
    }
}

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
        let post_attention_layernorm =
            RmsNorm::load_as(w, &format!("{prefix}.post_attention_layernorm"), h, eps, zc, device)?;
        let (mlp, moe) = match (cfg.layer_feed_forward(index), &cfg.moe) {
            (FeedForward::GatedMlp, _) | (_, None) => {
                (Some(Mlp::load(w, &format!("{prefix}.mlp"), cfg, opts, device)?), None)
            }
            (kind, Some(m)) => (None, Some(SparseMoe::load(w, prefix, kind, h, m, opts, device)?)),
        };
        Ok(Self { input_layernorm, self_attn, linear_attn, post_attention_layernorm, mlp, moe })
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
        let normed = self.post_attention_layernorm.forward(h.clone());
        let ffn = match (&self.mlp, &self.moe) {
            (Some(m), _) => m.forward(normed),
            (None, Some(e)) => e.forward(normed),
            (None, None) => unreachable!("every layer is loaded with one feed-forward block"),
        };
        h + ffn
    }
}
