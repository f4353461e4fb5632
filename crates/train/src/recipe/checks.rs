//! Values that parse but cannot work (a zero learning rate, a missing data file, a rank of 0, ...),
//! refused with the key's position.

use super::{Files, Recipe, Source, Targets};
use crate::error::{Result, TrainError};

impl Recipe {
    /// Checks values that parse but cannot work; errors point at the key.
    pub fn validate(&self, src: &Source) -> Result<()> {
        let err = |section: &str, key: &str, msg: String| {
            let at = match src.locate(section, key) {
                Some((l, c)) => format!("{}:{l}:{c}", src.name),
                None => src.name.clone(),
            };
            Err(TrainError::Recipe(format!("{at}: {section}.{key} {msg}")))
        };
        self.validate_method(src)?;
        let (l, d, t) = (&self.lora, &self.data, &self.train);
        if l.r == 0 {
            return err("lora", "r", "must be at least 1".into());
        }
        if !(l.alpha > 0.0 && l.alpha.is_finite()) {
            return err("lora", "alpha", format!("must be positive, got {}", l.alpha));
        }
        if !(0.0..1.0).contains(&l.dropout) {
            return err("lora", "dropout", format!("must be in [0, 1), got {}", l.dropout));
        }
        let moving = lora_core::adapter::base_init::MovingInit::parse(&l.init);
        if !["kaiming", "gaussian"].contains(&l.init.as_str()) && moving.is_none() {
            return err(
                "lora",
                "init",
                format!(
                    "must be \"kaiming\", \"gaussian\", \"pissa\", \"pissa_niter_N\" or \"olora\", got \"{}\"",
                    l.init
                ),
            );
        }
        if moving.is_some() && l.use_dora {
            return err(
                "lora",
                "init",
                format!(
                    "\"{}\" cannot be combined with use_dora (PEFT's conversion of the adapter to the original base is a plain LoRA)",
                    l.init
                ),
            );
        }
        if moving.is_some() && l.init_from.is_some() {
            return err(
                "lora",
                "init",
                format!("\"{}\" starts a new adapter; init_from continues one: choose one", l.init),
            );
        }
        if let Some(t) = &l.trainable_token_indices {
            if let Some(m) = t.unsupported() {
                return err(
                    "lora",
                    "trainable_token_indices",
                    format!("names '{m}'; lora trains embed_tokens and lm_head rows"),
                );
            }
            let ids = [t.ids_for("embed_tokens"), t.ids_for("lm_head")];
            if ids.iter().all(Option::is_none) || ids.iter().flatten().any(|v| v.is_empty()) {
                return err("lora", "trainable_token_indices", "must list at least one token id".into());
            }
        }
        if !d.add_special_tokens.is_empty() && !matches!(self.method(), super::Method::Sft) {
            return err("data", "add_special_tokens", "trains with SFT only for now".into());
        }
        if !d.add_special_tokens.is_empty() && l.init_from.is_some() {
            return err(
                "data",
                "add_special_tokens",
                "cannot grow the tokenizer of an init_from adapter; its own tokenizer decides".into(),
            );
        }
        if let Some(t) = d.add_special_tokens.iter().find(|t| t.is_empty()) {
            return err("data", "add_special_tokens", format!("holds an empty token {t:?}"));
        }
        if l.trainable_token_indices.is_some() && !matches!(self.method(), super::Method::Sft) {
            return err(
                "lora",
                "trainable_token_indices",
                "trains with SFT only for now (a preference method's reference would see the trained rows)".into(),
            );
        }
        if let Targets::Names(n) = &l.targets
            && n.is_empty()
        {
            return err("lora", "targets", "must name at least one module".into());
        }
        if l.layers.is_some() && matches!(l.targets, Targets::Pattern(_)) {
            // PEFT refuses layers_to_transform with a string target_modules; our adapters must load there.
            return err(
                "lora",
                "layers",
                "cannot be combined with a string `targets` (PEFT refuses it); list module names".into(),
            );
        }
        if !["auto", "text", "completion", "alpaca", "chat", "preference"].contains(&d.format.as_str()) {
            return err(
                "data",
                "format",
                format!("must be auto, text, completion, alpaca, chat or preference, got \"{}\"", d.format),
            );
        }
        if !["truncate", "drop"].contains(&d.overflow.as_str()) {
            return err("data", "overflow", format!("must be \"truncate\" or \"drop\", got \"{}\"", d.overflow));
        }
        if let Err(m) = crate::data::turns::TurnMode::parse(&d.turns) {
            return err("data", "turns", m);
        }
        if !["warn", "error"].contains(&d.untrained_turns.as_str()) {
            return err(
                "data",
                "untrained_turns",
                format!("must be \"warn\" or \"error\", got \"{}\"", d.untrained_turns),
            );
        }
        if d.reasoning_field.as_deref().is_some_and(|f| f.is_empty() || ["role", "content"].contains(&f)) {
            return err("data", "reasoning_field", "must name a field other than role and content".to_string());
        }
        for (p, w) in
            d.train.weighted().iter().chain(d.validation.iter().flat_map(Files::weighted).collect::<Vec<_>>().iter())
        {
            if !(*w >= 0.0 && w.is_finite()) {
                return err("data", "train", format!("weight of '{}' must be >= 0, got {w}", p.display()));
            }
        }
        if d.max_seq_len < 2 {
            return err("data", "max_seq_len", format!("must be at least 2, got {}", d.max_seq_len));
        }
        if let Some(f) = d.validation_fraction {
            if !(f > 0.0 && f < 1.0) {
                return err("data", "validation_fraction", format!("must be between 0 and 1, got {f}"));
            }
            if d.validation.is_some() {
                return err("data", "validation_fraction", "cannot be combined with `validation` files".into());
            }
        }
        if t.batch_size == 0 {
            return err("train", "batch_size", "must be at least 1".into());
        }
        if t.grad_accum == 0 {
            return err("train", "grad_accum", "must be at least 1".into());
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return err("train", "lr", format!("must be positive, got {}", t.lr));
        }
        if t.epochs == 0 && t.max_steps.is_none() {
            return err("train", "epochs", "must be at least 1 (or set max_steps)".into());
        }
        if t.max_steps == Some(0) {
            return err("train", "max_steps", "must be at least 1".into());
        }
        if !["constant", "linear", "cosine"].contains(&t.schedule.as_str()) {
            return err("train", "schedule", format!("must be constant, linear or cosine, got \"{}\"", t.schedule));
        }
        if !["exact", "fast"].contains(&t.grad_reduce.as_str()) {
            return err("train", "grad_reduce", format!("must be \"exact\" or \"fast\", got \"{}\"", t.grad_reduce));
        }
        if !crate::distributed::engine::SETTINGS.contains(&t.distributed.as_str()) {
            return err(
                "train",
                "distributed",
                format!("must be one of {:?}, got \"{}\"", crate::distributed::engine::SETTINGS, t.distributed),
            );
        }
        if t.distributed_timeout == Some(0) {
            return err("train", "distributed_timeout", "must be at least 1 second".into());
        }
        if let Some(r) = t.loraplus_lr_ratio
            && !(r.is_finite() && r > 0.0)
        {
            return err("train", "loraplus_lr_ratio", format!("must be a positive number, got {r}"));
        }
        if !(t.weight_decay >= 0.0) {
            return err("train", "weight_decay", format!("must be >= 0, got {}", t.weight_decay));
        }
        if !(t.max_grad_norm >= 0.0) {
            return err("train", "max_grad_norm", format!("must be >= 0, got {}", t.max_grad_norm));
        }
        if !["cpu", "cuda", "wgpu"].contains(&t.device.as_str()) {
            return err("train", "device", format!("must be \"cpu\", \"cuda\" or \"wgpu\", got \"{}\"", t.device));
        }
        if !["f32", "bf16"].contains(&t.dtype.as_str()) {
            return err("train", "dtype", format!("must be \"f32\" or \"bf16\", got \"{}\"", t.dtype));
        }
        if self.model.dtype != "auto" && self.model.dtype.parse::<lora_core::BaseDtype>().is_err() {
            return err(
                "model",
                "dtype",
                format!("must be \"auto\", \"f32\", \"bf16\" or \"f16\", got \"{}\"", self.model.dtype),
            );
        }
        if lora_core::Quantize::parse(&self.model.quantize, false).is_err() {
            let hint =
                if self.model.quantize.to_ascii_lowercase().contains('4') { "; did you mean \"nf4\"?" } else { "" };
            return err(
                "model",
                "quantize",
                format!("must be \"none\" or \"nf4\", got \"{}\"{hint}", self.model.quantize),
            );
        }
        if self.model.double_quant && !self.model.quantize.to_ascii_lowercase().starts_with("nf4") {
            return err("model", "double_quant", "needs quantize = \"nf4\"".into());
        }
        let gguf = lora_merge::gguf::is_gguf_file(&self.model.base);
        if !self.model.base.is_dir() && !gguf {
            return err(
                "model",
                "base",
                format!("'{}' is not a model folder or a .gguf file", self.model.base.display()),
            );
        }
        if let Some(repo) = &self.output.push_to_hub {
            if !matches!(lora_hub::RepoId::parse(repo), Ok(_)) || !repo.contains('/') {
                return err("output", "push_to_hub", format!("'{repo}' is not a Hub repository id (org/name)"));
            }
            if self.model.hub_id.is_none() {
                return err(
                    "output",
                    "push_to_hub",
                    "needs the base's Hub id for the model card: set model.hub_id = \"org/name\" (or give model.base as a Hub id)".into(),
                );
            }
        }
        for p in self
            .data
            .train
            .to_vec()
            .iter()
            .chain(self.data.validation.iter().flat_map(Files::to_vec).collect::<Vec<_>>().iter())
        {
            if !p.is_file() {
                let key = if self.data.train.to_vec().contains(p) { "train" } else { "validation" };
                return err("data", key, format!("file '{}' does not exist", p.display()));
            }
        }
        Ok(())
    }
}
