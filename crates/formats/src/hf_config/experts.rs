//! The mixture-of-experts block of a decoder layer, as transformers 5 computes it: a router
//! (`mlp.gate`, a linear layer without bias) scores every expert, the softmax of the scores (in
//! f32) picks the top k, their probabilities are renormalised to sum to 1 when the architecture
//! says so, and the output is the sum of the chosen experts' gated MLPs weighted by them.

use super::architecture::{ArchitectureSpec, FeedForward};
use super::hf::HfConfig;

/// The expert layers' sizes and routing.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    /// Routed experts per sparse layer (`num_experts`, Mixtral's `num_local_experts`).
    pub num_experts: usize,
    /// Experts each token is sent to (`num_experts_per_tok`).
    pub top_k: usize,
    /// Width of each expert's gated MLP (`moe_intermediate_size`; Mixtral's `intermediate_size`).
    pub intermediate_size: usize,
    /// Whether the k chosen probabilities are divided by their sum (Qwen3-MoE's `norm_topk_prob`;
    /// always for Mixtral).
    pub renormalize: bool,
    /// Which decoder layers are sparse; the others have the dense gated MLP.
    pub sparse: Vec<bool>,
    /// Width of the shared expert every token also goes through, gated by a sigmoid
    /// (`shared_expert_intermediate_size`, Qwen3.5-MoE), when the block has one.
    pub shared_expert: Option<usize>,
    /// The load-balancing loss's weight, when config.json asks transformers to add it to the
    /// training loss (`output_router_logits`, `router_aux_loss_coef`).
    pub router_aux_loss_coef: Option<f64>,
}

impl MoeConfig {
    /// Whether decoder layer `l` routes its tokens to experts.
    pub fn is_sparse(&self, l: usize) -> bool {
        self.sparse.get(l).copied().unwrap_or(false)
    }
}

/// The expert configuration of an MoE architecture (`None` for a dense one), transformers'
/// defaults filled in.
pub(super) fn resolve_experts(
    hf: &HfConfig,
    spec: &ArchitectureSpec,
) -> std::result::Result<Option<MoeConfig>, String> {
    let n_layers = hf.num_hidden_layers;
    let mut shared_expert = None;
    let (num_experts, top_k, intermediate_size, renormalize, sparse) = match spec.feed_forward {
        FeedForward::GatedMlp => return Ok(None),
        // Qwen3MoeConfig's defaults.
        FeedForward::QwenMoe => {
            let step = hf.decoder_sparse_step.unwrap_or(1);
            if step == 0 {
                return Err("decoder_sparse_step must be positive".into());
            }
            let dense = hf.mlp_only_layers.clone().unwrap_or_default();
            if let Some(l) = dense.iter().find(|&&l| l >= n_layers) {
                return Err(format!("mlp_only_layers names layer {l}, and there are {n_layers}"));
            }
            let sparse = (0..n_layers).map(|l| !dense.contains(&l) && (l + 1) % step == 0).collect();
            (
                hf.num_experts.or(hf.num_local_experts).unwrap_or(128),
                hf.num_experts_per_tok.unwrap_or(8),
                hf.moe_intermediate_size.unwrap_or(768),
                hf.norm_topk_prob.unwrap_or(false),
                sparse,
            )
        }
        // Qwen3_5MoeTextConfig's defaults: every layer sparse, always renormalised, a shared expert.
        FeedForward::QwenMoeShared => {
            shared_expert = Some(hf.shared_expert_intermediate_size.unwrap_or(512));
            (
                hf.num_experts.or(hf.num_local_experts).unwrap_or(256),
                hf.num_experts_per_tok.unwrap_or(8),
                hf.moe_intermediate_size.unwrap_or(512),
                true,
                vec![true; n_layers],
            )
        }
        // MixtralConfig's defaults: every layer sparse, always renormalised.
        FeedForward::MixtralMoe => {
            if hf.router_jitter_noise.unwrap_or(0.0) != 0.0 {
                return Err(
                    "router_jitter_noise is not supported: it scales the router's input by random noise while \
                     training, which no run could reproduce; set it to 0"
                        .into(),
                );
            }
            (
                hf.num_local_experts.or(hf.num_experts).unwrap_or(8),
                hf.num_experts_per_tok.unwrap_or(2),
                hf.intermediate_size.ok_or("missing field `intermediate_size`")?,
                true,
                vec![true; n_layers],
            )
        }
    };
    if num_experts == 0 || intermediate_size == 0 {
        return Err("the number of experts and their intermediate size must be positive".into());
    }
    if top_k == 0 || top_k > num_experts {
        return Err(format!(
            "num_experts_per_tok ({top_k}) must be between 1 and the number of experts ({num_experts})"
        ));
    }
    let router_aux_loss_coef =
        hf.output_router_logits.unwrap_or(false).then(|| hf.router_aux_loss_coef.unwrap_or(0.001));
    if shared_expert == Some(0) {
        return Err("shared_expert_intermediate_size must be positive".into());
    }
    Ok(Some(MoeConfig {
        num_experts,
        top_k,
        intermediate_size,
        renormalize,
        sparse,
        shared_expert,
        router_aux_loss_coef,
    }))
}
