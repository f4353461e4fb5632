//! `[lora] init_from`: a run that starts from an existing PEFT adapter takes that adapter's rank,
//! alpha, dropout, targets, rsLoRA scaling and layers as its `[lora]` values, so that the resolved
//! recipe (the run folder's `recipe.toml`, which `lora verify` reads) says what was trained. A key
//! written in the recipe that says otherwise is refused.

use lora_formats::peft::{AdapterConfig, TargetModules};

use super::{Recipe, Source, Targets};
use crate::error::{Result, TrainError};

impl Recipe {
    /// Replaces the `[lora]` values by the `init_from` adapter's (nothing without `init_from`).
    pub(super) fn adopt_init_from(&mut self, src: &Source) -> Result<()> {
        let Some(dir) = self.lora.init_from.clone() else { return Ok(()) };
        let at = |key: &str| match src.locate("lora", key) {
            Some((l, c)) => format!("{}:{l}:{c}", src.name),
            None => src.name.clone(),
        };
        let path = dir.join("adapter_config.json");
        if !path.is_file() {
            return Err(TrainError::Recipe(format!(
                "{}: lora.init_from '{}' is not a PEFT adapter folder (no adapter_config.json)",
                at("init_from"),
                dir.display()
            )));
        }
        let cfg = AdapterConfig::load(&path)
            .map_err(|e| TrainError::Recipe(format!("{}: lora.init_from: {e}", at("init_from"))))?;
        let targets = match cfg.target_modules.clone() {
            Some(TargetModules::Names(n)) => Targets::Names(n),
            Some(TargetModules::Pattern(p)) => Targets::Pattern(p),
            None => {
                return Err(TrainError::Recipe(format!(
                    "{}: lora.init_from: {} names no target_modules",
                    at("init_from"),
                    path.display()
                )));
            }
        };
        let token_ids = cfg.trainable_token_indices.clone();
        let l = &mut self.lora;
        let adopted = [
            ("r", l.r.to_string(), cfg.r.to_string()),
            ("alpha", l.alpha.to_string(), cfg.lora_alpha.to_string()),
            ("dropout", l.dropout.to_string(), cfg.lora_dropout.to_string()),
            ("targets", format!("{:?}", l.targets), format!("{targets:?}")),
            ("rslora", l.rslora.to_string(), cfg.use_rslora.to_string()),
            ("use_dora", l.use_dora.to_string(), cfg.use_dora.to_string()),
            ("trainable_token_indices", format!("{:?}", l.trainable_token_indices), format!("{token_ids:?}")),
            (
                "layers",
                format!("{:?}", l.layers),
                format!("{:?}", cfg.layers_to_transform.as_ref().map(|x| x.to_vec())),
            ),
        ];
        for (key, ours, theirs) in adopted {
            if src.locate("lora", key).is_some() && ours != theirs {
                return Err(TrainError::Recipe(format!(
                    "{}: lora.{key} is {ours} but the init_from adapter's is {theirs}; remove it (the adapter decides)",
                    at(key)
                )));
            }
        }
        l.r = cfg.r;
        l.alpha = cfg.lora_alpha;
        l.dropout = cfg.lora_dropout;
        l.targets = targets;
        l.rslora = cfg.use_rslora;
        l.use_dora = cfg.use_dora;
        l.trainable_token_indices = token_ids;
        l.layers = cfg.layers_to_transform.as_ref().map(|x| x.to_vec());
        Ok(())
    }
}
