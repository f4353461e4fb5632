//! DPO's pair losses as TRL 1.x computes them (`DPOTrainer._compute_loss`, reverse-KL form), with
//! their derivatives by the policy's sequence log-probabilities and TRL's metrics.
//!
//! Per pair, with π the policy's summed completion log-probabilities and r the reference's:
//!
//! ```text
//! z = (π_c − r_c) − (π_r − r_r)
//! sigmoid: −(1 − ε)·log σ(βz) − ε·log σ(−βz)            (ε = label_smoothing; TRL's default form)
//! robust:  (−(1 − ε)·log σ(βz) + ε·log σ(−βz)) / (1 − 2ε)
//! hinge:   relu(1 − βz)
//! ipo:     (z̄ − 1/(2β))²,  z̄ = (π_c − r_c)/n_c − (π_r − r_r)/n_r   (per-token means, n the lengths)
//! simpo:   −(1 − ε)·log σ(β·(π_c/n_c − π_r/n_r) − γ) − ε·log σ(−…)   (no reference; TRL's CPOTrainer)
//! orpo:    −β·log σ(L),  L = (a − b) − (log(1 − e^a) − log(1 − e^b)),  a, b = π_c/n_c, π_r/n_r
//! ```
//!
//! The batch loss is the mean over pairs, plus α times the SFT term (the chosen completions' mean
//! negative log-likelihood per token) when [`Dpo::sft_weight`] is set. π enters the loss only through these sums, so the
//! gradient of the loss is Σ_tokens ∂loss/∂π_seq · ∂log p(token)/∂θ: a weighted next-token loss,
//! which is how the step back-propagates it ([`lora_core::loss::chunked::head_loss_weighted`]).

/// DPO's loss variants (TRL's `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpoLoss {
    /// The original DPO loss, with optional label smoothing (cDPO).
    Sigmoid,
    /// The hinge loss of SLiC.
    Hinge,
    /// IPO, on per-token mean log-ratios.
    Ipo,
    /// Robust DPO (rDPO), unbiased under the label-flip rate ε.
    Robust,
    /// SimPO: reference-free, on per-token mean log-probabilities with a target margin γ (TRL's
    /// `CPOTrainer` with `loss_type="simpo"`).
    Simpo,
    /// ORPO: reference-free, −β·log σ of the log odds ratio of the per-token mean probabilities, with
    /// the chosen sequences' NLL (prompt included) as its SFT term (TRL's `ORPOTrainer`).
    Orpo,
}

impl DpoLoss {
    /// Whether the loss compares the policy with a reference (DPO's variants) or not.
    pub fn needs_reference(self) -> bool {
        !matches!(self, Self::Simpo | Self::Orpo)
    }
}

/// log(1 − e^x) for x < 0, without cancellation on either side of −ln 2.
fn log1mexp(x: f64) -> f64 {
    if x < -std::f64::consts::LN_2 { (-x.exp()).ln_1p() } else { (-x.exp_m1()).ln() }
}

impl DpoLoss {
    /// The variant of a TRL `loss_type` name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "sigmoid" => Self::Sigmoid,
            "hinge" => Self::Hinge,
            "ipo" => Self::Ipo,
            "robust" => Self::Robust,
            "simpo" => Self::Simpo,
            "orpo" => Self::Orpo,
            _ => return None,
        })
    }
}

/// DPO's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dpo {
    /// β: the strength of the tie to the reference (TRL's default 0.1).
    pub beta: f64,
    /// The loss variant.
    pub loss: DpoLoss,
    /// ε of the sigmoid and robust losses (TRL's `label_smoothing`, default 0).
    pub label_smoothing: f64,
    /// SimPO's target margin γ (TRL's `simpo_gamma`); unused by the other losses.
    pub gamma: f64,
    /// α of an added SFT term, α · (−Σ log p over the chosen completions' tokens / their count): TRL's
    /// `loss_type=[..., "sft"]` with `loss_weights=[1, α]` (RPO), which keeps the chosen answers'
    /// likelihood from falling with the rejected ones'. 0: none.
    pub sft_weight: f64,
}

/// One pair's log-probabilities: the policy's and the reference's, summed over each completion's
/// tokens, and the completions' token counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairLogProbs {
    /// π_c: the policy's log-probability of the chosen completion.
    pub chosen: f64,
    /// π_r: the policy's log-probability of the rejected completion.
    pub rejected: f64,
    /// r_c: the reference's log-probability of the chosen completion.
    pub ref_chosen: f64,
    /// r_r: the reference's log-probability of the rejected completion.
    pub ref_rejected: f64,
    /// Tokens of the chosen completion.
    pub chosen_tokens: usize,
    /// Tokens of the rejected completion.
    pub rejected_tokens: usize,
}

