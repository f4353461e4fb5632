//! The training loop: micro-batches with gradient accumulation normalised by the number of target
//! tokens of the whole optimizer step, global-norm clipping, AdamW, warm-up and decay, periodic
//! evaluation and checkpoints, and a run folder that PEFT reads as an adapter.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use lora_core::adapter::base_init::{InitialFactors, MovingInit};
use lora_core::adapter::config::{AdapterConfig, TargetModules};
use lora_core::adapter::{LoraInit, LoraSpec, attach_new_moving, load_adapter, save_adapter_converted};
use lora_core::burn::tensor::Device;
use lora_core::io::safetensors_write::{StoredDtype, write_atomic};
use lora_core::{Backend, CausalLm, Tokenizer};

pub use crate::adapter_files::{adapter_config, base_model_name};
use crate::adapter_files::{add_special_tokens, with_special_tokens};
use crate::batching::{hold_out, micro_batches_per_epoch};
use crate::checkpoint::{self, CheckpointState};
use crate::data::chat_template::{ChatTemplate, FIXED_DATE_UNIX};
use crate::data::turns::TurnMode;
use crate::data::{DataOptions, DataSummary, Example, Overflow, load_examples, packing};
use crate::error::{Result, TrainError};
use crate::optimizer::{AdamW, AdamWConfig};
use crate::pool::{on_pool, worker_pool};
use crate::preference::{PreferenceData, PreferenceTraining, load_preference_data};
use crate::recipe::{Method, Recipe, Targets};
use crate::run_files::{self, Manifest, StepMetrics, sha256_bytes, sha256_file};
use crate::run_step::{Runner, StepDone};
use crate::schedule::Schedule;
pub use crate::step::{StepOptions, StepOutcome, train_step};
use crate::trainable::{
    adapter_tensors, loraplus_scales, set_adapter_tensors, set_training, tensor_names, trainable_parameters,
};

/// What happens during a run, for the caller to display; the library itself prints nothing.
#[derive(Debug)]
pub enum Event<'a> {
    /// Everything is loaded and validated; training starts at `first_step`.
    Start {
        /// Training data counts.
        train: &'a DataSummary,
        /// Validation data counts.
        validation: Option<&'a DataSummary>,
        /// Steps of the whole run.
        total_steps: u64,
        /// Steps already done (resume).
        first_step: u64,
        /// Trainable parameters.
        trainable: usize,
        /// Module paths with adapters.
        targets: &'a [String],
    },
    /// One optimizer step finished.
    Step(&'a StepMetrics, u64),
    /// A checkpoint was written.
    Checkpoint(&'a Path),
    /// The run finished.
    Done(&'a RunSummary),
}

/// Options of a run that are not part of the recipe.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the newest checkpoint of the output folder.
    pub resume: bool,
    /// Replace an existing output folder.
    pub force: bool,
    /// Set (e.g. by Ctrl-C) to stop after the current step with a checkpoint.
    pub interrupt: Arc<AtomicBool>,
    /// Worker threads; none: as many as the current rayon pool (`RAYON_NUM_THREADS`, or the
    /// cores). `lora verify` asks for the manifest's count, and gets an error if it cannot have it.
    pub threads: Option<usize>,
    /// This process's rank in a data-parallel run (none: the run is this process's alone).
    pub distributed: Option<crate::distributed::DistributedRun>,
}

/// The outcome of a finished run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run folder.
    pub dir: PathBuf,
    /// Steps taken in total.
    pub steps: u64,
    /// Loss of the first step of the run.
    pub first_loss: f64,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Final validation loss.
    pub eval_loss: Option<f64>,
    /// sha256 of the adapter file.
    pub adapter_sha256: String,
}

