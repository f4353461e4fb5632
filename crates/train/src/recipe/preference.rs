//! `[train] method` and the `[preference]` table: what a preference run (DPO) needs beyond SFT's
//! keys, with TRL 1.x's names, defaults and meanings.
//!
//! ```toml
//! [train]
//! method = "dpo"
//! [preference]
//! beta = 0.1                   # TRL's default
//! loss_type = "sigmoid"        # or "ipo", "hinge", "robust"
//! label_smoothing = 0.0        # sigmoid (cDPO) and robust only
//! precompute_reference = true  # the reference's log-probabilities once, before training
//! ```

use serde::{Deserialize, Serialize};

use super::{Recipe, Source};
use crate::error::{Result, TrainError};
use crate::preference::{Dpo, DpoLoss};

/// `[preference]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferenceSection {
    /// β: how tightly the policy is held to the reference (default 0.1).
    #[serde(default = "d_beta")]
    pub beta: f64,
    /// `"sigmoid"` (default), `"ipo"`, `"hinge"` or `"robust"`.
    #[serde(default = "d_loss")]
    pub loss_type: String,
    /// ε, the assumed rate of flipped labels, of the sigmoid (cDPO) and robust losses (default 0).
    #[serde(default)]
    pub label_smoothing: f64,
    /// Compute the reference's log-probabilities once over the data before training (default
    /// true): steps then cost one policy pass. Exact, since the reference has no dropout.
    #[serde(default = "d_true")]
    pub precompute_reference: bool,
    /// Weight of an added SFT term on the chosen completions (DPO: TRL's `"sft"` loss with its
    /// `loss_weights`, RPO, default 0; SimPO: CPO's `cpo_alpha`, default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sft_weight: Option<f64>,
    /// SimPO's target reward margin γ (TRL's `simpo_gamma`, default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamma: Option<f64>,
    /// The reference: the base with this PEFT adapter (a folder; an SFT run, say). Default: the
    /// base without adapters, or `[lora] init_from` when the policy starts from an adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_adapter: Option<std::path::PathBuf>,
}

fn d_beta() -> f64 {
    0.1
}
fn d_loss() -> String {
    "sigmoid".into()
}
fn d_true() -> bool {
    true
}

impl Default for PreferenceSection {
    fn default() -> Self {
        toml::from_str("").expect("all fields have defaults")
    }
}

/// The training method (`[train] method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Supervised fine-tuning: the next-token loss on the labelled tokens.
    Sft,
    /// Preference tuning on pairs: DPO (`"dpo"`), SimPO (`"simpo"`) or ORPO (`"orpo"`).
    Preference,
}

impl Recipe {
    /// The recipe's method (validated).
    pub fn method(&self) -> Method {
        if self.train.method == "sft" { Method::Sft } else { Method::Preference }
    }

    /// The preference loss's settings: the `[preference]` table, or its defaults (TRL's
    /// `DPOConfig`'s for DPO, `CPOConfig`'s for SimPO, whose `cpo_alpha` SFT term defaults to 1).
    pub fn dpo(&self) -> Dpo {
        let p = self.preference.clone().unwrap_or_default();
        let free = match self.train.method.as_str() {
            "simpo" => Some(DpoLoss::Simpo),
            "orpo" => Some(DpoLoss::Orpo),
            _ => None,
        };
        Dpo {
            beta: p.beta,
            loss: free.unwrap_or_else(|| DpoLoss::parse(&p.loss_type).expect("validated")),
            label_smoothing: p.label_smoothing,
            gamma: p.gamma.unwrap_or(0.5),
            // CPO's cpo_alpha defaults to 1; ORPO's NLL term has weight 1.
            sft_weight: p.sft_weight.unwrap_or(if free.is_some() { 1.0 } else { 0.0 }),
        }
    }

