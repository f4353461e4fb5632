//! The network: a [`model::CausalLm`] is the [`embedding`], a stack of [`decoder_layer`]s and the head,
//! built from the resolved [`config`]. A decoder layer is a token mixer ([`attention`], plain or
//! gated, or [`gated_delta_net`]) and the [`mlp`], each behind a [`norm`]; attention rotates its
//! queries and keys ([`rope`]). Every projection is a [`linear`] layer: a frozen base weight
//! ([`base_weight`]: dense or NF4) plus, when attached, a [`lora`] adapter.
//!
//! The blocks compose burn operations; on the CPU they call the fused kernels of
//! [`crate::kernels`] where one exists.

pub mod attention;
pub mod base_weight;
pub mod config;
pub mod decoder_layer;
pub mod dora;
pub mod embedding;
pub mod experts;
pub mod gated_delta_net;
pub mod grow_vocab;
pub mod linear;
pub mod lora;
pub mod mlp;
pub mod model;
pub mod norm;
pub mod rope;
pub mod token_rows;
