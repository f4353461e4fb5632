//! Integration tests of lora-core (one binary: see the workspace README).

mod adapter_layout;
mod bnb4bit;
mod common;
mod delta_rule;
mod dora;
mod experts;
mod fused;
mod gguf;
mod gpu;
mod loading;
mod parity;
mod quant;