/// Everything a run needs, loaded and validated before anything is written.
pub struct Prepared {
    /// The recipe (paths resolved).
    pub recipe: Recipe,
    /// The model with freshly initialised, trainable adapters.
    pub model: CausalLm,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Training examples.
    pub train: Vec<Example>,
    /// Validation examples.
    pub validation: Vec<Example>,
    /// Training data counts.
    pub train_summary: DataSummary,
    /// Validation data counts.
    pub validation_summary: Option<DataSummary>,
    /// Module paths with adapters.
    pub targets: Vec<String>,
    /// The device.
    pub device: Device,
    /// The backend.
    pub backend: Backend,
    /// Set when the recipe's `data.chat_template` renders a conversation differently from the
    /// model's own template: what differs, for a warning.
    pub template_differs: Option<String>,
    /// Set on a mixture-of-experts model, whose routed experts no adapter reaches yet: what is and
    /// isn't adapted, for a warning (peers' users find out too late that only attention trained).
    pub frozen_experts: Option<String>,
    /// Set on a mixture-of-experts model whose config.json asks transformers to add the routers'
    /// load-balancing loss to the training loss (`output_router_logits`), which lora does not add:
    /// what differs, for a warning.
    pub no_aux_loss: Option<String>,
    /// A preference run's training and validation pairs (`train` and `validation` are then empty).
    pub pairs: PreferenceData,
    /// The adapter_config.json the run writes: the recipe's, or the `init_from` adapter's.
    pub adapter: AdapterConfig,
    /// The factors the adapters started from when `[lora] init` moved the base (PiSSA, OLoRA): the
    /// adapter is saved against the original base through them (empty otherwise).
    pub initial: Vec<InitialFactors>,
    /// Tokens `[data] add_special_tokens` added to the tokenizer (id, token): the adapter folder
    /// carries the grown tokenizer.
    pub added_tokens: Vec<(u32, String)>,
}

impl Prepared {
    /// Optimizer steps of the whole run.
    pub fn total_steps(&self) -> u64 {
        let t = &self.recipe.train;
        let n = match self.recipe.method() {
            Method::Sft => self.train.len(),
            Method::Preference => self.pairs.train.len(),
        };
        let micro = micro_batches_per_epoch(n, t.batch_size);
        t.max_steps.unwrap_or_else(|| (micro * t.epochs as u64).div_ceil(t.grad_accum as u64).max(1))
    }
}

/// Loads the model and data of a recipe and attaches the adapters: every error a recipe can cause
/// surfaces here, before a run folder exists.
pub fn prepare(recipe: &Recipe) -> Result<Prepared> {
    prepare_on(recipe, 0)
}

