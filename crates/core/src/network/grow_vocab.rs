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
    /// head (grown by the mean when absent); a tied head is the embedding.
    pub fn take_vocab_tables(&mut self, embed: Tensor<2>, head: Option<Tensor<2>>) -> Result<()> {
        let [vocab, hidden] = embed.dims();
        if vocab < self.config.vocab_size || hidden != self.config.hidden_size {
            return Err(CoreError::Invalid(format!(
                "a saved embedding of {vocab} x {hidden} for a model of {} x {}",
                self.config.vocab_size, self.config.hidden_size
            )));
        }
        let dtype = self.model.embed_tokens.weight.val().dtype();
        let dtype = if self.model.embed_tokens.in_file.is_some() { DType::F32 } else { dtype };
        let tokens = self.model.embed_tokens.tokens.take();
        self.model.embed_tokens = Embedding::resident(embed.cast(dtype));
        self.model.embed_tokens.tokens = tokens;
        let old = self.config.vocab_size;
        self.config.vocab_size = vocab;
        if self.config.tie_word_embeddings {
            self.lm_head.weight = BaseWeight::Dense(self.model.embed_tokens.weight.val());
            return Ok(());
        }
        let head = match head {
            Some(h) if h.dims() == [vocab, hidden] => h,
            Some(h) => {
                return Err(CoreError::Invalid(format!(
                    "a saved head of {:?} beside an embedding of {vocab} x {hidden}",
                    h.dims()
                )));
            }
            None => {
                let BaseWeight::Dense(w) = &self.lm_head.weight else {
                    return Err(CoreError::Invalid("the head is not held dense: its vocabulary cannot grow".into()));
                };
                grown(w.clone(), vocab - old)
            }
        };
        let head_dtype = match &self.lm_head.weight {
            BaseWeight::Dense(w) => w.dtype(),
            _ => DType::F32,
        };
        self.lm_head = Linear { compute: self.lm_head.compute, ..Linear::from_weight(head.cast(head_dtype)) };
        Ok(())
    }

    /// Grows the embedding (and an untied head) to `vocab` rows; nothing when it has as many.
    pub fn grow_vocab(&mut self, vocab: usize) -> Result<()> {
        let old = self.config.vocab_size;
        if vocab <= old {
            return Ok(());
        }
        let extra = vocab - old;
        let device = self.device();
        let embed = &mut self.model.embed_tokens;
        // A table read from its file is taken into memory to grow.
        let table = match &embed.in_file {
            Some(rows) => rows.gather(&(0..old).collect::<Vec<_>>(), &device)?,
            None => embed.weight.val(),
        };
        let tokens = embed.tokens.take();
        *embed = Embedding::resident(grown(table, extra));
        embed.tokens = tokens;
        if self.config.tie_word_embeddings {
            self.lm_head.weight = BaseWeight::Dense(embed.weight.val());
        } else {
            let BaseWeight::Dense(w) = &self.lm_head.weight else {
                return Err(CoreError::Invalid("the head is not held dense: its vocabulary cannot grow".into()));
            };
            let lora = std::mem::take(&mut self.lm_head.lora);
            if !lora.is_empty() {
                return Err(CoreError::Invalid(
                    "an adapter on lm_head and added tokens: add the tokens before attaching it".into(),
                ));
            }
            self.lm_head = Linear { compute: self.lm_head.compute, ..Linear::from_weight(grown(w.clone(), extra)) };
        }
        self.config.vocab_size = vocab;
        Ok(())
    }
}
