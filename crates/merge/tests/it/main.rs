//! Integration tests of lora-merge (one test binary for the crate).

mod adapters_svd;
mod common;
mod fold;
mod gguf;
mod lossless;
mod methods_mergekit;
mod properties;
mod safetensors_io;