/// [`prepare`] on GPU `gpu` of this machine (a data-parallel rank's local rank) when the recipe's
/// device is `cuda`.
pub fn prepare_on(recipe: &Recipe, gpu: usize) -> Result<Prepared> {
    let backend: Backend = recipe.train.device.parse()?;
    let device = backend.device_at(gpu)?;
    // Config and tokenizer first: bad data is reported before the weights are read.
    let base = &recipe.model.base;
    let (_config, tokenizer) = if base.is_file() {
        // A GGUF file: its own configuration; a tokenizer.json beside it, else the one it carries.
        let file =
            lora_merge::gguf::GgufFile::open(base).map_err(|e| TrainError::Recipe(format!("model.base: {e}")))?;
        let config = lora_core::io::gguf::model::config(&file)?;
        let (tokenizer, _) = Tokenizer::load_gguf(base, &file, &config)?;
        (config, tokenizer)
    } else {
        let config = lora_core::ModelConfig::from_file(base.join("config.json"))?;
        let tokenizer = Tokenizer::load_dir(base, &config)?;
        (config, tokenizer)
    };
    let d = &recipe.data;
    // Special tokens added before any text is tokenized, so that the data's spell them as one token.
    let mut tokenizer = tokenizer;
    let (special_ids, added_tokens) = add_special_tokens(&mut tokenizer, &d.add_special_tokens);
    // The chat template: the recipe's (inline or a .jinja file), else the model's.
    let template_source = match &d.chat_template {
        Some(t) if !t.contains("{%") && !t.contains("{{") => Some(
            std::fs::read_to_string(t)
                .map_err(|e| TrainError::Recipe(format!("data.chat_template: cannot read '{t}': {e}")))?,
        ),
        Some(t) => Some(t.clone()),
        None => tokenizer.chat_template.clone(),
    };
    let template = template_source
        .map(|src| ChatTemplate::for_tokenizer(&src, &tokenizer, FIXED_DATE_UNIX))
        .transpose()
        .map_err(|m| TrainError::Recipe(format!("data.chat_template: {m}")))?
        .map(|t| t.with_kwargs(d.template_kwargs.clone().unwrap_or_default()))
        .transpose()
        .map_err(|m| TrainError::Recipe(format!("data.{m}")))?;
    // A replaced template that the model's own would not reproduce: the adapter learns a format
    // that inference with the model's template (lora generate, llama.cpp, Ollama) will not send.
    let template_differs = match (&d.chat_template, &tokenizer.chat_template, &template) {
        (Some(_), Some(own), Some(ours)) => ChatTemplate::for_tokenizer(own, &tokenizer, FIXED_DATE_UNIX)
            .ok()
            .and_then(|own| crate::preview::template_difference(ours, &own)),
        _ => None,
    };
    let opts = DataOptions {
        format: &d.format,
        max_seq_len: d.max_seq_len,
        overflow: if d.overflow == "drop" { Overflow::Drop } else { Overflow::Truncate },
        train_on_inputs: d.train_on_inputs,
        skip_invalid: d.skip_invalid,
        // Packing happens after the validation split, on the training examples only.
        packing: false,
        template: template.as_ref(),
        turns: TurnMode::parse(&d.turns).map_err(|m| TrainError::Recipe(format!("data.turns: {m}")))?,
        reasoning_field: d.reasoning_field.as_deref(),
        untrained_turns_are_errors: d.untrained_turns == "error",
        seed: recipe.train.seed,
    };
    let mut pairs = PreferenceData::default();
    let (mut train, mut train_summary) = match recipe.method() {
        Method::Sft => load_examples(&d.train.weighted(), &opts, &tokenizer)?,
        Method::Preference => {
            pairs = load_preference_data(recipe, &tokenizer, template.as_ref())?;
            (Vec::new(), pairs.train_summary.clone())
        }
    };
    let (validation, validation_summary) = match (&d.validation, d.validation_fraction) {
        _ if recipe.method() == Method::Preference => (Vec::new(), pairs.validation_summary.clone()),
        (Some(files), _) => {
            let (v, s) = load_examples(&files.weighted(), &opts, &tokenizer)?;
            (v, Some(s))
        }
        (None, Some(frac)) => {
            // Hold out a seeded random subset.
            let (keep, val) = hold_out(train, frac, recipe.train.seed, "examples").map_err(TrainError::Data)?;
            train = keep;
            train_summary =
                DataSummary { examples: train.len(), ..DataSummary::of(&train) }.with_policy(&train_summary);
            let vs = DataSummary::of(&val);
            (val, Some(vs))
        }
        (None, None) => (Vec::new(), None),
    };
    if d.packing {
        train = packing::pack(&train, d.max_seq_len);
        train_summary.packed_rows = train.len();
    }
    let mut model = CausalLm::load_dir_with(&recipe.model.base, &device, &recipe.model.load_options(backend))?;
    if !added_tokens.is_empty() {
        model.grow_vocab(tokenizer.vocab_size())?;
    }
    let l = &recipe.lora;
    let spec = LoraSpec {
        r: l.r,
        alpha: l.alpha,
        dropout: l.dropout,
        targets: match &l.targets {
            Targets::Names(n) => TargetModules::Names(n.clone()),
            Targets::Pattern(p) => TargetModules::Pattern(p.clone()),
        },
        use_rslora: l.rslora,
        init: match (l.init.as_str(), MovingInit::parse(&l.init)) {
            (_, Some(m)) => LoraInit::Moving(m),
            ("gaussian", _) => LoraInit::Gaussian,
            _ => LoraInit::KaimingUniform,
        },
        layers_to_transform: l.layers.clone(),
        use_dora: l.use_dora,
    };
    let (targets, adapter, initial) = match &l.init_from {
        None => {
            let (targets, initial) = attach_new_moving(&mut model, &spec, recipe.train.seed, true)
                .map_err(|e| TrainError::Recipe(format!("lora.targets: {e}")))?;
            let indices = with_special_tokens(l.trainable_token_indices.clone(), &special_ids, &model);
            if let Some(ids) = &indices {
                lora_core::adapter::tokens::attach_new_tokens(&mut model, ids, true)
                    .map_err(|e| TrainError::Recipe(format!("lora.trainable_token_indices: {e}")))?;
            }
            let mut cfg = adapter_config(recipe);
            cfg.trainable_token_indices = indices;
            lora_core::adapter::experts::peft_config_for_experts(&mut cfg, &targets);
            (targets, cfg, initial)
        }
        Some(dir) => {
            let mut cfg = load_adapter(&mut model, dir, 1.0, true)
                .map_err(|e| TrainError::Recipe(format!("lora.init_from: {}: {e}", dir.display())))?;
            let targets =
                model.linear_modules().into_iter().filter(|(_, l)| !l.lora.is_empty()).map(|(n, _)| n).collect();
            cfg.base_model_name_or_path = Some(base_model_name(recipe));
            cfg.inference_mode = true;
            (targets, cfg, Vec::new())
        }
    };
    let experts_adapted = targets.iter().any(|t| lora_core::adapter::expert_projection(t).is_some());
    let frozen_experts = model.config.moe.as_ref().filter(|_| !experts_adapted).map(|m| {
        let sparse = m.sparse.iter().filter(|&&s| s).count();
        format!(
            "the routed experts of this mixture-of-experts model ({sparse} sparse layers × {} experts) are not \
             adapted: name gate_proj, up_proj and down_proj (or use all-linear) to train them too",
            m.num_experts
        )
    });
    let no_aux_loss = model.config.moe.as_ref().and_then(|m| m.router_aux_loss_coef).map(|coef| {
        format!(
            "config.json sets output_router_logits, with which transformers adds {coef} x the routers' \
             load-balancing loss to the training loss; lora trains on the next-token loss alone, so the loss \
             and the gradients differ from a transformers run with it"
        )
    });
    Ok(Prepared {
        recipe: recipe.clone(),
        frozen_experts,
        no_aux_loss,
        model,
        tokenizer,
        train,
        validation,
        train_summary,
        validation_summary,
        targets,
        device,
        backend,
        template_differs,
        pairs,
        adapter,
        initial,
        added_tokens,
    })
}

