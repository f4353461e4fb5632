//! What incremental decoding keeps of past positions, one entry per layer: an attention layer's keys
//! and values, a Gated DeltaNet layer's last convolution inputs and its delta-rule state (so that one
//! new token costs the same whatever the length before it).

use burn::tensor::Tensor;

/// The cache of one layer.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    /// `[batch, kv_heads, past, head_dim]` keys and values, `None` before the first call.
    kv: Option<(Tensor<4>, Tensor<4>)>,
    /// Gated DeltaNet: the last `kernel − 1` inputs of the convolution, `[batch, kernel − 1, conv_dim]`.
    pub conv: Option<Tensor<3>>,
    /// Gated DeltaNet: the delta-rule state, `[batch, value_heads, key_head_dim, value_head_dim]` (f32).
    pub state: Option<Tensor<4>>,
}

impl LayerCache {
    /// Appends this step's keys and values and returns the whole history.
    ///
    /// # Shapes
    /// - k, v: `[batch, kv_heads, new, head_dim]`
    /// - output: `[batch, kv_heads, past + new, head_dim]` each
    pub fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match self.kv.take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        self.kv = Some((k.clone(), v.clone()));
        (k, v)
    }
}

/// The cache of a whole model, with the padding mask of every position it has seen.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    /// One per decoder layer.
    pub layers: Vec<LayerCache>,
    /// For each batch row, whether each cached position is a real token (`true`) or padding.
    pub valid: Vec<Vec<bool>>,
}

impl KvCache {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![LayerCache::default(); num_layers], valid: Vec::new() }
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.valid.first().map_or(0, Vec::len)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