/// One pair's loss and its derivatives by π_c and π_r.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairLoss {
    /// The pair's loss.
    pub loss: f64,
    /// ∂loss/∂π_c.
    pub d_chosen: f64,
    /// ∂loss/∂π_r.
    pub d_rejected: f64,
}

/// log σ(x), computed without overflow for either sign.
fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 { -(-x).exp().ln_1p() } else { x - x.exp().ln_1p() }
}

/// σ(x).
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

impl Dpo {
    /// The loss of one pair and its derivatives.
    pub fn pair(&self, p: &PairLogProbs) -> PairLoss {
        let (beta, eps) = (self.beta, self.label_smoothing);
        let z = (p.chosen - p.ref_chosen) - (p.rejected - p.ref_rejected);
        // Each variant as (loss, ∂loss/∂z), with ∂z/∂π_c = 1 and ∂z/∂π_r = −1 except for IPO.
        let (loss, dz) = match self.loss {
            DpoLoss::Sigmoid => {
                let loss = -(1.0 - eps) * log_sigmoid(beta * z) - eps * log_sigmoid(-beta * z);
                // d/dx −log σ(x) = −σ(−x); d/dx −log σ(−x) = σ(x).
                let dz = beta * (-(1.0 - eps) * sigmoid(-beta * z) + eps * sigmoid(beta * z));
                (loss, dz)
            }
            DpoLoss::Robust => {
                let loss = (-(1.0 - eps) * log_sigmoid(beta * z) + eps * log_sigmoid(-beta * z)) / (1.0 - 2.0 * eps);
                let dz = beta * (-(1.0 - eps) * sigmoid(-beta * z) - eps * sigmoid(beta * z)) / (1.0 - 2.0 * eps);
                (loss, dz)
            }
            DpoLoss::Hinge => {
                let m = 1.0 - beta * z;
                // torch's relu passes no gradient at 0.
                if m > 0.0 { (m, -beta) } else { (0.0, 0.0) }
            }
            DpoLoss::Simpo => {
                let (nc, nr) = (p.chosen_tokens.max(1) as f64, p.rejected_tokens.max(1) as f64);
                let u = beta * (p.chosen / nc - p.rejected / nr) - self.gamma;
                let loss = -(1.0 - eps) * log_sigmoid(u) - eps * log_sigmoid(-u);
                let du = -(1.0 - eps) * sigmoid(-u) + eps * sigmoid(u);
                return PairLoss { loss, d_chosen: du * beta / nc, d_rejected: -du * beta / nr };
            }
            DpoLoss::Orpo => {
                let (nc, nr) = (p.chosen_tokens.max(1) as f64, p.rejected_tokens.max(1) as f64);
                let (a, b) = (p.chosen / nc, p.rejected / nr);
                let l = (a - b) - (log1mexp(a) - log1mexp(b));
                // dL/da = 1/(1 − e^a), dL/db = −1/(1 − e^b); d(−β log σ(L))/dL = −β σ(−L).
                let dl = -beta * sigmoid(-l);
                let (da, db) = (-1.0 / a.exp_m1(), 1.0 / b.exp_m1());
                return PairLoss { loss: -beta * log_sigmoid(l), d_chosen: dl * da / nc, d_rejected: dl * db / nr };
            }
            DpoLoss::Ipo => {
                let (nc, nr) = (p.chosen_tokens.max(1) as f64, p.rejected_tokens.max(1) as f64);
                let zbar = (p.chosen - p.ref_chosen) / nc - (p.rejected - p.ref_rejected) / nr;
                let d = zbar - 1.0 / (2.0 * beta);
                let g = 2.0 * d;
                return PairLoss { loss: d * d, d_chosen: g / nc, d_rejected: -g / nr };
            }
        };
        PairLoss { loss, d_chosen: dz, d_rejected: -dz }
    }
}

