//! The decoder-only causal language model shared by Llama, Mistral, Qwen2 and Qwen3:
//! `model.embed_tokens` -> `model.layers.*` -> `model.norm` -> `lm_head`.
//!
//! Architectures differ in data ([`ModelConfig`]: biases, q/k norms, tied head, rope schedule) and in
//! each layer's token mixer (attention, gated attention, Gated DeltaNet: [`DecoderLayer`]). In the Hub
//! form of a multimodal checkpoint the body is `model.language_model`; its vision tower and
//! multi-token-prediction head are not run.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Bool, DType, Device, Tensor, TensorData};

use crate::error::{CoreError, Result};
use crate::generation::kv_cache::KvCache;
use crate::io::load_options::LoadOptions;
use crate::io::weights::Weights;
use crate::network::attention::AttentionMask;
use crate::network::config::ModelConfig;
use crate::network::decoder_layer::DecoderLayer;
use crate::network::embedding::Embedding;
use crate::network::gated_delta_net::SequenceLayout;
use crate::network::linear::Linear;
use crate::network::norm::RmsNorm;
use crate::network::rope::Rope;
use crate::network::token_rows::TokenRows;

/// `model`: the transformer body.
#[derive(Module, Debug)]
pub struct DecoderStack {
    /// `embed_tokens`: [vocab, hidden].
    pub embed_tokens: Embedding,
    /// `layers`.
    pub layers: Vec<DecoderLayer>,
    /// `norm`: the final RMSNorm.
    pub norm: RmsNorm,
}

/// A causal language model (`*ForCausalLM`).
#[derive(Module, Debug)]
pub struct CausalLm {
    /// `model`.
    pub model: DecoderStack,
    /// `lm_head`: hidden -> vocab; shares `embed_tokens` when the config ties them.
    pub lm_head: Linear,
    /// An untied head's rows trained in full (PEFT's trainable tokens on `lm_head`).
    pub head_tokens: Option<TokenRows>,
    /// The resolved configuration.
    #[module(skip)]
    pub config: ModelConfig,
    /// Rotary frequency table.
    #[module(skip)]
    pub rope: Rope,
    /// How the base was loaded (dtype, quantization).
    #[module(skip)]
    pub load_options: LoadOptions,
}

/// What the decoder layers take for one batch: the embedded tokens, the rotary tables and the mask.
#[derive(Debug, Clone)]
pub struct LayerInputs {
    /// `[batch, seq, hidden]` embeddings (f32).
    pub x: Tensor<3>,
    /// `[batch, 1, seq, head_dim]`.
    pub cos: Tensor<4>,
    /// `[batch, 1, seq, head_dim]`.
    pub sin: Tensor<4>,
    /// Which keys each query sees.
    pub mask: AttentionMask,
    /// Padding and packed segments, for the Gated DeltaNet layers.
    pub layout: SequenceLayout,
}

/// A batch of token ids, rectangular, with the padding mask (`true` = real token).
#[derive(Debug, Clone, Default)]
pub struct TokenBatch {
    /// `[batch][seq]` ids.
    pub ids: Vec<Vec<u32>>,
    /// `[batch][seq]`; `None` means no padding.
    pub mask: Option<Vec<Vec<bool>>>,
    /// `[batch][seq]` segment numbers of packed rows: a token attends only to earlier tokens of its
    /// own segment, and positions restart at 0 in each segment. `None`: one segment per row.
    pub segments: Option<Vec<Vec<u32>>>,
}

impl TokenBatch {
    /// One unpadded sequence.
    pub fn single(ids: Vec<u32>) -> Self {
        Self { ids: vec![ids], mask: None, segments: None }
    }

    /// Unpadded rows of equal length.
    pub fn rows(ids: Vec<Vec<u32>>) -> Self {
        Self { ids, mask: None, segments: None }
    }

    /// Pads sequences on the left with `pad_id` (the side generation needs).
    pub fn left_padded(seqs: &[Vec<u32>], pad_id: u32) -> Self {
        let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(seqs.len());
        let mut mask = Vec::with_capacity(seqs.len());
        for s in seqs {
            let pad = t - s.len();
            ids.push(std::iter::repeat_n(pad_id, pad).chain(s.iter().copied()).collect());
            mask.push(std::iter::repeat_n(false, pad).chain(std::iter::repeat_n(true, s.len())).collect());
        }
        Self { ids, mask: Some(mask), segments: None }
    }
}

