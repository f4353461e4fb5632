//! `lora train RECIPE`: LoRA fine-tuning with a progress bar (plain log lines without a terminal).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lora_train::Recipe;
use lora_train::preference::PreferenceExamples;
use lora_train::recipe::Method;
use lora_train::trainer::{Event, RunOptions, prepare_on, run};

/// Fine-tune a LoRA adapter from a TOML recipe; writes a PEFT adapter and a reproducible run folder.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The recipe (TOML).
    recipe: PathBuf,
    /// Override a recipe value, e.g. `--set train.lr=2e-4` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Continue from the newest checkpoint in the output folder.
    #[arg(long)]
    resume: bool,
    /// Replace an existing output folder.
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Validate the recipe, load model and data, print the resolved recipe; train nothing.
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: print the first N training examples with their trained tokens marked
    /// (green on a terminal, [[...]] otherwise) and their token counts.
    #[arg(long, value_name = "N", requires = "dry_run")]
    show: Option<usize>,
    /// Never touch the network: a Hub id as base must be in the Hugging Face cache.
    #[arg(long)]
    offline: bool,
}

/// Runs `lora train`.
pub fn run_cmd(a: Args) -> Result<()> {
    let recipe = Recipe::load_with(&a.recipe, &a.set, &crate::hub_refs::options(a.offline)?)?;
    // Publishing needs a token: find out before training, not after.
    let hub = match &recipe.output.push_to_hub {
        Some(_) if !a.dry_run => {
            let hub = lora_hub::HubConfig::from_env()?;
            if hub.token.is_none() {
                anyhow::bail!(
                    "output.push_to_hub needs a Hub token: set HF_TOKEN or write it to {}",
                    hub.token_file.display()
                );
            }
            Some(hub)
        }
        _ => None,
    };
    if a.dry_run {
        // The memory plan comes from config.json and the recipe alone, before any weight is read.
        let config = if recipe.model.base.is_file() {
            lora_core::io::gguf::model::config(&lora_merge::gguf::GgufFile::open(&recipe.model.base)?)?
        } else {
            lora_core::ModelConfig::from_file(recipe.model.base.join("config.json"))?
        };
        let backend: lora_core::Backend = recipe.train.device.parse()?;
        let opts = recipe.model.load_options(backend);
        let p = lora_train::memory_plan::plan(&recipe, &config, &opts)?;
        let gb = |b: u64| match b {
            b if b >= 1_000_000_000 => format!("{:.2} GB", b as f64 / 1e9),
            b if b >= 1_000_000 => format!("{:.1} MB", b as f64 / 1e6),
            b => format!("{:.1} KB", b as f64 / 1e3),
        };
        println!(
            "# memory plan: base {} ({} {}), adapter + gradients + AdamW {}, activations ~{} \
             (batch {} x {} tokens, recomputation {}), head chunk {}; total ~{}",
            gb(p.base),
            opts.dtype,
            if let Some(q) = &config.quantization {
                format!("+ the checkpoint's 4-bit nf4{} linears", if q.double_quant { " (double-quant)" } else { "" })
            } else if opts.quantize == lora_core::Quantize::None {
                "dense".to_string()
            } else {
                format!("{} linears", opts.quantize)
            },
            gb(p.adapter),
            gb(p.activations),
            recipe.train.batch_size,
            recipe.data.max_seq_len,
            if recipe.train.gradient_checkpointing { "on" } else { "off" },
            gb(p.head_chunk),
            gb(p.total())
        );
    }
    // The ranks meet before the model loads: a rank's GPU is its local rank.
    let started = if a.dry_run { None } else { distributed_run(&recipe)? };
    let quiet = started.as_ref().is_some_and(|s| s.run.rank != 0);
    let prepared = prepare_on(&recipe, started.as_ref().map_or(0, |s| s.gpu))?;
    let trainable = lora_train::trainable::trainable_parameters(&prepared.model);
    // The other ranks would repeat rank 0's warnings word for word.
    if !quiet {
        for w in lora_train::preview::warnings(
            &prepared.train,
            &prepared.tokenizer.eos_token_ids,
            prepared.tokenizer.pad_token_id,
            &prepared.targets,
            &prepared.model.linear_modules().into_iter().map(|(path, _)| path).collect::<Vec<_>>(),
            recipe.lora.layers.is_some(),
        ) {
            eprintln!("warning: {w}");
        }
        for w in [&prepared.frozen_experts, &prepared.no_aux_loss].into_iter().flatten() {
            eprintln!("warning: {w}");
        }
        if let Some(w) = &prepared.template_differs {
            eprintln!("warning: {w}");
        }
        for w in &prepared.train_summary.untrained_warnings {
            eprintln!(
                "warning: {w}; raise max_seq_len or choose [data] turns (untrained_turns = \"error\" makes this an error)"
            );
        }
    }
    if a.dry_run {
        print!("{}", recipe.to_toml());
        println!("\n# adapters on {} modules: {}", prepared.targets.len(), summarize_targets(&prepared.targets));
        if let Some(w) = &prepared.frozen_experts {
            println!("# not adapted: {w}");
        }
        if let Some(w) = &prepared.no_aux_loss {
            println!("# not applied: {w}");
        }
        println!("# trainable parameters: {trainable}");
        let s = &prepared.train_summary;
        let unit = data_unit(&recipe);
        println!(
            "# training data: {} {unit}, {} tokens, {} trained tokens, {} truncated, {} dropped, {} invalid skipped{}",
            s.examples,
            s.tokens,
            s.trained_tokens,
            s.truncated,
            s.dropped,
            s.skipped,
            turns_note(s, &recipe.data.turns)
        );
        if let Some(v) = &prepared.validation_summary {
            println!("# validation data: {} {unit}, {} tokens", v.examples, v.tokens);
        }
        println!("# optimizer steps: {}", prepared.total_steps());
        if let Some(n) = a.show {
            use lora_train::preview::{Marks, render_example};
            let marks = if std::io::stdout().is_terminal() { Marks::Color } else { Marks::Brackets };
            for (i, ex) in prepared.train.iter().take(n).enumerate() {
                println!(
                    "\n# example {} of {}: {} tokens, {} trained",
                    i + 1,
                    prepared.train.len(),
                    ex.ids.len(),
                    ex.trained_tokens()
                );
                println!("{}", render_example(&prepared.tokenizer, ex, marks)?);
            }
            // A preference pair: its prompt with each completion, the trained tokens marked.
            match &prepared.pairs.train {
                PreferenceExamples::Pairs(pairs) => {
                    for (i, pair) in pairs.iter().take(n).enumerate() {
                        let (chosen, rejected) = pair.examples();
                        println!(
                            "\n# pair {} of {}: prompt {} tokens, chosen {}, rejected {}",
                            i + 1,
                            pairs.len(),
                            pair.prompt.len(),
                            pair.chosen.len(),
                            pair.rejected.len()
                        );
                        println!("## chosen\n{}", render_example(&prepared.tokenizer, &chosen, marks)?);
                        println!("## rejected\n{}", render_example(&prepared.tokenizer, &rejected, marks)?);
                    }
                }
                // A KTO example: its completion, and the mismatched one its KL row pairs the prompt with.
                PreferenceExamples::Unpaired(examples) => {
                    for (i, e) in examples.iter().take(n).enumerate() {
                        println!(
                            "\n# example {} of {}: {}, prompt {} tokens, completion {}",
                            i + 1,
                            examples.len(),
                            if e.desirable { "desirable" } else { "undesirable" },
                            e.prompt.len(),
                            e.completion.len()
                        );
                        println!("{}", render_example(&prepared.tokenizer, &e.example(), marks)?);
                        if !e.kl_completion.is_empty() {
                            println!(
                                "## KL row (another example's completion)\n{}",
                                render_example(&prepared.tokenizer, &e.kl_example(), marks)?
                            );
                        }
                    }
                }
            }
        }
        return Ok(());
    }
    let interrupt = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupt.clone();
        // Ctrl-C: finish the current step, checkpoint, exit. A failure to install the handler only
        // loses that convenience.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    let distributed = started.map(|s| s.run);
    let opts = RunOptions { resume: a.resume, force: a.force, interrupt, threads: None, distributed };
    let turns = recipe.data.turns.clone();
    let tty = std::io::stderr().is_terminal();
    let method = recipe.method();
    let unit = data_unit(&recipe);
    let mut bar: Option<ProgressBar> = None;
    // Rank 0 of a data-parallel run speaks for it; the other ranks train quietly.
    let summary = run(prepared, &opts, &mut |e| {
        if quiet {
            return;
        }
        match e {
            Event::Start { train, validation, total_steps, first_step, trainable, targets } => {
                eprintln!(
                    "data: {} {unit}, {} tokens, {} trained tokens, {} truncated, {} dropped, {} invalid skipped{}{}",
                    train.examples,
                    train.tokens,
                    train.trained_tokens,
                    train.truncated,
                    train.dropped,
                    train.skipped,
                    format!(
                        "{}{}",
                        turns_note(train, &turns),
                        if train.packed_rows > 0 {
                            format!(", packed into {} rows", train.packed_rows)
                        } else {
                            String::new()
                        }
                    ),
                    validation.map(|v| format!("; validation: {} {unit}", v.examples)).unwrap_or_default()
                );
                eprintln!(
                    "adapters on {} modules ({trainable} trainable parameters): {}",
                    targets.len(),
                    summarize_targets(targets)
                );
                if first_step > 0 {
                    eprintln!("resuming at step {first_step} of {total_steps}");
                }
                if tty {
                    let pb = ProgressBar::new(total_steps);
                    pb.set_style(
                        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]")
                            .expect("valid template"),
                    );
                    pb.set_position(first_step);
                    bar = Some(pb);
                }
            }
            Event::Step(m, total) => {
                let eval = m.eval_loss.map(|l| format!(" eval_loss {l:.4}")).unwrap_or_default();
                // A preference run: the reward margin and how many pairs the policy ranks right.
                let pref = m
                    .preference
                    .map(|p| {
                        // KTO has a KL estimate where DPO has an accuracy; a step without both sides
                        // of KTO's examples has no margin.
                        let mut s = String::new();
                        if p.rewards_margins.is_finite() {
                            s += &format!(" margin {:.4}", p.rewards_margins);
                        }
                        if p.rewards_accuracies.is_finite() {
                            s += &format!(" accuracy {:.2}", p.rewards_accuracies);
                        }
                        if p.kl.is_finite() {
                            s += &format!(" kl {:.4}", p.kl);
                        }
                        s
                    })
                    .unwrap_or_default();
                let comm = m.comm_s.map(|c| format!(" comm {:.0} ms", c * 1e3)).unwrap_or_default();
                let line = format!(
                    "loss {:.4}{pref} lr {:.2e} grad_norm {:.3} {:.0} tok/s{comm}{eval}",
                    m.loss, m.lr, m.grad_norm, m.tokens_per_s
                );
                match &bar {
                    Some(pb) => {
                        pb.set_message(line);
                        pb.set_position(m.step);
                    }
                    None => eprintln!("step {}/{total} {line}", m.step),
                }
            }
            Event::Checkpoint(p) => {
                let msg = format!("checkpoint: {}", p.display());
                match &bar {
                    Some(pb) => pb.println(msg),
                    None => eprintln!("{msg}"),
                }
            }
            Event::Done(s) => {
                if let Some(pb) = &bar {
                    pb.finish_and_clear();
                }
                eprintln!(
                    "done: {} steps, loss {:.4} -> {:.4}{}",
                    s.steps,
                    s.first_loss,
                    s.last_loss,
                    s.eval_loss
                        .map(|l| match method {
                            Method::Sft => format!(", validation loss {l:.4} (perplexity {:.3})", l.exp()),
                            Method::Preference => format!(", validation loss {l:.4}"),
                        })
                        .unwrap_or_default()
                );
            }
        }
    })?;
    if quiet {
        return Ok(());
    }
    if let (Some(repo), Some(hub)) = (&recipe.output.push_to_hub, &hub) {
        let mut opts = lora_hub::PublishOptions::new(repo.clone());
        opts.base_model = recipe.model.hub_id.clone();
        let published = lora_hub::publish_folder(&summary.dir, &opts, hub, &crate::hub_refs::progress_bars())
            .with_context(|| format!("publishing {} to {repo}", summary.dir.display()))?;
        eprintln!("published: {}", published.commit.url);
    }
    println!("{}", summary.dir.display());
    Ok(())
}

