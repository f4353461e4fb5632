//! Growing the vocabulary for tokens added to the tokenizer (`[data] add_special_tokens`, or an
//! adapter saved with them), as transformers' `resize_token_embeddings` does before PEFT trains or
//! loads such an adapter.
//!
//! New rows start as the mean of the existing rows (transformers 5 draws them from a normal with
//! that mean and the rows' covariance; a run's new rows are trained in full as trainable tokens,
//! which replace the rows' values, so their start matters only as the trained rows' start).

use burn::tensor::{DType, Tensor};

use crate::error::{CoreError, Result};
use crate::network::base_weight::BaseWeight;
use crate::network::embedding::Embedding;
use crate::network::linear::Linear;
use crate::network::model::CausalLm;

/// `table` ([vocab, hidden]) with `extra` rows appended, each the mean of its rows, in its dtype.
fn grown(table: Tensor<2>, extra: usize) -> Tensor<2> {
    let hidden = table.dims()[1];
    let dtype = table.dtype();
    let mean = table.clone().cast(DType::F32).mean_dim(0); // [1, hidden]
    let rows = mean.expand([extra, hidden]).cast(dtype);
    Tensor::cat(vec![table, rows], 0)
}

impl CausalLm {
    /// Takes the vocabulary tables a PEFT adapter saved with its added tokens
    /// (`save_embedding_layers`: `…token_adapter.base_layer.weight`, the resized tables whole):
    /// `embed` ([vocab, hidden], at least the base's rows) becomes the embedding, `head` an untied
    /// head (grown by the mean when absent); a tied head is the embedding. Every refusal comes
    /// before anything changes.
    pub fn take_vocab_tables(&mut self, embed: Tensor<2>, head: Option<Tensor<2>>) -> Result<()> {
        let [vocab, hidden] = embed.dims();
        let old = self.config.vocab_size;
        if vocab < old || hidden != self.config.hidden_size {
            return Err(CoreError::Invalid(format!(
                "a saved embedding of {vocab} x {hidden} for a model of {old} x {}",
                self.config.hidden_size
            )));
        }
        let head = if self.config.tie_word_embeddings {
            None
        } else {
            if !self.lm_head.lora.is_empty() {
                return Err(CoreError::Invalid(
                    "an adapter on lm_head and a vocabulary to grow: grow it before attaching the adapter".into(),
                ));
            }
            let BaseWeight::Dense(w) = &self.lm_head.weight else {
                return Err(CoreError::Invalid("the head is not held dense: its vocabulary cannot grow".into()));
            };
            Some(match head {
                Some(h) if h.dims() == [vocab, hidden] => h.cast(w.dtype()),
                Some(h) => {
                    return Err(CoreError::Invalid(format!(
                        "a saved head of {:?} beside an embedding of {vocab} x {hidden}",
                        h.dims()
                    )));
                }
                None => grown(w.clone(), vocab - old),
            })
        };
        // A table that was read from its file is held in memory now, in f32.
        let dtype = match self.model.embed_tokens.in_file {
            Some(_) => DType::F32,
            None => self.model.embed_tokens.weight.val().dtype(),
        };
        let tokens = self.model.embed_tokens.tokens.take();
        self.model.embed_tokens = Embedding::resident(embed.cast(dtype));
        self.model.embed_tokens.tokens = tokens;
        match head {
            None => self.lm_head.weight = BaseWeight::Dense(self.model.embed_tokens.weight.val()),
            Some(h) => self.lm_head = Linear { compute: self.lm_head.compute, ..Linear::from_weight(h) },
        }
        self.config.vocab_size = vocab;
        Ok(())
    }

    /// Grows the embedding (and an untied head) to `vocab` rows; nothing when it has as many.
    pub fn grow_vocab(&mut self, vocab: usize) -> Result<()> {
        let old = self.config.vocab_size;
        if vocab <= old {
            return Ok(());
        }
        let embed = &self.model.embed_tokens;
        let table = match &embed.in_file {
            Some(rows) => rows.gather(&(0..old).collect::<Vec<_>>(), &self.device())?,
            None => embed.weight.val(),
        };
        self.take_vocab_tables(grown(table, vocab - old), None)
    }
}
