//! `embed_tokens`: the token embedding table `[vocab, hidden]`. It is held on the device as a tensor,
//! or, when the head does not share it, left in its safetensors file and read a row per token
//! ([`FileRows`]): a step touches only its own tokens' rows, so holding the whole table would cost
//! memory (2.5 GB for a Qwen3.5-27B in bf16) for nothing. Both give the same values to the bit.

use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::error::Result;
use crate::io::file_rows::FileRows;
use crate::network::token_rows::TokenRows;

/// The token embeddings.
#[derive(Module, Debug)]
pub struct Embedding {
    /// `weight`: `[vocab, hidden]` in the base dtype; `[0, hidden]` when the table stays in its file.
    pub weight: Param<Tensor<2>>,
    /// The table in its file, when it is read from there.
    #[module(skip)]
    pub in_file: Option<FileRows>,
    /// Rows trained in full (PEFT's trainable tokens), in place of the table's.
    pub tokens: Option<TokenRows>,
}

impl Embedding {
    /// A table held on the device.
    pub fn resident(weight: Tensor<2>) -> Self {
        Self { weight: Param::from_tensor(weight), in_file: None, tokens: None }
    }

    /// A table read from its file by rows; `device` is where its rows go.
    pub fn from_file(rows: FileRows, device: &Device) -> Self {
        let weight = Tensor::zeros([0, rows.dims()[1]], device);
        Self { weight: Param::from_tensor(weight), in_file: Some(rows), tokens: None }
    }

    /// The embeddings of `ids` (checked to be in the vocabulary by the caller), in f32.
    ///
    /// # Shapes
    /// - ids: `batch` rows of `seq` ids
    /// - output: `[batch, seq, hidden]`
    pub fn forward(&self, ids: &[Vec<u32>], device: &Device) -> Result<Tensor<3>> {
        let emb = self.table_rows(ids, device)?;
        Ok(match &self.tokens {
            Some(t) => t.embed(emb, ids),
            None => emb,
        })
    }

    /// The table's rows of `ids`, in f32.
    fn table_rows(&self, ids: &[Vec<u32>], device: &Device) -> Result<Tensor<3>> {
        let (b, t) = (ids.len(), ids.first().map_or(0, Vec::len));
        if let Some(rows) = &self.in_file {
            let flat: Vec<usize> = ids.iter().flatten().map(|&i| i as usize).collect();
            let h = rows.dims()[1];
            return Ok(rows.gather(&flat, device)?.reshape([b, t, h]));
        }
        let flat: Vec<i64> = ids.iter().flatten().map(|&i| i64::from(i)).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, t]), device);
        // The table may be held in bf16/f16; activations are f32.
        Ok(burn::tensor::module::embedding(self.weight.val(), ids).cast(DType::F32))
    }

    /// The table's rows `ids` (in the vocabulary), in f32: `[ids.len(), hidden]`.
    pub fn rows(&self, ids: &[u32], device: &Device) -> Result<Tensor<2>> {
        let x = self.table_rows(&[ids.to_vec()], device)?;
        let h = x.dims()[2];
        Ok(x.reshape([ids.len(), h]))
    }

    /// Bytes the table takes in memory (none when it stays in its file).
    pub fn bytes(&self) -> usize {
        let w = self.weight.val();
        w.dims().iter().product::<usize>() * w.dtype().size()
    }

    /// The device the table (or, read from the file, its rows) lives on.
    pub fn device(&self) -> Device {
        self.weight.val().device()
    }
}
