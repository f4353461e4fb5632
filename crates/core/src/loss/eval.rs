//! Evaluation of a model on texts: mean next-token loss per predicted token and perplexity, the numbers
//! transformers gives for `model(ids, labels=ids).loss` weighted by each text's predicted tokens.

use crate::error::{CoreError, Result};
use crate::io::tokenizer::Tokenizer;
use crate::kernels::host::to_f32_vec;
use crate::loss::shifted_cross_entropy_sum;
use crate::network::model::{CausalLm, TokenBatch};

/// Loss figures over a set of texts.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// Texts evaluated.
    pub texts: usize,
    /// Tokens predicted (each text's length minus one).
    pub predicted_tokens: usize,
    /// Mean negative log-likelihood per predicted token (nats).
    pub mean_loss: f64,
    /// exp(mean_loss).
    pub perplexity: f64,
}

/// Evaluates `texts`, each encoded with the tokenizer's special tokens, one text at a time.
pub fn evaluate_texts(model: &CausalLm, tokenizer: &Tokenizer, texts: &[String]) -> Result<EvalReport> {
    let mut total = 0.0f64;
    let mut count = 0usize;
    for text in texts {
        let ids = tokenizer.encode(text, true)?;
        if ids.len() < 2 {
            continue; // nothing to predict
        }
        let labels = vec![ids.iter().map(|&i| Some(i)).collect::<Vec<_>>()];
        let logits = model.forward(&TokenBatch::single(ids), None)?;
        let (sum, n) = shifted_cross_entropy_sum(logits, &labels);
        total += to_f32_vec(sum)?[0] as f64;
        count += n;
    }
    if count == 0 {
        return Err(CoreError::Invalid("no text has two or more tokens; nothing to evaluate".into()));
    }
    let mean_loss = total / count as f64;
    Ok(EvalReport { texts: texts.len(), predicted_tokens: count, mean_loss, perplexity: mean_loss.exp() })
}