/// What a forward pass returns.
#[derive(Debug)]
pub struct ForwardOutput {
    /// `[batch, seq, vocab]` logits.
    pub logits: Tensor<3>,
    /// When asked for: the embeddings, then each layer's output; the last entry has the final norm
    /// applied (transformers' `output_hidden_states` convention). Each `[batch, seq, hidden]`.
    pub hidden_states: Option<Vec<Tensor<3>>>,
}

impl CausalLm {
    /// Loads a Hugging Face model folder (`config.json` + safetensors weights).
    pub fn load_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::load_dir_with(dir, device, &LoadOptions::default())
    }

    /// Loads a Hugging Face model folder with the base held as `opts` says (dtype, NF4).
    pub fn load_dir_with(dir: impl AsRef<Path>, device: &Device, opts: &LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        if lora_formats::gguf::is_gguf_file(dir) {
            return Self::load_gguf(dir, device, opts);
        }
        if !dir.is_dir() {
            return Err(CoreError::config(
                dir,
                "not a folder; a model folder holds config.json and safetensors weights",
            ));
        }
        if !dir.join("config.json").is_file() {
            return Err(CoreError::config(dir, "no config.json in this folder"));
        }
        let config = ModelConfig::from_file(dir.join("config.json"))?;
        let weights = Weights::open_dir(dir)?;
        Self::load_with(&weights, config, device, opts)
    }

    /// Loads a GGUF model file (llama.cpp, Ollama): its configuration from the `{arch}.*` keys, its
    /// tensors dequantized to the base dtype (or NF4) one at a time.
    pub fn load_gguf(path: &Path, device: &Device, opts: &LoadOptions) -> Result<Self> {
        let file = lora_formats::gguf::GgufFile::open(path).map_err(|e| CoreError::Gguf(e.to_string()))?;
        let config = crate::io::gguf::model::config(&file)?;
        let weights = Weights::open_gguf(file, &config)?;
        Self::load_with(&weights, config, device, opts)
    }

    /// Builds the model from opened weights. Every tensor must be used: a leftover tensor means the
    /// config does not describe these weights.
    pub fn load(w: &Weights, config: ModelConfig, device: &Device) -> Result<Self> {
        Self::load_with(w, config, device, &LoadOptions::default())
    }

    /// [`Self::load`] with the base held as `opts` says: the embeddings and the head in the base
    /// dtype (never quantized, as bitsandbytes leaves them), the decoder's linear layers in the base
    /// dtype or NF4, norms and biases in f32.
    pub fn load_with(w: &Weights, config: ModelConfig, device: &Device, opts: &LoadOptions) -> Result<Self> {
        let cfg = &config;
        let dtype = opts.dtype.dtype();
        // A GPU backend may lack a reduced precision (WGSL has no bf16, and f16 only with the
        // shader-f16 extension); computing in it there gives garbage, not an error, so ask first.
        if !device.supports_dtype(dtype) {
            return Err(CoreError::Invalid(format!(
                "this device cannot compute in {}: set the base dtype ([model] dtype, --dtype) to \"f32\"{}",
                opts.dtype,
                if opts.dtype != crate::BaseDtype::F16 && device.supports_dtype(DType::F16) {
                    " or \"f16\""
                } else {
                    ""
                }
            )));
        }
        let p = &cfg.text_prefix;
        let (embed_name, embed_shape) = (format!("{p}.embed_tokens.weight"), [cfg.vocab_size, cfg.hidden_size]);
        // A table the head does not share is read a row per token from its file (embedding.rs).
        let in_file = if cfg.tie_word_embeddings { None } else { w.file_rows(&embed_name, embed_shape, dtype)? };
        let embed = match in_file {
            Some(rows) => Embedding::from_file(rows, device),
            None => Embedding::resident(w.tensor_as(&embed_name, embed_shape, dtype, device)?),
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(w, &cfg.layer_prefix(i), i, cfg, opts, device))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load_as(
            w,
            &format!("{p}.norm"),
            cfg.hidden_size,
            cfg.rms_norm_eps,
            cfg.zero_centred_norms,
            device,
        )?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear { compute: opts.compute_dtype(device), ..Linear::from_weight(embed.weight.val()) }
        } else {
            Linear::load(w, "lm_head", (cfg.hidden_size, cfg.vocab_size), false, opts, false, device)?
        };
        // Some tied checkpoints still carry a copy of the head; it is the same matrix.
        let ignore: &[&str] = if cfg.tie_word_embeddings { &["lm_head.weight"] } else { &[] };
        // What the architecture carries beside the language model (Qwen3.5's vision tower and
        // multi-token-prediction head, in either checkpoint form) is kept on disk, not run.
        w.check_all_taken_except(ignore, cfg.architecture.spec().carried)?;
        Ok(Self {
            model: DecoderStack { embed_tokens: embed, layers, norm },
            lm_head,
            head_tokens: None,
            rope: Rope::new(cfg),
            config,
            load_options: *opts,
        })
    }

    /// Bytes the frozen base takes in memory (embeddings, linear weights, norms and biases; a tied
    /// head counted once).
    pub fn base_bytes(&self) -> usize {
        let tensor_bytes = |t: &Tensor<1>| t.dims()[0] * t.dtype().size();
        let mut total = self.model.embed_tokens.bytes();
        for (path, lin) in self.linear_modules() {
            if path != "lm_head" || !self.config.tie_word_embeddings {
                total += lin.weight.bytes();
            }
            total += lin.bias.as_ref().map_or(0, |b| tensor_bytes(&b.val()));
        }
        for l in &self.model.layers {
            let a = l.self_attn.as_ref();
            for n in [
                Some(&l.input_layernorm),
                Some(&l.post_attention_layernorm),
                a.and_then(|a| a.q_norm.as_ref()),
                a.and_then(|a| a.k_norm.as_ref()),
            ]
            .into_iter()
            .flatten()
            {
                total += tensor_bytes(&n.weight.val());
            }
            if let Some(g) = &l.linear_attn {
                let conv = g.conv1d.val();
                total += conv.dims().iter().product::<usize>() * conv.dtype().size();
                for t in [g.a_log.val(), g.dt_bias.val(), g.norm.weight.val()] {
                    total += tensor_bytes(&t);
                }
            }
        }
        total + tensor_bytes(&self.model.norm.weight.val())
    }

    /// Every linear layer with its Hugging Face module path, in PEFT's (named_modules) order; an MoE
    /// layer's router and experts follow its other layers, under transformers 5's in-memory names
    /// ([`crate::network::experts::SparseMoe::linears`]).
    pub fn linear_modules(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::new();
        for (i, l) in self.model.layers.iter().enumerate() {
            let prefix = self.config.layer_prefix(i);
            for (name, lin) in l.linears() {
                out.push((format!("{prefix}.{name}"), lin));
            }
            for (name, lin) in l.moe.iter().flat_map(|m| m.linears()) {
                out.push((format!("{prefix}.{name}"), lin));
            }
        }
        out.push(("lm_head".to_string(), &self.lm_head));
        out
    }

    /// Mutable access to the linear layers, same order as [`Self::linear_modules`].
    pub fn linear_modules_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, l) in self.model.layers.iter_mut().enumerate() {
            let prefix = self.config.layer_prefix(i);
            let (fixed, moe) = l.linears_and_experts_mut();
            for (name, lin) in fixed {
                out.push((format!("{prefix}.{name}"), lin));
            }
            for (name, lin) in moe.into_iter().flat_map(|m| m.linears_mut()) {
                out.push((format!("{prefix}.{name}"), lin));
            }
        }
        out.push(("lm_head".to_string(), &mut self.lm_head));
        out
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.model.embed_tokens.device()
    }

    /// Logits for a batch; with a cache, the batch continues the cached sequences and the cache grows.
    pub fn forward(&self, batch: &TokenBatch, cache: Option<&mut KvCache>) -> Result<Tensor<3>> {
        Ok(self.forward_with(batch, cache, false)?.logits)
    }

    /// Forward pass with optional per-layer hidden states.
    pub fn forward_with(
        &self,
        batch: &TokenBatch,
        mut cache: Option<&mut KvCache>,
        hidden_states: bool,
    ) -> Result<ForwardOutput> {
        let (inputs, valid) = self.layer_inputs_with(batch, cache.as_deref())?;
        let LayerInputs { mut x, cos, sin, mask, layout } = inputs;
        let mut states = hidden_states.then(Vec::new);
        if let Some(c) = cache.as_deref_mut()
            && c.layers.len() != self.model.layers.len()
        {
            *c = KvCache::new(self.model.layers.len());
        }
        for (i, layer) in self.model.layers.iter().enumerate() {
            if let Some(s) = states.as_mut() {
                s.push(x.clone());
            }
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, &cos, &sin, &mask, &layout, layer_cache);
        }
        let x = self.model.norm.forward(x);
        if let Some(s) = states.as_mut() {
            s.push(x.clone());
        }
        if let Some(c) = cache {
            c.valid = valid;
        }
        Ok(ForwardOutput { logits: self.head_of(x), hidden_states: states })
    }

    /// The head of normed hidden states: `lm_head`, with the trained token rows' columns when the
    /// head shares the embedding table (PEFT ties the head's token adapter to the embedding's).
    ///
    /// # Shapes
    /// - x: `[.., hidden]`
    /// - output: `[.., vocab]`
    fn head_of<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let y = self.lm_head.forward(x.clone());
        let tokens = if self.config.tie_word_embeddings { &self.model.embed_tokens.tokens } else { &self.head_tokens };
        match tokens {
            Some(t) => t.head(y, x),
            None => y,
        }
    }

    /// The inputs of the decoder layers for a batch without a cache (training, evaluation).
    pub fn layer_inputs(&self, batch: &TokenBatch) -> Result<LayerInputs> {
        Ok(self.layer_inputs_with(batch, None)?.0)
    }

    /// The output of the last decoder layer, before the final norm.
    ///
    /// # Shapes
    /// - output: `[batch, seq, hidden]`
    pub fn last_hidden(&self, batch: &TokenBatch) -> Result<Tensor<3>> {
        let LayerInputs { mut x, cos, sin, mask, layout } = self.layer_inputs(batch)?;
        for layer in &self.model.layers {
            x = layer.forward(x, &cos, &sin, &mask, &layout, None);
        }
        Ok(x)
    }

    /// Logits for rows of last-layer hidden states: the final norm, then the head.
    ///
    /// # Shapes
    /// - hidden: `[rows, hidden]`
    /// - output: `[rows, vocab]`
    pub fn head(&self, hidden: Tensor<2>) -> Tensor<2> {
        self.head_of(self.model.norm.forward(hidden))
    }

    /// Checks a batch, and builds the embeddings, rotary tables and mask of its new positions, with
    /// the validity of every key position (cached ones first).
    fn layer_inputs_with(&self, batch: &TokenBatch, cache: Option<&KvCache>) -> Result<(LayerInputs, Vec<Vec<bool>>)> {
        let device = self.device();
        let b = batch.ids.len();
        let t = batch.ids.first().map_or(0, Vec::len);
        if b == 0 || t == 0 || batch.ids.iter().any(|r| r.len() != t) {
            return Err(CoreError::Invalid("a batch needs at least one token and rows of equal length".into()));
        }
        if let Some(m) = &batch.mask
            && (m.len() != b || m.iter().any(|r| r.len() != t))
        {
            return Err(CoreError::Invalid("the padding mask must have the shape of the ids".into()));
        }
        if let Some(sg) = &batch.segments {
            if sg.len() != b || sg.iter().any(|r| r.len() != t) {
                return Err(CoreError::Invalid("the segment ids must have the shape of the ids".into()));
            }
            if cache.is_some() {
                return Err(CoreError::Invalid("packed segments cannot be combined with a KV cache".into()));
            }
        }
        let vocab = self.config.vocab_size;
        if let Some(bad) = batch.ids.iter().flatten().find(|&&id| id as usize >= vocab) {
            return Err(CoreError::Invalid(format!("token id {bad} is outside the vocabulary of {vocab}")));
        }

        // Validity of every key position: cached ones, then this batch.
        let past = cache.as_ref().map_or(0, |c| c.len());
        if let Some(c) = cache.as_ref()
            && past > 0
            && c.valid.len() != b
        {
            return Err(CoreError::Invalid("batch size differs from the cached batch".into()));
        }
        let mut valid: Vec<Vec<bool>> = match cache.as_ref() {
            Some(c) if past > 0 => c.valid.clone(),
            _ => vec![Vec::new(); b],
        };
        for (r, row) in valid.iter_mut().enumerate() {
            match &batch.mask {
                Some(m) => row.extend_from_slice(&m[r]),
                None => row.extend(std::iter::repeat_n(true, t)),
            }
        }
        let total = past + t;
        if let Some(window) = self.config.sliding_window
            && total > window
        {
            return Err(CoreError::Invalid(format!(
                "sequence of {total} tokens exceeds the sliding window of {window}; sliding-window attention \
                 over longer sequences is not supported"
            )));
        }

        // Position of each new token = number of real tokens before it in its row, so that left padding
        // shifts nothing (transformers' generate: cumsum(attention_mask) - 1). Padding gets position 0.
        let positions: Vec<Vec<usize>> = valid
            .iter()
            .enumerate()
            .map(|(r, row)| {
                let seg = batch.segments.as_ref().map(|s| &s[r]);
                let mut seen = 0usize;
                let all: Vec<usize> = row
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| {
                        // A packed row restarts positions at each new segment.
                        if let Some(seg) = seg
                            && j > 0
                            && seg[j] != seg[j - 1]
                        {
                            seen = 0;
                        }
                        let p = if v { seen } else { 0 };
                        seen += usize::from(v);
                        p
                    })
                    .collect();
                all[past..].to_vec()
            })
            .collect();
        let (cos, sin) = self.rope.tables(&positions, &device);
        let mask = build_mask(&valid, batch.segments.as_deref(), past, t, self.config.num_attention_heads, &device);

        let x = self.model.embed_tokens.forward(&batch.ids, &device)?; // [b, t, h]
        let layout = if self.config.linear_attention.is_some() {
            // As transformers: a padding mask only when this call's tokens include padding.
            let padding = batch.mask.as_ref().filter(|m| m.iter().flatten().any(|v| !v)).map(|m| {
                let values: Vec<f32> = m.iter().flatten().map(|&v| f32::from(u8::from(v))).collect();
                Tensor::<3>::from_data(TensorData::new(values, [b, t, 1]), &device)
            });
            SequenceLayout { padding, segments: batch.segments.clone().map(std::sync::Arc::new) }
        } else {
            SequenceLayout::default()
        };
        Ok((LayerInputs { x, cos, sin, mask, layout }, valid))
    }
}

