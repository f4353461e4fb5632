//! Autoregressive generation: greedy, temperature, top-k and top-p sampling with a seeded RNG, with or
//! without the KV cache (both give the same tokens; the uncached path exists to prove it).
//!
//! Logits are processed in transformers' order: temperature, then top-k, then top-p.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{CoreError, Result};
use crate::generation::kv_cache::KvCache;
use crate::kernels::host::to_f32_vec;
use crate::network::model::{CausalLm, TokenBatch};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax); otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep only the k most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches p.
    pub top_p: Option<f32>,
    /// Seed of the sampling RNG.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: None, top_p: None, seed: 0 }
    }
}

/// Options of one generation.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Token choice.
    pub sampling: SamplingParams,
    /// Generation ends after any of these ids (it is included in the output).
    pub stop_ids: Vec<u32>,
    /// Reuse keys and values of earlier positions.
    pub use_cache: bool,
}

/// Chooses tokens from logits.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Result<Self> {
        if !(params.temperature >= 0.0) || !params.temperature.is_finite() {
            return Err(CoreError::Invalid(format!("temperature must be >= 0, got {}", params.temperature)));
        }
        if let Some(p) = params.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(CoreError::Invalid(format!("top_p must be in (0, 1], got {p}")));
        }
        if params.top_k == Some(0) {
            return Err(CoreError::Invalid("top_k must be at least 1".into()));
        }
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Self { params, rng })
    }

    /// The next token given one position's logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let t = self.params.temperature;
        // Candidates sorted by descending logit (ties by index, for determinism).
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if let Some(k) = self.params.top_k {
            order.truncate(k.max(1));
        }
        let max = logits[order[0]] / t;
        let weights: Vec<f64> = order.iter().map(|&i| ((logits[i] / t - max) as f64).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut probs: Vec<f64> = weights.iter().map(|w| w / total).collect();
        if let Some(p) = self.params.top_p {
            // Keep tokens until the cumulative probability reaches p (at least one).
            let mut cum = 0.0;
            let mut keep = probs.len();
            for (n, pr) in probs.iter().enumerate() {
                cum += pr;
                if cum >= p as f64 {
                    keep = n + 1;
                    break;
                }
            }
            probs.truncate(keep);
            order.truncate(keep);
            let s: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|x| *x /= s);
        }
        let r: f64 = self.rng.random();
        let mut acc = 0.0;
        for (n, pr) in probs.iter().enumerate() {
            acc += pr;
            if r < acc {
                return order[n] as u32;
            }
        }
        order[probs.len() - 1] as u32
    }
}

/// Index of the largest value (the first one on ties, as torch.argmax).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Generates up to `max_new_tokens` after `prompt`, calling `on_token` with each new id as it comes.
/// Returns the new ids (the stop id included when one ended generation).
pub fn generate(
    model: &CausalLm,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(CoreError::Invalid("the prompt encodes to no tokens".into()));
    }
    let mut sampler = Sampler::new(opts.sampling.clone())?;
    let mut cache = KvCache::new(model.config.num_hidden_layers);
    let mut all = prompt.to_vec();
    let mut out = Vec::new();
    let mut next_input = prompt.to_vec();
    while out.len() < opts.max_new_tokens {
        let logits = if opts.use_cache {
            model.forward(&TokenBatch::single(next_input.clone()), Some(&mut cache))?
        } else {
            model.forward(&TokenBatch::single(all.clone()), None)?
        };
        let [_, t, v] = logits.dims();
        let last = to_f32_vec(logits.slice([0..1, t - 1..t, 0..v]))?;
        let id = sampler.sample(&last);
        out.push(id);
        all.push(id);
        next_input = vec![id];
        on_token(id)?;
        if opts.stop_ids.contains(&id) {
            break;
        }
    }
    Ok(out)
}
