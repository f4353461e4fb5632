//! The weights of a Hugging Face model folder: `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`; or of a GGUF file, read under the same Hugging Face names
//! (dequantized, and with the q/k rows of `llama` files put back in Hugging Face's order). Tensors are
//! read one at a time from memory maps, so loading never holds the file bytes and the model at once
//! beyond a single tensor.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};
use lora_formats::gguf::GgufFile;
use lora_formats::nf4::Nf4Tensor;
use serde::Deserialize;

use crate::error::{CoreError, Result};
use crate::io::file_rows::FileRows;
use lora_formats::safetensors::SafetensorsFile;

/// `model.safetensors.index.json`.
#[derive(Debug, Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// All weight files of one model, with a record of which tensors the model took.
#[derive(Debug)]
pub struct Weights {
    dir: PathBuf,
    files: Vec<SafetensorsFile>,
    /// Tensor name -> index into `files`.
    location: HashMap<String, usize>,
    /// A GGUF file instead of safetensors files.
    gguf: Option<GgufSource>,
    taken: RefCell<BTreeSet<String>>,
}

/// A GGUF model file and how its q/k rows are laid out.
#[derive(Debug)]
struct GgufSource {
    file: GgufFile,
    /// (query heads, key/value heads) when the converter permuted q/k rows (`llama` files).
    permuted: Option<(usize, usize)>,
    /// A `qwen35` file's Gated DeltaNet heads: its tensors' names and values are llama.cpp's.
    qwen35: Option<lora_formats::gguf::qwen35::LinearHeads>,
    /// Decoder layers; blocks past them (a multi-token-prediction block) are not read.
    layers: usize,
}

