//! `[train] method` and the `[preference]` table: what a preference run (DPO, SimPO, ORPO, KTO)
//! needs beyond SFT's keys, with TRL 1.x's names, defaults and meanings.
//!
//! ```toml
//! [train]
//! method = "dpo"
//! [preference]
//! beta = 0.1                   # TRL's default
//! loss_type = "sigmoid"        # or "ipo", "hinge", "robust"; KTO: "kto" or "apo_zero_unpaired"
//! label_smoothing = 0.0        # sigmoid (cDPO) and robust only
//! precompute_reference = true  # the reference's log-probabilities once, before training
//! ```

use serde::{Deserialize, Serialize};

use super::{Recipe, Source};
use crate::error::{Result, TrainError};
use crate::preference::kto::{Kto, KtoLoss};
use crate::preference::{Dpo, DpoLoss, MAPPABLE_FIELDS};

/// `[preference]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferenceSection {
    /// β: how tightly the policy is held to the reference (default 0.1).
    #[serde(default = "d_beta")]
    pub beta: f64,
    /// DPO: `"sigmoid"` (default), `"ipo"`, `"hinge"` or `"robust"`; KTO: `"kto"` (default) or
    /// `"apo_zero_unpaired"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_type: Option<String>,
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
    /// KTO: weight of the desirable examples' losses (TRL's `desirable_weight`, default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desirable_weight: Option<f64>,
    /// KTO: weight of the undesirable examples' losses (TRL's `undesirable_weight`, default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undesirable_weight: Option<f64>,
    /// The reference: the base with this PEFT adapter (a folder; an SFT run, say). Default: the
    /// base without adapters, or `[lora] init_from` when the policy starts from an adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_adapter: Option<std::path::PathBuf>,
}