/// The attention mask for `t` new queries after `past` cached positions.
///
/// Query i (absolute position past + i) may see key j when j ≤ past + i and key j is a real token.
/// A padding query would then see nothing, and a softmax over nothing is NaN that would leak into
/// later layers through 0 · NaN; so every query always sees itself. Padding rows produce garbage
/// that nothing reads. With packed segments, keys of other segments are hidden too
/// (block-diagonal causal attention).
fn build_mask(
    valid: &[Vec<bool>],
    segments: Option<&[Vec<u32>]>,
    past: usize,
    t: usize,
    heads: usize,
    device: &Device,
) -> AttentionMask {
    let padded = valid.iter().any(|r| r.iter().any(|v| !v));
    if !padded && segments.is_none() {
        if past == 0 {
            return AttentionMask::Causal;
        }
        if t == 1 {
            return AttentionMask::Full;
        }
    }
    let b = valid.len();
    let tk = past + t;
    let mut data = Vec::with_capacity(b * heads * t * tk);
    for (r, row) in valid.iter().enumerate() {
        let seg = segments.map(|s| &s[r]);
        let mut one_head = Vec::with_capacity(t * tk);
        for i in 0..t {
            let q = past + i;
            for (j, &v) in row.iter().enumerate() {
                let other_segment = seg.is_some_and(|s| s[j] != s[q]);
                one_head.push(j > q || ((!v || other_segment) && j != q));
            }
        }
        for _ in 0..heads {
            data.extend_from_slice(&one_head);
        }
    }
    AttentionMask::Explicit(Tensor::<4, Bool>::from_data(TensorData::new(data, [b, heads, t, tk]), device))
}
