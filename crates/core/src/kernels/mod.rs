//! The compute backends and the kernels that run on them.
//!
//! [`backend`] is the one place a device is chosen; [`host`] copies tensors back. burn-flex runs
//! unary, scalar and broadcast ops on one thread and autodiff keeps every intermediate of a composed
//! op, so the hot paths of training have kernels of their own, each tested against the plain burn
//! composition it replaces:
//!
//! | kernel | replaces (the plain reference) |
//! |---|---|
//! | [`frozen_matmul`] (CPU: `frozen_matmul_cpu`) | `x · Wᵀ` of a frozen base, dense or NF4, keeping no f32 copy |
//! | [`fused_lora_linear`] | the LoRA path `s · B(A x)` |
//! | [`fused_rms_norm`] | [`crate::network::norm`]'s composition |
//! | [`fused_gated_rms_norm`] | the Gated DeltaNet's gated norm in [`crate::network::norm`] |
//! | [`fused_rope`] | [`crate::network::rope::apply_rope`] |
//! | [`fused_swiglu`] | `silu(gate) · up` in [`crate::network::mlp`] |
//! | [`fused_attention`] (CPU), [`tiled_attention`] (GPUs) | burn's attention |
//! | [`fused_delta_rule`] | [`delta_rule::chunked`] and [`delta_rule::recurrent_step`] |
//! | [`causal_conv::causal_conv_silu`] | [`causal_conv::plain`] (the Gated DeltaNet's convolution) |
//! | [`fused_gated_delta_net`] (the two above with the q, k norms, as one op) | the Gated DeltaNet's composition in [`crate::network::gated_delta_net`] |
//!
//! [`cpu_kernel`] holds what the CPU kernels share (threading, dot products, the switch
//! `LORA_REFERENCE_KERNELS=1` back to the references); [`large_blocks`] is the allocator that keeps
//! large freed buffers for the next step. The losses' kernels live in [`crate::loss`].

pub mod backend;
pub mod causal_conv;
pub mod cpu_kernel;
pub mod delta_rule;
pub mod frozen_matmul;
mod frozen_matmul_cpu;
pub mod fused_attention;
pub mod fused_delta_rule;
pub mod fused_experts;
pub mod fused_gated_delta_net;
pub mod fused_gated_rms_norm;
pub mod fused_lora_linear;
pub mod fused_rms_norm;
pub mod fused_rope;
pub mod fused_swiglu;
pub mod host;
pub mod large_blocks;
pub mod tiled_attention;
