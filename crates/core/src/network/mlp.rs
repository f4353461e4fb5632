//! The gated MLP of Llama-family layers: down(silu(gate(x)) · up(x)) (SwiGLU, arXiv:2002.05202).

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::error::Result;
use crate::io::load_options::LoadOptions;
use crate::io::weights::Weights;
use crate::kernels::fused_swiglu::swiglu;
use crate::network::config::ModelConfig;
use crate::network::linear::Linear;

/// `mlp` of a decoder layer.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `gate_proj`: hidden -> intermediate.
    pub gate_proj: Linear,
    /// `up_proj`: hidden -> intermediate.
    pub up_proj: Linear,
    /// `down_proj`: intermediate -> hidden.
    pub down_proj: Linear,
}

impl Mlp {
    /// Loads `{prefix}.{gate,up,down}_proj`.
    pub fn load(w: &Weights, prefix: &str, cfg: &ModelConfig, opts: &LoadOptions, device: &Device) -> Result<Self> {
        let (h, i, b) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_proj: Linear::load(w, &format!("{prefix}.gate_proj"), (h, i), b, opts, true, device)?,
            up_proj: Linear::load(w, &format!("{prefix}.up_proj"), (h, i), b, opts, true, device)?,
            down_proj: Linear::load(w, &format!("{prefix}.down_proj"), (i, h), b, opts, true, device)?,
        })
    }

    /// Loads the three projections from the given names (an expert's), `hidden -> inter -> hidden`,
    /// without biases.
    pub fn load_named(
        w: &Weights,
        [gate, up, down]: [&str; 3],
        h: usize,
        i: usize,
        opts: &LoadOptions,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            gate_proj: Linear::load(w, gate, (h, i), false, opts, true, device)?,
            up_proj: Linear::load(w, up, (h, i), false, opts, true, device)?,
            down_proj: Linear::load(w, down, (i, h), false, opts, true, device)?,
        })
    }

    /// # Shapes
    /// - x: `[..., hidden]`
    /// - output: `[..., hidden]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let gate = self.gate_proj.forward(x.clone()); // [b, t, inter]
        self.down_proj.forward(swiglu(gate, self.up_proj.forward(x)))
    }
}