/// TRL's logged metrics of a set of pairs (means over pairs), or of KTO's unpaired examples,
/// serialized under TRL's names. A metric the method does not have (KTO's accuracy, DPO's KL), or
/// that a step had no example for (KTO's `rewards/chosen` of a step without desirable examples), is
/// NaN and left out of the file, as TRL leaves it out of its logs.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct PreferenceMetrics {
    /// Mean pair loss, with the SFT term when there is one (the step's `loss`, not repeated in the
    /// metrics file).
    #[serde(skip)]
    pub loss: f64,
    /// `rewards/chosen`: mean β·(π_c − r_c).
    #[serde(rename = "rewards/chosen", default = "nan", skip_serializing_if = "is_nan")]
    pub rewards_chosen: f64,
    /// `rewards/rejected`: mean β·(π_r − r_r).
    #[serde(rename = "rewards/rejected", default = "nan", skip_serializing_if = "is_nan")]
    pub rewards_rejected: f64,
    /// `rewards/accuracies`: the share of pairs whose chosen reward exceeds the rejected one.
    #[serde(rename = "rewards/accuracies", default = "nan", skip_serializing_if = "is_nan")]
    pub rewards_accuracies: f64,
    /// `rewards/margins`: mean chosen − rejected reward.
    #[serde(rename = "rewards/margins", default = "nan", skip_serializing_if = "is_nan")]
    pub rewards_margins: f64,
    /// `logps/chosen`: mean π_c.
    #[serde(rename = "logps/chosen", default = "nan", skip_serializing_if = "is_nan")]
    pub logps_chosen: f64,
    /// `kl`: KTO's KL estimate (NaN for the paired methods).
    #[serde(default = "nan", skip_serializing_if = "is_nan")]
    pub kl: f64,
    /// `logps/rejected`: mean π_r.
    #[serde(rename = "logps/rejected", default = "nan", skip_serializing_if = "is_nan")]
    pub logps_rejected: f64,
}

fn nan() -> f64 {
    f64::NAN
}

fn is_nan(v: &f64) -> bool {
    v.is_nan()
}

impl From<crate::preference::kto::KtoMetrics> for PreferenceMetrics {
    fn from(m: crate::preference::kto::KtoMetrics) -> Self {
        Self {
            loss: m.loss,
            rewards_chosen: m.rewards_chosen,
            rewards_rejected: m.rewards_rejected,
            rewards_accuracies: f64::NAN,
            rewards_margins: m.rewards_margins,
            kl: m.kl,
            logps_chosen: m.logps_chosen,
            logps_rejected: m.logps_rejected,
        }
    }
}

impl PreferenceMetrics {
    /// Whether no metric is set (all NaN): what an SFT step's line reads as.
    pub fn is_empty(&self) -> bool {
        [
            self.rewards_chosen,
            self.rewards_rejected,
            self.rewards_accuracies,
            self.rewards_margins,
            self.kl,
            self.logps_chosen,
            self.logps_rejected,
        ]
        .iter()
        .all(|v| v.is_nan())
    }