    /// Checks `[train] method`, the `[preference]` table and the data keys that depend on them.
    pub(super) fn validate_method(&self, src: &Source) -> Result<()> {
        let err = |section: &str, key: &str, msg: String| {
            let at = match src.locate(section, key) {
                Some((l, c)) => format!("{}:{l}:{c}", src.name),
                None => src.name.clone(),
            };
            Err(TrainError::Recipe(format!("{at}: {section}.{key} {msg}")))
        };
        let d = &self.data;
        match self.train.method.as_str() {
            "sft" => {
                if self.preference.is_some() {
                    let keys = [
                        "beta",
                        "loss_type",
                        "label_smoothing",
                        "precompute_reference",
                        "reference_adapter",
                        "sft_weight",
                        "gamma",
                    ];
                    let key = keys.into_iter().find(|k| src.locate("preference", k).is_some()).unwrap_or("beta");
                    return err(
                        "preference",
                        key,
                        "applies to [train] method = \"dpo\" only; this recipe trains with \"sft\"".into(),
                    );
                }
                if d.format == "preference" {
                    return err("data", "format", "\"preference\" needs [train] method = \"dpo\"".into());
                }
                Ok(())
            }
            method @ ("dpo" | "simpo" | "orpo") => {
                let p = self.preference.clone().unwrap_or_default();
                let simpo = method == "simpo";
                let free = method != "dpo";
                if free {
                    // (The resolved recipe of a run writes every key, defaults included: only values
                    // that ask for a reference are refused.)
                    if p.loss_type != "sigmoid" {
                        return err(
                            "preference",
                            "loss_type",
                            format!("does not apply to method = \"{method}\", which has its own loss"),
                        );
                    }
                    if p.reference_adapter.is_some() {
                        return err(
                            "preference",
                            "reference_adapter",
                            format!("does not apply to method = \"{method}\", which has no reference"),
                        );
                    }
                }
                if !simpo && src.locate("preference", "gamma").is_some() {
                    return err("preference", "gamma", "is SimPO's; it applies to method = \"simpo\"".into());
                }
                if !(p.beta > 0.0 && p.beta.is_finite()) {
                    return err("preference", "beta", format!("must be positive, got {}", p.beta));
                }
                if let Some(w) = p.sft_weight
                    && !(w >= 0.0 && w.is_finite())
                {
                    return err("preference", "sft_weight", format!("must be >= 0, got {w}"));
                }
                let loss = match method {
                    "simpo" => Some(DpoLoss::Simpo),
                    "orpo" => Some(DpoLoss::Orpo),
                    _ => DpoLoss::parse(&p.loss_type).filter(|l| l.needs_reference()),
                };
                let Some(loss) = loss else {
                    return err(
                        "preference",
                        "loss_type",
                        format!("must be \"sigmoid\", \"ipo\", \"hinge\" or \"robust\", got \"{}\"", p.loss_type),
                    );
                };
                match loss {
                    DpoLoss::Sigmoid | DpoLoss::Robust | DpoLoss::Simpo if !(0.0..0.5).contains(&p.label_smoothing) => {
                        return err(
                            "preference",
                            "label_smoothing",
                            format!("must be in [0, 0.5), got {}", p.label_smoothing),
                        );
                    }
                    DpoLoss::Hinge | DpoLoss::Ipo | DpoLoss::Orpo if p.label_smoothing != 0.0 => {
                        let name = if loss == DpoLoss::Orpo { "orpo" } else { p.loss_type.as_str() };
                        return err(
                            "preference",
                            "label_smoothing",
                            format!("applies to the sigmoid, robust and SimPO losses, not \"{name}\""),
                        );
                    }
                    _ => {}
                }
                if let Some(r) = &p.reference_adapter
                    && !r.join("adapter_config.json").is_file()
                {
                    return err(
                        "preference",
                        "reference_adapter",
                        format!("'{}' is not a PEFT adapter folder (no adapter_config.json)", r.display()),
                    );
                }
                if !["auto", "preference"].contains(&d.format.as_str()) {
                    return err(
                        "data",
                        "format",
                        format!(
                            "must be \"preference\" (or \"auto\") with method = \"dpo\", got \"{}\": DPO trains on {{\"prompt\", \"chosen\", \"rejected\"}} records",
                            d.format
                        ),
                    );
                }
                if d.packing {
                    return err("data", "packing", "does not apply to preference pairs (method = \"dpo\")".into());
                }
                if d.train_on_inputs {
                    return err(
                        "data",
                        "train_on_inputs",
                        "does not apply to method = \"dpo\": the loss compares the completions".into(),
                    );
                }
                Ok(())
            }
            other => {
                err("train", "method", format!("must be \"sft\", \"dpo\", \"simpo\" or \"orpo\", got \"{other}\""))
            }
        }
    }
}
