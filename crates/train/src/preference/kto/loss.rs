//! KTO's losses as TRL 1.x's `KTOTrainer._compute_loss` computes them, their derivatives by the
//! policy's sequence log-probabilities, and TRL's metrics.
//!
//! Per example, with π the policy's summed completion log-probability, r the reference's, and
//! z₀ the micro-batch's KL estimate (detached):
//!
//! ```text
//! z₀ = max(0, mean over the micro-batch of (π_KL − r_KL))   (mismatched prompt/completion rows)
//! kto, desirable:     w_d · (1 − σ(β·((π − r) − z₀)))
//! kto, undesirable:   w_u · (1 − σ(β·(z₀ − (π − r))))
//! apo_zero_unpaired:  w_d · (1 − σ(β·(π − r)))  and  w_u · σ(β·(π − r))   (no KL term)
//! ```
//!
//! A micro-batch's loss is the mean over its examples; a step's, the mean over its micro-batches
//! (transformers' gradient accumulation, which KTO's loss does not normalise otherwise).

/// KTO's loss variants (TRL's `KTOConfig.loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KtoLoss {
    /// The KTO loss (Eq. 7 of the paper), against the batch's KL estimate.
    Kto,
    /// The unpaired form of APO-zero: no KL term, so no mismatched rows.
    ApoZeroUnpaired,
}

impl KtoLoss {
    /// The variant of a TRL `loss_type` name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "kto" => Some(Self::Kto),
            "apo_zero_unpaired" => Some(Self::ApoZeroUnpaired),
            _ => None,
        }
    }

    /// Whether the loss needs the KL estimate, and so the mismatched rows.
    pub fn needs_kl(self) -> bool {
        self == Self::Kto
    }
}

/// KTO's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kto {
    /// β (TRL's default 0.1).
    pub beta: f64,
    /// The loss variant.
    pub loss: KtoLoss,
    /// Weight of the desirable examples' losses (TRL's `desirable_weight`, default 1).
    pub desirable_weight: f64,
    /// Weight of the undesirable examples' losses (TRL's `undesirable_weight`, default 1).
    pub undesirable_weight: f64,
}

/// One example's log-probabilities: the policy's and the reference's, summed over its completion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnpairedLogProbs {
    /// π.
    pub policy: f64,
    /// r.
    pub reference: f64,
    /// Desirable (TRL's `label = True`) or not.
    pub desirable: bool,
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 { 1.0 / (1.0 + (-x).exp()) } else { x.exp() / (1.0 + x.exp()) }
}

impl Kto {
    /// An example's weighted loss and its derivative by π, given the micro-batch's KL estimate.
    pub fn example(&self, e: &UnpairedLogProbs, kl: f64) -> (f64, f64) {
        let (b, ratio) = (self.beta, e.policy - e.reference);
        // loss = w·(1 − σ(x)) with dx/dπ = s, so dloss/dπ = −w·s·β·σ(x)(1 − σ(x)).
        let (w, x, s) = match (self.loss, e.desirable) {
            (KtoLoss::Kto, true) => (self.desirable_weight, b * (ratio - kl), 1.0),
            (KtoLoss::Kto, false) => (self.undesirable_weight, b * (kl - ratio), -1.0),
            (KtoLoss::ApoZeroUnpaired, true) => (self.desirable_weight, b * ratio, 1.0),
            // σ(βρ) = 1 − σ(−βρ).
            (KtoLoss::ApoZeroUnpaired, false) => (self.undesirable_weight, -b * ratio, -1.0),
        };
        let p = sigmoid(x);
        (w * (1.0 - p), -w * s * b * p * (1.0 - p))
    }

    /// The micro-batch's KL estimate from its mismatched rows' policy and reference log-probs:
    /// their mean difference, clamped at 0 (TRL's, which also detaches it).
    pub fn kl(&self, policy: &[f64], reference: &[f64]) -> f64 {
        if !self.loss.needs_kl() || policy.is_empty() {
            return 0.0;
        }
        let mean = policy.iter().zip(reference).map(|(p, r)| p - r).sum::<f64>() / policy.len() as f64;
        mean.max(0.0)
    }
}

/// TRL's KTO metrics of a step (or an evaluation): each is the mean over micro-batches of the
/// micro-batch's value, over those micro-batches where it exists (a micro-batch without desirable
/// examples has no `rewards/chosen`); NaN where none had it, and then left out of `metrics.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KtoMetrics {
    /// Mean loss.
    pub loss: f64,
    /// `kl`: the KL estimate z₀.
    pub kl: f64,
    /// `rewards/chosen`: mean β·(π − r) of the desirable examples.
    pub rewards_chosen: f64,
    /// `rewards/rejected`: mean β·(π − r) of the undesirable examples.
    pub rewards_rejected: f64,
    /// `rewards/margins`: chosen − rejected rewards, of micro-batches with both.
    pub rewards_margins: f64,
    /// `logps/chosen`: mean π of the desirable examples.
    pub logps_chosen: f64,
    /// `logps/rejected`: mean π of the undesirable examples.
    pub logps_rejected: f64,
}

