//! Generation: the per-layer caches ([`kv_cache`]: keys and values for attention, the convolution
//! and delta-rule state for Gated DeltaNet) and the decoding loop with its sampling ([`generate`]).

pub mod generate;
pub mod kv_cache;