/// Runs a prepared recipe to the end (or to an interruption), writing the run folder.
pub fn run(mut p: Prepared, opts: &RunOptions, observe: &mut dyn FnMut(Event<'_>)) -> Result<RunSummary> {
    // The loss chunks' logits are re-allocated every step: keep their block (large_blocks.rs).
    let _keep = lora_core::kernels::large_blocks::KeepLargeBlocks::keeping();
    let recipe_text = p.recipe.to_toml();
    let recipe_sha = sha256_bytes(recipe_text.as_bytes());
    let dir = p.recipe.output.dir.clone();
    let t = p.recipe.train.clone();
    let schedule = Schedule::parse(&t.schedule).expect("validated");
    let pad_id = p.tokenizer.pad_token_id.unwrap_or(0); // the tokenizer already falls back to EOS
    let names = tensor_names(&p.model);
    let threads = opts.threads.unwrap_or_else(rayon::current_num_threads);
    let poll = p.backend.is_cpu();
    let pool = match worker_pool(threads) {
        Ok(pool) => Some(pool),
        Err(e) if opts.threads.is_some() => {
            return Err(TrainError::Verify(format!("cannot start {threads} worker threads: {e}")));
        }
        Err(_) => None,
    };
    let mut opt =
        AdamW::new(AdamWConfig { weight_decay: t.weight_decay, ..AdamWConfig::default() }, &adapter_tensors(&p.model));
    if let Some(ratio) = t.loraplus_lr_ratio {
        // LoRA+: every B, and DoRA's magnitudes (PEFT's 1-D parameters), at `ratio` times the rate.
        opt.lr_scales = loraplus_scales(&p.model, ratio);
    }

    // A data-parallel rank: rank 0 alone writes the run folder; every rank reads a checkpoint.
    let dist = opts.distributed.clone();
    let writer = dist.as_ref().is_none_or(|d| d.rank == 0);
    if let Some(d) = &dist {
        // Every rank runs the same recipe on the same examples, or none starts.
        let digest = crate::distributed::agree::run_digest(&recipe_text, &p.train, &p.pairs.train);
        if let Some(r) = d.with(|comm| crate::distributed::agree::first_differing(comm, &digest))? {
            return Err(TrainError::Recipe(format!(
                "rank {r} runs another recipe or other data than rank 0 (their sha256 differ); every rank needs \
                 the same recipe, data and base"
            )));
        }
    }
    // The run folder: refuse to overwrite, or pick up the newest checkpoint.
    let mut first_step = 0u64;
    let mut micro_done = 0u64;
    if dir.exists() {
        if opts.resume {
            let Some(latest) = checkpoint::list(&dir)?.pop() else {
                return Err(TrainError::Recipe(format!("{}: no checkpoint to resume from", dir.display())));
            };
            let (state, params) = checkpoint::load(&latest, &names, &mut opt, &p.device)?;
            if state.recipe_sha256 != recipe_sha {
                return Err(TrainError::Recipe(format!(
                    "{}: the checkpoint was made with another recipe; resume with the recipe of the run ({})",
                    latest.display(),
                    dir.join("recipe.toml").display()
                )));
            }
            set_adapter_tensors(&mut p.model, params);
            first_step = state.step;
            micro_done = state.micro_batches;
            if writer {
                run_files::write_metrics(&dir, &run_files::read_metrics(&dir, first_step))?;
            }
        } else if opts.force {
            if writer {
                std::fs::remove_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
            }
        } else if writer {
            return Err(TrainError::OutputExists(dir));
        }
    } else if opts.resume {
        return Err(TrainError::Recipe(format!("{}: nothing to resume (the folder does not exist)", dir.display())));
    }
    if writer {
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        write_atomic(&dir.join("recipe.toml"), recipe_text.as_bytes())?;
        if first_step == 0 {
            let _ = std::fs::remove_file(dir.join("metrics.jsonl"));
        }
    }

    let total = p.total_steps();
    observe(Event::Start {
        train: &p.train_summary,
        validation: p.validation_summary.as_ref(),
        total_steps: total,
        first_step,
        trainable: trainable_parameters(&p.model),
        targets: &p.targets,
    });

    // DPO: the reference's log-probabilities of the training pairs, once, before the first step.
    let preference = match p.recipe.method() {
        Method::Sft => None,
        Method::Preference => Some(on_pool(pool.as_ref(), poll, || {
            let (recipe, model, examples) = (&p.recipe, &mut p.model, &p.pairs.train);
            match &dist {
                None => PreferenceTraining::new(recipe, model, examples, pad_id, None),
                Some(d) => d.with(|comm| PreferenceTraining::new(recipe, model, examples, pad_id, Some(comm))),
            }
        })?),
    };
    let runner = Runner { pool: pool.as_ref(), poll, dist: dist.as_ref() };
    let mut first_loss = f64::NAN;
    let mut last_loss = f64::NAN;
    let mut eval_loss = None;
    for step in first_step..total {
        let started = Instant::now();
        set_training(&mut p.model, true);
        let lr = schedule.lr(t.lr, step, t.warmup_steps, total);
        let options = StepOptions { max_grad_norm: t.max_grad_norm, gradient_checkpointing: t.gradient_checkpointing };
        let StepDone { outcome: StepOutcome { loss, grad_norm }, seen_tokens, preference: step_preference, comm_s } =
            runner.step(&mut p, &mut opt, preference.as_ref(), step, micro_done, lr, options)?;
        if !loss.is_finite() {
            return Err(TrainError::NonFinite { step: step + 1, value: loss });
        }
        micro_done += t.grad_accum as u64;

        let done = step + 1;
        let elapsed = started.elapsed().as_secs_f64();
        let mut metrics = StepMetrics {
            step: done,
            loss,
            lr,
            grad_norm,
            tokens_per_s: seen_tokens as f64 / elapsed.max(1e-9),
            eval_loss: None,
            preference: step_preference,
            comm_s,
        };
        if (t.eval_every > 0 && done % t.eval_every == 0) || done == total {
            metrics.eval_loss = runner.evaluate(&mut p, preference.as_ref())?;
            eval_loss = metrics.eval_loss.or(eval_loss);
        }
        if first_loss.is_nan() {
            first_loss = loss;
        }
        last_loss = loss;
        if writer {
            run_files::append_metrics(&dir, &metrics)?;
        }
        observe(Event::Step(&metrics, total));

        let mut interrupted = opts.interrupt.load(Ordering::SeqCst);
        if let Some(d) = &dist {
            // Ranks stop at the same step: one interrupted rank (Ctrl-C reaches them at different
            // moments) interrupts all.
            let mut any = [f32::from(u8::from(interrupted))];
            d.with(|comm| comm.all_reduce_sum(&mut any))?;
            interrupted = any[0] > 0.0;
        }
        if (t.save_every > 0 && done % t.save_every == 0 && done < total) || (interrupted && done < total) {
            let state = CheckpointState {
                step: done,
                micro_batches: micro_done,
                seed: t.seed,
                recipe_sha256: recipe_sha.clone(),
            };
            let ck = if writer {
                let ck = checkpoint::save(&dir, &names, &adapter_tensors(&p.model), &opt, &state)?;
                observe(Event::Checkpoint(&ck));
                ck
            } else {
                checkpoint::checkpoints_dir(&dir)
            };
            if let Some(d) = &dist {
                d.barrier()?; // the checkpoint is complete before any rank goes on (or stops)
            }
            if interrupted {
                return Err(TrainError::Interrupted { step: done, checkpoint: ck });
            }
        }
    }

    // The adapter, its card, the curve and the manifest. The optimizer's moments (twice the adapter)
    // are not needed any more: freed first, the copy the file is written from takes their place
    // (on a 27B shape the end of the run was its peak by 0.35 GB).
    drop(opt);
    if let Some(d) = dist.as_ref().filter(|_| !writer) {
        // Rank 0 writes the run folder; the others return once it is complete.
        d.barrier()?;
        let adapter_sha256 = sha256_file(&dir.join("adapter_model.safetensors"))?;
        return Ok(RunSummary { dir, steps: total, first_loss, last_loss, eval_loss, adapter_sha256 });
    }
    let dtype = StoredDtype::parse(&t.dtype).expect("validated");
    save_adapter_converted(&p.model, &dir, &p.adapter, dtype, &p.initial)?;
    if !p.added_tokens.is_empty() {
        p.tokenizer.save_with_added(&dir, &p.added_tokens)?;
    }
    let metrics = run_files::read_metrics(&dir, total);
    write_atomic(&dir.join("loss.svg"), run_files::loss_svg(&metrics).as_bytes())?;
    let card = crate::run_card::card(&p, &recipe_text, &metrics, total, eval_loss);
    write_atomic(&dir.join("README.md"), card.as_bytes())?;
    let adapter_sha256 = sha256_file(&dir.join("adapter_model.safetensors"))?;
    let manifest = Manifest {
        tool: "lora".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        backend: p.backend.to_string(),
        seed: t.seed,
        inputs: input_hashes(&p.recipe)?,
        adapter_sha256: adapter_sha256.clone(),
        base_dtype: p.model.load_options.dtype.to_string(),
        base_quantization: p.model.load_options.quantize.to_string(),
        threads: Some(pool.as_ref().map_or_else(rayon::current_num_threads, rayon::ThreadPool::current_num_threads)),
        world_size: dist.as_ref().map(|d| d.world),
        grad_reduce: dist.as_ref().map(|d| format!("{:?}", d.reduce).to_lowercase()),
    };
    write_atomic(&dir.join("manifest.json"), serde_json::to_string_pretty(&manifest).expect("serializes").as_bytes())?;
    let _ = std::fs::remove_dir_all(checkpoint::checkpoints_dir(&dir));
    if let Some(d) = &dist {
        d.barrier()?;
    }
    let summary = RunSummary { dir, steps: total, first_loss, last_loss, eval_loss, adapter_sha256 };
    observe(Event::Done(&summary));
    Ok(summary)
}

/// sha256 of every input of a recipe: base model files and data files.
pub fn input_hashes(recipe: &Recipe) -> Result<std::collections::BTreeMap<PathBuf, String>> {
    let mut out = std::collections::BTreeMap::new();
    let mut files = run_files::model_input_files(&recipe.model.base);
    files.extend(recipe.data.train.to_vec());
    if let Some(v) = &recipe.data.validation {
        files.extend(v.to_vec());
    }
    // Adapters the run starts from or compares against.
    let reference = recipe.preference.as_ref().and_then(|p| p.reference_adapter.clone());
    for dir in recipe.lora.init_from.iter().chain(reference.iter()) {
        files.extend(
            ["adapter_config.json", "adapter_model.safetensors"]
                .map(|f| dir.join(f))
                .into_iter()
                .filter(|f| f.is_file()),
        );
    }
    for f in files {
        let h = sha256_file(&f)?;
        out.insert(f, h);
    }
    Ok(out)
}