/// Mean of the values that exist; NaN when none does.
fn mean_of(values: impl Iterator<Item = Option<f64>>) -> f64 {
    let (sum, n) = values.flatten().fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

/// One micro-batch's values, from which [`KtoMetrics::of`] averages.
#[derive(Debug, Clone, PartialEq)]
pub struct MicroBatchKto {
    /// Its examples' log-probabilities.
    pub examples: Vec<UnpairedLogProbs>,
    /// Its KL estimate.
    pub kl: f64,
}

impl MicroBatchKto {
    /// The micro-batch's loss: the mean of its examples'.
    pub fn loss(&self, kto: &Kto) -> f64 {
        let n = self.examples.len().max(1) as f64;
        self.examples.iter().map(|e| kto.example(e, self.kl).0).sum::<f64>() / n
    }

    /// The mean of `f` over the examples of one side, None when the side is empty.
    fn side(&self, desirable: bool, f: impl Fn(&UnpairedLogProbs) -> f64) -> Option<f64> {
        let v: Vec<f64> = self.examples.iter().filter(|e| e.desirable == desirable).map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }
}

impl KtoMetrics {
    /// The metrics of a step's (or an evaluation's) micro-batches.
    pub fn of(kto: &Kto, batches: &[MicroBatchKto]) -> Self {
        let reward = |e: &UnpairedLogProbs| kto.beta * (e.policy - e.reference);
        let chosen = |b: &MicroBatchKto| b.side(true, reward);
        let rejected = |b: &MicroBatchKto| b.side(false, reward);
        Self {
            loss: mean_of(batches.iter().map(|b| Some(b.loss(kto)))),
            kl: mean_of(batches.iter().map(|b| Some(b.kl))),
            rewards_chosen: mean_of(batches.iter().map(chosen)),
            rewards_rejected: mean_of(batches.iter().map(rejected)),
            rewards_margins: mean_of(batches.iter().map(|b| Some(chosen(b)? - rejected(b)?))),
            logps_chosen: mean_of(batches.iter().map(|b| b.side(true, |e| e.policy))),
            logps_rejected: mean_of(batches.iter().map(|b| b.side(false, |e| e.policy))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kto(loss: KtoLoss) -> Kto {
        Kto { beta: 0.3, loss, desirable_weight: 1.2, undesirable_weight: 0.7 }
    }

    #[test]
    fn derivatives_match_finite_differences() {
        for loss in [KtoLoss::Kto, KtoLoss::ApoZeroUnpaired] {
            for desirable in [true, false] {
                for (policy, kl) in [(-11.0, 0.0), (-9.5, 0.4), (-13.0, 1.5)] {
                    let e = UnpairedLogProbs { policy, reference: -10.0, desirable };
                    let (_, d) = kto(loss).example(&e, kl);
                    let h = 1e-6;
                    let at = |p: f64| kto(loss).example(&UnpairedLogProbs { policy: p, ..e }, kl).0;
                    let fd = (at(policy + h) - at(policy - h)) / (2.0 * h);
                    assert!((fd - d).abs() < 1e-8, "{loss:?} {desirable}: {fd} vs {d}");
                }
            }
        }
    }

    #[test]
    fn losses_follow_trl_formulas_at_a_point() {
        // π − r = 0.5, z₀ = 0.2, β = 0.3.
        let s = |x: f64| 1.0 / (1.0 + (-x).exp());
        let good = UnpairedLogProbs { policy: -9.5, reference: -10.0, desirable: true };
        let bad = UnpairedLogProbs { desirable: false, ..good };
        let k = kto(KtoLoss::Kto);
        assert!((k.example(&good, 0.2).0 - 1.2 * (1.0 - s(0.3 * 0.3))).abs() < 1e-12);
        assert!((k.example(&bad, 0.2).0 - 0.7 * (1.0 - s(0.3 * -0.3))).abs() < 1e-12);
        let a = kto(KtoLoss::ApoZeroUnpaired);
        assert!((a.example(&good, 0.2).0 - 1.2 * (1.0 - s(0.15))).abs() < 1e-12);
        assert!((a.example(&bad, 0.2).0 - 0.7 * s(0.15)).abs() < 1e-12);
        // The KL estimate is a clamped mean, and APO has none.
        assert!((k.kl(&[-3.0, -5.0], &[-3.5, -4.9]) - 0.2).abs() < 1e-12);
        assert_eq!(k.kl(&[-3.0], &[-2.0]), 0.0);
        assert_eq!(a.kl(&[-3.0, -5.0], &[-3.5, -4.9]), 0.0);
    }

    #[test]
    fn metrics_average_micro_batches_where_a_side_exists() {
        let e = |policy, desirable| UnpairedLogProbs { policy, reference: -10.0, desirable };
        let k = Kto { beta: 0.1, ..kto(KtoLoss::Kto) };
        let batches = [
            MicroBatchKto { examples: vec![e(-9.0, true), e(-11.0, true)], kl: 0.5 },
            MicroBatchKto { examples: vec![e(-8.0, true), e(-12.0, false)], kl: 0.1 },
        ];
        let m = KtoMetrics::of(&k, &batches);
        // chosen rewards: batch 1 mean 0, batch 2 0.2; rejected: batch 2 only, −0.2.
        assert!((m.rewards_chosen - 0.1).abs() < 1e-12);
        assert!((m.rewards_rejected + 0.2).abs() < 1e-12);
        assert!((m.rewards_margins - 0.4).abs() < 1e-12, "only batch 2 has both sides");
        assert!((m.kl - 0.3).abs() < 1e-12);
        assert!((m.logps_chosen + 9.0).abs() < 1e-12 && (m.logps_rejected + 12.0).abs() < 1e-12);
        let one_sided = KtoMetrics::of(&k, &batches[..1]);
        assert!(one_sided.rewards_rejected.is_nan() && one_sided.rewards_margins.is_nan());
    }
}
