//! Learning-rate schedules as transformers' `get_*_schedule_with_warmup`: the multiplier for
//! optimizer step k (0-based) of `total`:
//!
//! 1) warm-up: k / warmup while k < warmup,
//! 2) then constant 1, linear decay (total − k)/(total − warmup), or cosine 0.5·(1 + cos(π·progress)),
//! 3) never below 0.

/// A schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Warm-up, then constant.
    Constant,
    /// Warm-up, then linear decay to 0.
    Linear,
    /// Warm-up, then cosine decay to 0.
    Cosine,
}

impl Schedule {
    /// Parses `constant` / `linear` / `cosine`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "constant" => Some(Self::Constant),
            "linear" => Some(Self::Linear),
            "cosine" => Some(Self::Cosine),
            _ => None,
        }
    }

    /// Learning rate at optimizer step `k` (0-based).
    pub fn lr(self, peak: f64, k: u64, warmup: u64, total: u64) -> f64 {
        if k < warmup {
            return peak * k as f64 / warmup.max(1) as f64;
        }
        let span = total.saturating_sub(warmup).max(1) as f64;
        let progress = (k - warmup) as f64 / span;
        let factor = match self {
            Self::Constant => 1.0,
            Self::Linear => (total.saturating_sub(k)) as f64 / span,
            Self::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        peak * factor.max(0.0)
    }
}
