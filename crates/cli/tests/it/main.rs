//! End-to-end tests of the `lora` binary (one test binary for the crate).

mod common;
mod core_commands;
mod dpo_commands;
mod fuzz_corpus;
mod gguf_commands;
mod gguf_moe;
mod gguf_qwen35;
mod gpu_commands;
mod hub_commands;
mod launch_commands;
mod merge_commands;
mod moe_commands;
mod train_commands;
