//! The tensors a configuration's model is built from, by name and shape: what the model code
//! requires of a checkpoint, so that a command that only copies tensors (a fold, a merge) can refuse
//! a base that no command could load afterwards.

use super::mixers::TokenMixer;
use super::model_config::ModelConfig;

impl ModelConfig {
    /// Every tensor the language model loads, with its shape, in checkpoint order: the embedding,
    /// each layer's norms, token mixer and MLP or routed experts (per expert; biases and q/k norms
    /// as the config says), the final
    /// norm, and the head unless tied. Tensors beside the language model (a vision tower, `mtp.*`)
    /// are not listed: they are carried, never run.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (q, kv) = (self.num_attention_heads * hd, self.num_key_value_heads * hd);
        let p = &self.text_prefix;
        let mut out = vec![(format!("{p}.embed_tokens.weight"), vec![self.vocab_size, h])];
        for (l, mixer) in self.mixers.iter().enumerate() {
            let at = |name: &str| format!("{}.{name}", self.layer_prefix(l));
            out.push((at("input_layernorm.weight"), vec![h]));
            match (mixer, &self.linear_attention) {
                (TokenMixer::GatedDeltaNet, Some(g)) => {
                    let (conv, nv) = (g.conv_dim(), g.num_value_heads);
                    out.extend([
                        (at("linear_attn.in_proj_qkv.weight"), vec![conv, h]),
                        (at("linear_attn.in_proj_z.weight"), vec![g.value_dim(), h]),
                        (at("linear_attn.in_proj_b.weight"), vec![nv, h]),
                        (at("linear_attn.in_proj_a.weight"), vec![nv, h]),
                        (at("linear_attn.conv1d.weight"), vec![conv, 1, g.conv_kernel]),
                        (at("linear_attn.A_log"), vec![nv]),
                        (at("linear_attn.dt_bias"), vec![nv]),
                        (at("linear_attn.norm.weight"), vec![g.value_head_dim]),
                        (at("linear_attn.out_proj.weight"), vec![h, g.value_dim()]),
                    ]);
                }
                _ => {
                    let q_out = if *mixer == TokenMixer::GatedAttention { 2 * q } else { q };
                    out.push((at("self_attn.q_proj.weight"), vec![q_out, h]));
                    out.push((at("self_attn.k_proj.weight"), vec![kv, h]));
                    out.push((at("self_attn.v_proj.weight"), vec![kv, h]));
                    out.push((at("self_attn.o_proj.weight"), vec![h, q]));
                    if self.qkv_bias {
                        out.push((at("self_attn.q_proj.bias"), vec![q_out]));
                        out.push((at("self_attn.k_proj.bias"), vec![kv]));
                        out.push((at("self_attn.v_proj.bias"), vec![kv]));
                    }
                    if self.o_bias {
                        out.push((at("self_attn.o_proj.bias"), vec![h]));
                    }
                    if self.qk_norm {
                        out.push((at("self_attn.q_norm.weight"), vec![hd]));
                        out.push((at("self_attn.k_norm.weight"), vec![hd]));
                    }
                }
            }
            out.push((at("post_attention_layernorm.weight"), vec![h]));
            if let Some(m) = self.moe.as_ref().filter(|m| m.is_sparse(l)) {
                // Per expert, as transformers 5 saves them (fused checkpoints are read too).
                let (block, [g, u, d]) = self.feed_forward.expert_names();
                let mi = m.intermediate_size;
                out.push((at(&format!("{block}.gate.weight")), vec![m.num_experts, h]));
                for e in 0..m.num_experts {
                    out.push((at(&format!("{block}.experts.{e}.{g}.weight")), vec![mi, h]));
                    out.push((at(&format!("{block}.experts.{e}.{u}.weight")), vec![mi, h]));
                    out.push((at(&format!("{block}.experts.{e}.{d}.weight")), vec![h, mi]));
                }
                if let Some(s) = m.shared_expert {
                    out.push((at("mlp.shared_expert.gate_proj.weight"), vec![s, h]));
                    out.push((at("mlp.shared_expert.up_proj.weight"), vec![s, h]));
                    out.push((at("mlp.shared_expert.down_proj.weight"), vec![h, s]));
                    out.push((at("mlp.shared_expert_gate.weight"), vec![1, h]));
                }
                continue;
            }
            out.push((at("mlp.gate_proj.weight"), vec![i, h]));
            out.push((at("mlp.up_proj.weight"), vec![i, h]));
            out.push((at("mlp.down_proj.weight"), vec![h, i]));
            if self.mlp_bias {
                out.push((at("mlp.gate_proj.bias"), vec![i]));
                out.push((at("mlp.up_proj.bias"), vec![i]));
                out.push((at("mlp.down_proj.bias"), vec![h]));
            }
        }
        out.push((format!("{p}.norm.weight"), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
        }
        out
    }
}
