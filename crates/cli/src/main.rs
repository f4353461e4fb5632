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
#[command(name = "lora", version, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// One variant per subcommand; each one's help is the doc comment of its `Args` in `commands/`.
#[derive(Subcommand, Debug)]
enum Command {
    Inspect(commands::inspect::Args),
    Generate(commands::generate::Args),
    Eval(commands::eval::Args),
    Merge(commands::merge::Args),
    MergeAdapters(commands::merge_adapters::Args),
    Extract(commands::extract::Args),
    Export(commands::export::Args),
    Quantize(commands::quantize::Args),
    Train(commands::train::Args),
    Launch(commands::launch::Args),
    Verify(commands::verify::Args),
    Download(commands::download::Args),
    Publish(commands::publish::Args),
}

/// The system allocator, plus a few large freed blocks kept for reuse while training.
#[global_allocator]
static ALLOCATOR: lora_core::kernels::large_blocks::KeepLargeBlocks =
    lora_core::kernels::large_blocks::KeepLargeBlocks::new();

fn main() -> ExitCode {
    bound_xet_memory();
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
    // Parsing starts no thread, so the allocator settings still apply to every allocation. They
    // keep freed memory for the compute commands' next step; a Hub transfer's many freed buffers
    // (Xet's, on tokio threads) would stay resident under them, up to 1 GiB.
    if !matches!(cli.command, Command::Download(_) | Command::Publish(_)) {
        lora_core::kernels::cpu_kernel::keep_freed_memory();
    }
    let result = std::panic::catch_unwind(|| match cli.command {
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Merge(a) => commands::merge::run(a),
        Command::MergeAdapters(a) => commands::merge_adapters::run(a),
        Command::Extract(a) => commands::extract::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Quantize(a) => commands::quantize::run(a),
        Command::Train(a) => commands::train::run_cmd(a),
        Command::Launch(a) => commands::launch::run(a),
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

/// lora's bounds on Xet's transfer buffers (see `lora_hub::xet_memory_defaults`), for every
/// variable the user left unset. hf-hub reads them when its first Xet transfer starts.
fn bound_xet_memory() {
    for (name, value) in
        lora_hub::xet_memory_defaults(|v| std::env::var_os(v).map(|s| s.to_string_lossy().into_owned()))
    {
        // SAFETY: called first thing in `main`, before any thread exists that could read the
        // environment at the same time.
        unsafe { std::env::set_var(name, value) };
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