/// `q_proj, v_proj (layers 0-29)` style summary of module paths.
fn summarize_targets(paths: &[String]) -> String {
    let mut names: Vec<&str> = paths.iter().map(|p| p.rsplit('.').next().unwrap_or(p)).collect();
    names.dedup();
    let mut uniq: Vec<&str> = Vec::new();
    for n in names {
        if !uniq.contains(&n) {
            uniq.push(n);
        }
    }
    uniq.join(", ")
}

/// The summary's words on conversations: how many were expanded into one example per assistant turn
/// (and why), and how many assistant turns have no trained token.
fn turns_note(s: &lora_train::data::DataSummary, mode: &str) -> String {
    let mut out = String::new();
    if s.expanded > 0 {
        let why = if mode == "auto" { " (turns = auto: the chat template rewrites history)" } else { "" };
        out += &format!(", {} conversations expanded into one example per assistant turn{why}", s.expanded);
    }
    if s.untrained_turns > 0 {
        out += &format!(", {} assistant turns with no trained token", s.untrained_turns);
    }
    out
}

/// What the recipe's data counts: examples, preference pairs, or KTO's unpaired examples.
fn data_unit(recipe: &Recipe) -> &'static str {
    match recipe.method() {
        Method::Sft => "examples",
        Method::Preference if recipe.is_kto() => "KTO examples",
        Method::Preference => "preference pairs",
    }
}

/// This process's rank of a data-parallel run when a launcher started several (`lora launch`,
/// torchrun, `mpirun`, `srun`), on the engine the recipe picks; none for a single process.
fn distributed_run(recipe: &lora_train::Recipe) -> Result<Option<lora_train::distributed::engine::Started>> {
    let reduce = if recipe.train.grad_reduce == "fast" {
        lora_train::distributed::Reduce::Fast
    } else {
        lora_train::distributed::Reduce::Exact
    };
    let t = &recipe.train;
    let timeout = std::time::Duration::from_secs(t.distributed_timeout.unwrap_or(600));
    let started = lora_train::distributed::engine::start(&t.distributed, &t.device, reduce, timeout)
        .context("starting the data-parallel run")?;
    // Rank 0 speaks for the run (the ranks' lines would interleave).
    if let Some(s) = started.as_ref().filter(|s| s.run.rank == 0) {
        eprintln!(
            "distributed: {} rank{} ({} engine, started by {}{}), {} reduction",
            s.run.world,
            if s.run.world == 1 { "" } else { "s" },
            s.engine,
            s.launcher,
            if t.device == "cuda" { ", each on its machine's GPU LOCAL_RANK" } else { "" },
            t.grad_reduce
        );
    }
    Ok(started)
}