fn d_beta() -> f64 {
    0.1
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
    /// Preference tuning: DPO (`"dpo"`), SimPO (`"simpo"`) or ORPO (`"orpo"`) on pairs, KTO
    /// (`"kto"`) on unpaired examples.
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
            loss: free
                .unwrap_or_else(|| DpoLoss::parse(p.loss_type.as_deref().unwrap_or("sigmoid")).expect("validated")),
            label_smoothing: p.label_smoothing,
            gamma: p.gamma.unwrap_or(0.5),
            // CPO's cpo_alpha defaults to 1; ORPO's NLL term has weight 1.
            sft_weight: p.sft_weight.unwrap_or(if free.is_some() { 1.0 } else { 0.0 }),
        }
    }

    /// Whether the recipe trains with KTO, on unpaired examples.
    pub fn is_kto(&self) -> bool {
        self.train.method == "kto"
    }

    /// KTO's settings: the `[preference]` table, or TRL's `KTOConfig` defaults.
    pub fn kto(&self) -> Kto {
        let p = self.preference.clone().unwrap_or_default();
        Kto {
            beta: p.beta,
            loss: KtoLoss::parse(p.loss_type.as_deref().unwrap_or("kto")).expect("validated"),
            desirable_weight: p.desirable_weight.unwrap_or(1.0),
            undesirable_weight: p.undesirable_weight.unwrap_or(1.0),
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
        if let Some(fields) = &d.fields {
            if self.train.method == "sft" {
                return err("data", "fields", "applies to the preference methods (dpo, simpo, orpo, kto)".into());
            }
            let kto = self.train.method == "kto";
            let allowed: &[&str] = if kto { &MAPPABLE_FIELDS } else { &MAPPABLE_FIELDS[..3] };
            let mut seen = std::collections::BTreeMap::new();
            for (ours, theirs) in fields {
                if !allowed.contains(&ours.as_str()) {
                    return err(
                        "data",
                        "fields",
                        format!(
                            "cannot map \"{ours}\": the fields of method = \"{}\" are {}",
                            self.train.method,
                            allowed.join(", ")
                        ),
                    );
                }
                if theirs.is_empty() && ours != "prompt" {
                    return err("data", "fields", format!("maps {ours} to \"\"; only the prompt may be left out"));
                }
                if let Some(other) = seen.insert(theirs.as_str(), ours.as_str())
                    && !theirs.is_empty()
                {
                    return err("data", "fields", format!("maps both {other} and {ours} to \"{theirs}\""));
                }
            }
        }
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
                        "desirable_weight",
                        "undesirable_weight",
                    ];
                    let key = keys.into_iter().find(|k| src.locate("preference", k).is_some()).unwrap_or("beta");
                    return err(
                        "preference",
                        key,
                        "applies to the preference methods (dpo, simpo, orpo, kto); this recipe trains with \"sft\""
                            .into(),
                    );
                }
                if ["preference", "kto"].contains(&d.format.as_str()) {
                    return err(
                        "data",
                        "format",
                        format!("\"{}\" needs a preference [train] method (\"dpo\", \"kto\", ...)", d.format),
                    );
                }
                Ok(())
            }
            method @ ("dpo" | "simpo" | "orpo") => {
                let p = self.preference.clone().unwrap_or_default();
                let loss_type = p.loss_type.as_deref().unwrap_or("sigmoid");
                for key in ["desirable_weight", "undesirable_weight"] {
                    if src.locate("preference", key).is_some() {
                        return err("preference", key, "is KTO's; it applies to method = \"kto\"".into());
                    }
                }
                let simpo = method == "simpo";
                let free = method != "dpo";
                if free {
                    // (The resolved recipe of a run writes every key, defaults included: only values
                    // that ask for a reference are refused.)
                    if p.loss_type.as_deref().is_some_and(|l| l != "sigmoid") {
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
                    _ => DpoLoss::parse(loss_type).filter(|l| l.needs_reference()),
                };
                let Some(loss) = loss else {
                    return err(
                        "preference",
                        "loss_type",
                        format!("must be \"sigmoid\", \"ipo\", \"hinge\" or \"robust\", got \"{loss_type}\""),
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
                        let name = if loss == DpoLoss::Orpo { "orpo" } else { loss_type };
                        return err(
                            "preference",
                            "label_smoothing",
                            format!("applies to the sigmoid, robust and SimPO losses, not \"{name}\""),
                        );
                    }
                    _ => {}
                }
                self.check_reference_and_data(
                    &p,
                    &["auto", "preference"],
                    "must be \"preference\" (or \"auto\") with method = \"dpo\", \"simpo\" or \"orpo\": they train on {\"prompt\", \"chosen\", \"rejected\"} records",
                    &err,
                )
            }
            "kto" => self.validate_kto(src, &err),
            other => err(
                "train",
                "method",
                format!("must be \"sft\", \"dpo\", \"simpo\", \"orpo\" or \"kto\", got \"{other}\""),
            ),
        }
    }

    /// `[train] method = "kto"`: its `[preference]` keys and data.
    fn validate_kto(&self, src: &Source, err: &dyn Fn(&str, &str, String) -> Result<()>) -> Result<()> {
        let p = self.preference.clone().unwrap_or_default();
        let Some(loss) = KtoLoss::parse(p.loss_type.as_deref().unwrap_or("kto")) else {
            let got = p.loss_type.unwrap_or_default();
            return err(
                "preference",
                "loss_type",
                format!("must be \"kto\" or \"apo_zero_unpaired\" with method = \"kto\", got \"{got}\""),
            );
        };
        for key in ["gamma", "sft_weight"] {
            if src.locate("preference", key).is_some() {
                return err("preference", key, "does not apply to method = \"kto\"".into());
            }
        }
        if p.label_smoothing != 0.0 {
            return err("preference", "label_smoothing", "does not apply to method = \"kto\"".into());
        }
        if !(p.beta > 0.0 && p.beta.is_finite()) {
            return err("preference", "beta", format!("must be positive, got {}", p.beta));
        }
        for (key, w) in [("desirable_weight", p.desirable_weight), ("undesirable_weight", p.undesirable_weight)] {
            if let Some(w) = w
                && !(w > 0.0 && w.is_finite())
            {
                return err("preference", key, format!("must be positive, got {w}"));
            }
        }
        if loss.needs_kl() && self.train.batch_size < 2 {
            return err(
                "train",
                "batch_size",
                "must be at least 2 with method = \"kto\": its KL estimate pairs each prompt with another \
                 example's completion of the same micro-batch (with 1 it would be the implied reward itself)"
                    .into(),
            );
        }
        self.check_reference_and_data(
            &p,
            &["auto", "kto", "preference"],
            "must be \"kto\" ({\"prompt\", \"completion\", \"label\"} records), \"preference\" (pairs, unpaired as TRL does) or \"auto\" with method = \"kto\"",
            err,
        )
    }

    /// What every preference method checks: the reference adapter is one, the data format is one
    /// of `formats` (else `format_error`), and SFT's packing and input training are off.
    fn check_reference_and_data(
        &self,
        p: &PreferenceSection,
        formats: &[&str],
        format_error: &str,
        err: &dyn Fn(&str, &str, String) -> Result<()>,
    ) -> Result<()> {
        let (d, method) = (&self.data, self.train.method.as_str());
        if let Some(r) = &p.reference_adapter
            && !r.join("adapter_config.json").is_file()
        {
            return err(
                "preference",
                "reference_adapter",
                format!("'{}' is not a PEFT adapter folder (no adapter_config.json)", r.display()),
            );
        }
        if !formats.contains(&d.format.as_str()) {
            return err("data", "format", format!("{format_error}, got \"{}\"", d.format));
        }
        if d.packing {
            return err("data", "packing", format!("does not apply to method = \"{method}\""));
        }
        if d.train_on_inputs {
            return err(
                "data",
                "train_on_inputs",
                format!("does not apply to method = \"{method}\": the loss scores the completions"),
            );
        }
        Ok(())
    }
}