impl Weights {
    /// Opens the weights of the model folder `dir`.
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.is_file() {
            return Self::from_files(dir, vec![single]);
        }
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| CoreError::io(&index, e))?;
            let parsed: ShardIndex = serde_json::from_str(&text).map_err(|e| CoreError::json(&index, e))?;
            let shards: BTreeSet<&String> = parsed.weight_map.values().collect();
            let files = shards.into_iter().map(|s| dir.join(s)).collect();
            let weights = Self::from_files(dir, files)?;
            // The index must agree with the shards it names.
            for (name, shard) in &parsed.weight_map {
                match weights.location.get(name) {
                    Some(&i) if weights.files[i].path().ends_with(shard) => {}
                    _ => {
                        return Err(CoreError::safetensors(
                            index,
                            format!("index maps '{name}' to '{shard}', which does not hold it"),
                        ));
                    }
                }
            }
            return Ok(weights);
        }
        if dir.join("pytorch_model.bin").exists() || dir.join("pytorch_model.bin.index.json").exists() {
            return Err(CoreError::config(
                dir,
                "only pickle weights (pytorch_model.bin) found; lora reads safetensors only \
                 (convert with transformers: model.save_pretrained(dir, safe_serialization=True))",
            ));
        }
        Err(CoreError::config(dir, "no model.safetensors or model.safetensors.index.json in this folder"))
    }

    /// Uses explicit files (a single `.safetensors` path, or shards).
    pub fn from_files(dir: impl AsRef<Path>, paths: Vec<PathBuf>) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut location = HashMap::new();
        for (i, p) in paths.into_iter().enumerate() {
            let f = SafetensorsFile::open(&p)?;
            for name in f.tensors().keys() {
                if location.insert(name.clone(), i).is_some() {
                    return Err(CoreError::safetensors(
                        p.clone(),
                        format!("tensor '{name}' appears in more than one shard"),
                    ));
                }
            }
            files.push(f);
        }
        Ok(Self { dir: dir.as_ref().to_path_buf(), files, location, gguf: None, taken: RefCell::default() })
    }

    /// Opens a GGUF model file; `config` is the configuration read from it.
    pub fn open_gguf(file: GgufFile, config: &crate::network::config::ModelConfig) -> Result<Self> {
        let arch = crate::io::gguf::model::architecture(&file)?;
        let permuted = crate::io::gguf::model::permutes_qk(&arch)
            .then_some((config.num_attention_heads, config.num_key_value_heads));
        let qwen35 = if lora_formats::gguf::qwen35::is_qwen35(&arch) {
            Some(crate::io::gguf::qwen35::linear_heads(config).ok_or_else(|| {
                CoreError::Gguf(format!("{}: a qwen35 file without Gated DeltaNet layers", file.path().display()))
            })?)
        } else {
            None
        };
        let layers = config.num_hidden_layers;
        Ok(Self {
            dir: file.path().to_path_buf(),
            files: Vec::new(),
            location: HashMap::new(),
            gguf: Some(GgufSource { file, permuted, qwen35, layers }),
            taken: RefCell::default(),
        })
    }

    /// The GGUF file, when the weights come from one.
    pub fn gguf(&self) -> Option<&GgufFile> {
        self.gguf.as_ref().map(|g| &g.file)
    }

    /// The folder the weights come from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The weight files.
    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        if let Some(g) = &self.gguf {
            use lora_formats::gguf::experts::{ExpertTensor, expert_tensor};
            let has = |n: &str| g.file.tensor(n).is_some();
            return match expert_tensor(name) {
                Some(ExpertTensor::GateUp { gate, merged, .. }) => has(&gate) || has(&merged),
                Some(ExpertTensor::Slice { stacked, merged, .. }) => has(&stacked) || merged.is_some_and(|m| has(&m)),
                _ => crate::io::gguf::model::gguf_name(name).is_some_and(|n| has(&n)),
            };
        }
        self.location.contains_key(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.location.keys().cloned().collect();
        v.sort();
        v
    }

    /// Reads tensor `name` as f32 on `device`, checking that its shape is `expected`.
    pub fn tensor<const D: usize>(&self, name: &str, expected: [usize; D], device: &Device) -> Result<Tensor<D>> {
        let (values, shape) = self.read_f32(name, &expected)?;
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }

    /// Reads tensor `name` in `dtype` on `device`, checking that its shape is `expected`. Converting
    /// from the file's dtype rounds to nearest even, as `torch.Tensor.to` does; a bf16 file read as
    /// bf16 keeps its exact values.
    pub fn tensor_as<const D: usize>(
        &self,
        name: &str,
        expected: [usize; D],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor<D>> {
        // Same 2-byte dtype in the file as asked for: take the bytes as they are, without an f32 copy
        // (the embeddings and head of an 8B model are 2 GB each in f32).
        if self.stored_dtype(name).is_some_and(|d| d != lora_formats::DType::F32 && stores(d, dtype)) {
            let (bytes, shape) = self.read_bytes(name, &expected)?;
            return Ok(held_from_bytes(bytes, shape, dtype, device));
        }
        let (values, shape) = self.read_f32(name, &expected)?;
        if dtype == DType::F16
            && let Some(v) = values.iter().find(|v| v.is_finite() && v.abs() > 65504.0)
        {
            return Err(CoreError::Invalid(format!(
                "{}: tensor '{name}' holds {v}, beyond f16's range (65504); hold the base in bf16 or f32",
                self.dir.display()
            )));
        }
        Ok(held_from_f32(values, shape, dtype, device))
    }

    /// The dtype a safetensors file stores tensor `name` in (`None` for GGUF and absent names).
    fn stored_dtype(&self, name: &str) -> Option<lora_formats::DType> {
        self.location.get(name).and_then(|&i| self.files[i].info(name)).map(|i| i.dtype)
    }

    /// Tensor `name` (checked to be `expected`) left in its safetensors file, held as `dtype` and read
    /// by rows ([`FileRows`]). `None` for a GGUF file (its rows may be quantized) and where the values
    /// must first be checked against f16's range as [`Self::tensor_as`] does, a whole table at load.
    pub fn file_rows(&self, name: &str, expected: [usize; 2], dtype: DType) -> Result<Option<FileRows>> {
        if self.gguf.is_some() {
            return Ok(None);
        }
        let Some(stored) = self.stored_dtype(name).filter(|d| d.is_float()) else { return Ok(None) };
        if dtype == DType::F16 && stored != lora_formats::DType::F16 {
            return Ok(None);
        }
        let file = self.checked(name, &expected)?;
        let info = file.info(name).expect("located tensors exist");
        FileRows::open(file.path().to_path_buf(), file.file_offset(info), stored, expected, dtype).map(Some)
    }

    /// Reads tensor `name` and quantizes it to NF4 as bitsandbytes does, one tensor at a time, so that
    /// the dense model never exists in memory. The values are first rounded to `dtype`, as
    /// transformers quantizes weights already cast to the model's `torch_dtype`.
    pub fn nf4(&self, name: &str, expected: [usize; 2], double_quant: bool, dtype: DType) -> Result<Nf4Tensor> {
        let (mut values, shape) = self.read_f32(name, &expected)?;
        round_to(&mut values, dtype);
        Ok(Nf4Tensor::quantize(&values, &shape, double_quant))
    }

    /// The 4-bit weight `name` of a bitsandbytes checkpoint (`name` as packed codes plus its
    /// `.absmax`, `.quant_map`, nested scales and quant state), when the checkpoint stores it so;
    /// `None` for a dense tensor. Its shape must be `expected`; the tensors read are marked taken.
    pub fn stored_nf4(&self, name: &str, expected: [usize; 2]) -> Result<Option<Nf4Tensor>> {
        use lora_formats::bnb4bit::{FP4_STATE, NF4_STATE, companion_names, read_nf4};
        let has = |n: String| self.location.contains_key(&n);
        if self.gguf.is_some() || !(has(format!("{name}{NF4_STATE}")) || has(format!("{name}{FP4_STATE}"))) {
            return Ok(None);
        }
        let get = |n: &str| {
            let file = &self.files[*self.location.get(n)?];
            let info = file.info(n)?;
            Some((info.dtype, info.shape.clone(), std::borrow::Cow::Borrowed(file.bytes(info))))
        };
        let stored = read_nf4(name, get).map_err(|m| CoreError::Invalid(format!("{}: {m}", self.dir.display())))?;
        if stored.nf4.shape != expected {
            return Err(CoreError::ShapeMismatch {
                path: self.dir.join(format!("{name}{NF4_STATE}")),
                name: name.to_string(),
                expected: expected.to_vec(),
                found: stored.nf4.shape,
            });
        }
        let mut taken = self.taken.borrow_mut();
        let parts: Vec<String> = std::iter::once(name.to_string())
            .chain(companion_names(name))
            .filter(|n| self.location.contains_key(n))
            .collect();
        // The codes were copied out of the mapping: drop its pages from the resident set, or a 4-bit
        // 27B would count its whole file twice by the end of the load.
        for n in &parts {
            let file = &self.files[self.location[n]];
            if let Some(info) = file.info(n) {
                file.release(info);
            }
        }
        taken.extend(parts);
        Ok(Some(stored.nf4))
    }

    /// The raw little-endian bytes of tensor `name`, checking its shape.
    fn read_bytes(&self, name: &str, expected: &[usize]) -> Result<(Vec<u8>, Vec<usize>)> {
        let file = self.checked(name, expected)?;
        Ok(file.to_bytes(name).expect("located tensors exist"))
    }

    /// The file holding `name`, after checking that it exists with shape `expected`; marks it taken.
    fn checked(&self, name: &str, expected: &[usize]) -> Result<&SafetensorsFile> {
        let Some(&i) = self.location.get(name) else {
            return Err(CoreError::MissingTensor {
                dir: self.dir.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
            });
        };
        let file = &self.files[i];
        let found = &file.info(name).expect("located tensors exist").shape;
        if found.as_slice() != expected {
            return Err(CoreError::ShapeMismatch {
                path: file.path().to_path_buf(),
                name: name.to_string(),
                expected: expected.to_vec(),
                found: found.clone(),
            });
        }
        self.taken.borrow_mut().insert(name.to_string());
        Ok(file)
    }

    /// Reads tensor `name` as f32 values, checking its shape.
    pub fn read_f32(&self, name: &str, expected: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
        if let Some(g) = &self.gguf {
            return self.read_gguf(g, name, expected);
        }
        Ok(self.checked(name, expected)?.to_f32(name)?)
    }

    fn read_gguf(&self, g: &GgufSource, name: &str, expected: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
        if let Some(read) = self.read_gguf_experts(g, name, expected)? {
            return Ok(read);
        }
        let missing =
            || CoreError::MissingTensor { dir: self.dir.clone(), name: name.to_string(), expected: expected.to_vec() };
        let gname = match g.qwen35 {
            Some(_) => lora_formats::gguf::qwen35::tensor_name(name),
            None => crate::io::gguf::model::gguf_name(name),
        };
        let gname = gname.ok_or_else(missing)?;
        let t = g.file.tensor(&gname).ok_or_else(missing)?;
        let shape = t.shape();
        if let Some(heads) = &g.qwen35 {
            let values = g.file.to_f32(t).map_err(|e| CoreError::Gguf(e.to_string()))?;
            let path = self.dir.display().to_string();
            let out = crate::io::gguf::qwen35::from_gguf(name, values, &shape, expected, heads, &path)?;
            self.taken.borrow_mut().insert(gname);
            return Ok(out);
        }
        if shape.as_slice() != expected {
            return Err(CoreError::ShapeMismatch {
                path: self.dir.clone(),
                name: format!("{gname} ({name})"),
                expected: expected.to_vec(),
                found: shape,
            });
        }
        let mut values = g.file.to_f32(t).map_err(|e| CoreError::Gguf(e.to_string()))?;
        let qk = name.contains("self_attn.q_proj.") || name.contains("self_attn.k_proj.");
        if let (Some((heads, kv_heads)), true) = (g.permuted, qk) {
            let heads = if name.contains("q_proj") { heads } else { kv_heads };
            let cols = if shape.len() == 2 { shape[1] } else { 1 };
            values = crate::io::gguf::model::unpermute_rows(&values, shape[0], cols, heads);
        }
        self.taken.borrow_mut().insert(gname);
        Ok((values, shape))
    }

    /// Routed experts, which GGUF stacks (`lora_formats::gguf::experts`): the fused
    /// `experts.gate_up_proj` `[E, 2I, H]` (from a merged `ffn_gate_up_exps`, or gate and up
    /// interleaved per expert) and one expert's projection (its rows of the stacked tensor, read
    /// alone). `None` for every other tensor, the fused down projections included (one tensor as is).
    fn read_gguf_experts(
        &self,
        g: &GgufSource,
        name: &str,
        expected: &[usize],
    ) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        use lora_formats::gguf::experts::{ExpertProjection, ExpertTensor, expert_tensor};
        let file = &g.file;
        let gguf_err = |e: lora_formats::FormatError| CoreError::Gguf(e.to_string());
        let missing =
            || CoreError::MissingTensor { dir: self.dir.clone(), name: name.to_string(), expected: expected.to_vec() };
        let mismatch = |gname: &str, found: Vec<usize>, want: Vec<usize>| CoreError::ShapeMismatch {
            path: self.dir.clone(),
            name: format!("{gname} ({name})"),
            expected: want,
            found,
        };
        match expert_tensor(name) {
            Some(ExpertTensor::GateUp { gate, up, merged }) => {
                let [e, two_i, h] = expected else { return Ok(None) };
                let (e, i, h) = (*e, two_i / 2, *h);
                if let Some(t) = file.tensor(&merged) {
                    if t.shape() != expected {
                        return Err(mismatch(&merged, t.shape(), expected.to_vec()));
                    }
                    self.taken.borrow_mut().insert(merged);
                    return Ok(Some((file.to_f32(t).map_err(gguf_err)?, expected.to_vec())));
                }
                let (tg, tu) = (file.tensor(&gate).ok_or_else(missing)?, file.tensor(&up).ok_or_else(missing)?);
                for (n, t) in [(&gate, tg), (&up, tu)] {
                    if t.shape() != [e, i, h] {
                        return Err(mismatch(n, t.shape(), vec![e, i, h]));
                    }
                }
                let (gv, uv) = (file.to_f32(tg).map_err(gguf_err)?, file.to_f32(tu).map_err(gguf_err)?);
                let per = i * h;
                let mut out = Vec::with_capacity(2 * e * per);
                for x in 0..e {
                    out.extend_from_slice(&gv[x * per..(x + 1) * per]);
                    out.extend_from_slice(&uv[x * per..(x + 1) * per]);
                }
                self.taken.borrow_mut().extend([gate, up]);
                Ok(Some((out, expected.to_vec())))
            }
            Some(ExpertTensor::Slice { stacked, merged, expert, projection }) => {
                let [out, inp] = expected else { return Ok(None) };
                let (out, inp) = (*out, *inp);
                // Gate and up of a merged `ffn_gate_up_exps`: `2·out` rows per expert, up in the second half.
                let (gname, t, start, rows) =
                    match (file.tensor(&stacked), merged.as_deref().and_then(|m| file.tensor(m))) {
                        (Some(t), _) => (stacked, t, expert * out, out),
                        (None, Some(t)) => {
                            let half = if projection == ExpertProjection::Up { out } else { 0 };
                            (merged.expect("found"), t, expert * 2 * out + half, 2 * out)
                        }
                        (None, None) => return Err(missing()),
                    };
                match t.shape().as_slice() {
                    &[experts, r, c] if r == rows && c == inp && expert < experts => {}
                    _ => return Err(mismatch(&gname, t.shape(), vec![expert + 1, rows, inp])),
                }
                let values = file.rows_to_f32(t, start, out).map_err(gguf_err)?;
                self.taken.borrow_mut().insert(gname);
                Ok(Some((values, expected.to_vec())))
            }
            _ => Ok(None),
        }
    }

    /// [`Self::check_all_taken`], with every tensor under one of `prefixes` allowed to stay unused.
    pub fn check_all_taken_except(&self, ignore: &[&str], prefixes: &[&str]) -> Result<()> {
        match self.check_all_taken(ignore) {
            Err(CoreError::UnexpectedTensors { dir, names }) => {
                let names: Vec<String> =
                    names.into_iter().filter(|n| !prefixes.iter().any(|p| n.starts_with(p))).collect();
                if names.is_empty() { Ok(()) } else { Err(CoreError::UnexpectedTensors { dir, names }) }
            }
            other => other,
        }
    }

    /// Fails if any tensor in the files was not taken by the model (`ignore` lists names that may stay).
    pub fn check_all_taken(&self, ignore: &[&str]) -> Result<()> {
        let taken = self.taken.borrow();
        if let Some(g) = &self.gguf {
            // rope_freqs went into the configuration.
            let ignore: Vec<String> = ignore.iter().filter_map(|n| crate::io::gguf::model::gguf_name(n)).collect();
            // Blocks past the decoder's (a qwen35 file's multi-token-prediction block) are not run.
            let beyond = |n: &str| {
                n.strip_prefix("blk.")
                    .and_then(|r| r.split_once('.'))
                    .and_then(|(i, _)| i.parse::<usize>().ok())
                    .is_some_and(|i| i >= g.layers)
            };
            let unused: Vec<String> = g
                .file
                .tensors
                .iter()
                .map(|t| t.name.clone())
                .filter(|n| !taken.contains(n) && n != "rope_freqs.weight" && !ignore.contains(n) && !beyond(n))
                .collect();
            if unused.is_empty() {
                return Ok(());
            }
            return Err(CoreError::UnexpectedTensors { dir: self.dir.clone(), names: unused });
        }
        let mut unused: Vec<String> = self
            .location
            .keys()
            .filter(|n| !taken.contains(*n) && !ignore.iter().any(|i| n.as_str() == *i || is_ignorable(n)))
            .cloned()
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        Err(CoreError::UnexpectedTensors { dir: self.dir.clone(), names: unused })
    }
}