    /// The metrics of `pairs` under `dpo`, with `nll` the chosen sequences' mean negative
    /// log-likelihood per token (the SFT term's value; unused when its weight is 0).
    pub fn of(dpo: &Dpo, pairs: &[PairLogProbs], nll: f64) -> Self {
        let n = pairs.len().max(1) as f64;
        let mut m = Self { kl: f64::NAN, ..Self::default() };
        for p in pairs {
            // SimPO's rewards and log-probabilities are per-token means, without a reference (TRL's CPO).
            let free = !dpo.loss.needs_reference();
            let (pc, pr) = if free {
                (p.chosen / p.chosen_tokens.max(1) as f64, p.rejected / p.rejected_tokens.max(1) as f64)
            } else {
                (p.chosen, p.rejected)
            };
            let (rc, rr) = if free {
                (dpo.beta * pc, dpo.beta * pr)
            } else {
                (dpo.beta * (p.chosen - p.ref_chosen), dpo.beta * (p.rejected - p.ref_rejected))
            };
            m.loss += dpo.pair(p).loss;
            m.rewards_chosen += rc;
            m.rewards_rejected += rr;
            m.rewards_accuracies += f64::from(u8::from(rc > rr));
            m.rewards_margins += rc - rr;
            m.logps_chosen += pc;
            m.logps_rejected += pr;
        }
        if dpo.sft_weight != 0.0 {
            m.loss += n * dpo.sft_weight * nll;
        }
        for v in [
            &mut m.loss,
            &mut m.rewards_chosen,
            &mut m.rewards_rejected,
            &mut m.rewards_accuracies,
            &mut m.rewards_margins,
            &mut m.logps_chosen,
            &mut m.logps_rejected,
        ] {
            *v /= n;
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(chosen: f64, rejected: f64) -> PairLogProbs {
        PairLogProbs { chosen, rejected, ref_chosen: -12.0, ref_rejected: -9.5, chosen_tokens: 7, rejected_tokens: 4 }
    }

    #[test]
    fn a_policy_equal_to_its_reference_costs_ln_2() {
        let dpo = Dpo { beta: 0.1, loss: DpoLoss::Sigmoid, label_smoothing: 0.0, gamma: 0.0, sft_weight: 0.0 };
        let p = pair(-12.0, -9.5);
        assert!((dpo.pair(&p).loss - std::f64::consts::LN_2).abs() < 1e-15);
        // And the gradient pushes the chosen up and the rejected down, by β/2 each.
        let l = dpo.pair(&p);
        assert!((l.d_chosen + 0.05).abs() < 1e-15 && (l.d_rejected - 0.05).abs() < 1e-15, "{l:?}");
    }

    #[test]
    fn derivatives_match_finite_differences_for_every_variant() {
        for loss in [DpoLoss::Sigmoid, DpoLoss::Hinge, DpoLoss::Ipo, DpoLoss::Robust, DpoLoss::Simpo, DpoLoss::Orpo] {
            let eps = if loss == DpoLoss::Hinge { 0.0 } else { 0.2 };
            let dpo = Dpo { beta: 0.3, loss, label_smoothing: eps, gamma: 0.4, sft_weight: 0.0 };
            for (c, r) in [(-11.0, -10.0), (-13.5, -8.0), (-9.0, -12.0)] {
                let p = pair(c, r);
                let l = dpo.pair(&p);
                let h = 1e-6;
                let fd = |dc: f64, dr: f64| {
                    let up = dpo.pair(&pair(c + dc * h, r + dr * h)).loss;
                    let down = dpo.pair(&pair(c - dc * h, r - dr * h)).loss;
                    (up - down) / (2.0 * h)
                };
                assert!(
                    (fd(1.0, 0.0) - l.d_chosen).abs() < 1e-7,
                    "{loss:?} ∂chosen: {} vs {}",
                    fd(1.0, 0.0),
                    l.d_chosen
                );
                assert!((fd(0.0, 1.0) - l.d_rejected).abs() < 1e-7, "{loss:?} ∂rejected");
            }
        }
    }

    #[test]
    fn variants_follow_their_formulas_at_a_point() {
        // z = (−11 + 12) − (−10 + 9.5) = 1.5; β = 0.5, ε = 0.1.
        let p = pair(-11.0, -10.0);
        let (beta, eps, z) = (0.5f64, 0.1f64, 1.5f64);
        let ls = |x: f64| -(1.0 + (-x).exp()).ln();
        let cases = [
            (DpoLoss::Sigmoid, -(1.0 - eps) * ls(beta * z) - eps * ls(-beta * z)),
            (DpoLoss::Robust, (-(1.0 - eps) * ls(beta * z) + eps * ls(-beta * z)) / (1.0 - 2.0 * eps)),
            (DpoLoss::Hinge, (1.0 - beta * z).max(0.0)),
            (DpoLoss::Ipo, ((1.0f64 / 7.0) - (-0.5 / 4.0) - 1.0).powi(2)),
            // π̄_c = −11/7, π̄_r = −10/4, γ = 0.3.
            (DpoLoss::Simpo, {
                let u = beta * (-11.0 / 7.0 + 10.0 / 4.0) - 0.3;
                -(1.0 - eps) * ls(u) - eps * ls(-u)
            }),
        ];
        for (loss, expected) in cases {
            let got = Dpo { beta, loss, label_smoothing: eps, gamma: 0.3, sft_weight: 0.0 }.pair(&p).loss;
            assert!((got - expected).abs() < 1e-12, "{loss:?}: {got} vs {expected}");
        }
    }

    #[test]
    fn metrics_are_trl_means() {
        let dpo = Dpo { beta: 0.1, loss: DpoLoss::Sigmoid, label_smoothing: 0.0, gamma: 0.0, sft_weight: 0.0 };
        let pairs = [pair(-11.0, -10.0), pair(-12.5, -9.0)];
        let m = PreferenceMetrics::of(&dpo, &pairs, 1.7);
        // With an SFT term of weight 0.5: half the NLL given, added.
        let with = PreferenceMetrics::of(&Dpo { sft_weight: 0.5, ..dpo }, &pairs, 1.7);
        assert!((with.loss - m.loss - 0.5 * 1.7).abs() < 1e-12);
        // rewards: (0.1, −0.05) and (−0.05, 0.05).
        assert!((m.rewards_chosen - 0.025).abs() < 1e-12);
        assert!((m.rewards_rejected - 0.0).abs() < 1e-12);
        assert!((m.rewards_accuracies - 0.5).abs() < 1e-12);
        assert!((m.rewards_margins - 0.025).abs() < 1e-12);
        assert!((m.logps_chosen + 11.75).abs() < 1e-12 && (m.logps_rejected + 9.5).abs() < 1e-12);
    }
}
