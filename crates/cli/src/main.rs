//! `lora`: LoRA fine-tuning and adapter merging for open-weight language models.
//!
//! A thin binary: `main` parses arguments, runs one subcommand from `commands/`, and prints the error
//! chain once. Every failure exits with code 2 and one message; nothing prints a backtrace.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod adapters;
mod commands;
mod device;
mod hub_refs;
mod model_args;
mod probe;

/// LoRA fine-tuning and adapter merging for open-weight language models, on your own hardware.
#[derive(Parser, Debug)]
#[command(name = "lora", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show what a model folder or a .safetensors file holds: architecture, parameters, dtypes, tensors.
    Inspect(commands::inspect::Args),
    /// Generate text from a prompt, streaming tokens as they come (greedy by default).
    Generate(commands::generate::Args),
    /// Mean loss per predicted token and perplexity of a model on a JSONL file of {"text": ...} lines.
    Eval(commands::eval::Args),
    /// Fold PEFT adapters into their base model, or merge models from a configuration (TIES, DARE, SLERP, ...).
    Merge(commands::merge::Args),
    /// Combine PEFT adapters into one adapter (cat, svd, ties_svd, dare_svd).
    MergeAdapters(commands::merge_adapters::Args),
    /// Extract a LoRA adapter approximating FINETUNED − BASE by truncated SVD.
    Extract(commands::extract::Args),
    /// Export a PEFT adapter as a llama.cpp / Ollama LoRA adapter (GGUF).
    Export(commands::export::Args),
    /// Fine-tune a LoRA adapter from a TOML recipe; writes a PEFT adapter and a reproducible run folder.
    Train(commands::train::Args),
    /// Re-run a training run from its folder and check that it reproduces the adapter byte for byte.
    Verify(commands::verify::Args),
    /// Fetch a model or adapter from the Hugging Face Hub into the HF cache and print its folder.
    Download(commands::download::Args),
    /// Publish an adapter folder to the Hugging Face Hub in one commit and print the commit URL.
    Publish(commands::publish::Args),
}

/// The system allocator, plus a few large freed blocks kept for reuse while training.
#[global_allocator]
static ALLOCATOR: lora_core::kernels::large_blocks::KeepLargeBlocks =
    lora_core::kernels::large_blocks::KeepLargeBlocks::new();

fn main() -> ExitCode {
    lora_core::kernels::cpu_kernel::keep_freed_memory();
    // A panic is a bug in lora or a dependency: say so in one line instead of a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: internal error{at}: {msg} (please report this)");
    }));
    let cli = Cli::parse();
    let result = std::panic::catch_unwind(|| match cli.command {
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Merge(a) => commands::merge::run(a),
        Command::MergeAdapters(a) => commands::merge_adapters::run(a),
        Command::Extract(a) => commands::extract::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Train(a) => commands::train::run_cmd(a),
        Command::Verify(a) => commands::verify::run(a),
        Command::Download(a) => commands::download::run(a),
        Command::Publish(a) => commands::publish::run(a),
    });
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        // `lora inspect ... | head` closes the pipe early: not an error.
        Ok(Err(e)) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        // A reproducibility check that found a difference: exit 1, as diff does.
        Ok(Err(e)) if e.chain().any(|c| matches!(c.downcast_ref(), Some(lora_train::TrainError::Verify(_)))) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(_) => ExitCode::from(101),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