/// Buffers some checkpoints carry that hold no learned value.
fn is_ignorable(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// Whether a file dtype is the held dtype itself, so that its bytes can be taken as they are.
pub(crate) fn stores(stored: lora_formats::DType, dtype: DType) -> bool {
    matches!(
        (stored, dtype),
        (lora_formats::DType::BF16, DType::BF16)
            | (lora_formats::DType::F16, DType::F16)
            | (lora_formats::DType::F32, DType::F32)
    )
}

/// A tensor held as `dtype` from bytes already in that dtype.
pub(crate) fn held_from_bytes<const D: usize>(
    bytes: Vec<u8>,
    shape: impl Into<Vec<usize>>,
    dtype: DType,
    device: &Device,
) -> Tensor<D> {
    let data = TensorData::from_bytes_vec(bytes, shape.into(), dtype);
    Tensor::from_data(data, TensorCreationOptions::new(device.clone()).with_dtype(dtype))
}

/// Rounds f32 values to `dtype`'s precision (bf16, f16) in place, as a cast to it and back.
pub(crate) fn round_to(values: &mut [f32], dtype: DType) {
    match dtype {
        DType::BF16 => values.iter_mut().for_each(|v| *v = half::bf16::from_f32(*v).to_f32()),
        DType::F16 => values.iter_mut().for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
        _ => {}
    }
}

/// A tensor held as `dtype` from f32 values, rounded to nearest even as `torch.Tensor.to` does.
pub(crate) fn held_from_f32<const D: usize>(
    values: Vec<f32>,
    shape: impl Into<Vec<usize>>,
    dtype: DType,
    device: &Device,
) -> Tensor<D> {
    let data = TensorData::new(values, shape.into());
    if dtype == DType::F32 {
        return Tensor::from_data(data, device);
    }
    Tensor::from_data(data.convert_dtype(dtype), TensorCreationOptions::new(device.clone()).with_dtype(dtype))
}
