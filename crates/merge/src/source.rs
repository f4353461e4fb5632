//! An input tensor of a merge, read as f32 in chunks: straight from a mapping, or with LoRA updates
//! folded in on the fly (`folder+adapter` inputs and adapter folds).

use std::cell::RefCell;

use crate::adapter::LoraDelta;
use crate::dtype::decode_f32;
use crate::model_dir::TensorRef;
use crate::nf4::Nf4Tensor;

thread_local! {
    /// The raw bytes of the chunk being decoded on this thread.
    static BYTES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One input tensor, never decoded whole.
#[derive(Debug)]
pub enum Source<'a> {
    /// A tensor of a memory-mapped file.
    Mapped(TensorRef<'a>),
    /// A base tensor plus low-rank updates.
    Folded {
        /// The base tensor.
        base: TensorRef<'a>,
        /// Updates to add, already weighted and scaled.
        deltas: Vec<LoraDelta>,
    },
    /// A vocabulary tensor (`[vocab, hidden]`) of a model whose vocabulary differs from the base's,
    /// read at the base's row count (`tokenizer_source: base`): rows beyond the base's are dropped,
    /// rows the model lacks are the base's.
    Resized {
        /// The model's tensor (`rows` rows).
        inner: Box<Source<'a>>,
        /// Rows of `inner`.
        rows: usize,
        /// The base's tensor, for the rows `inner` lacks.
        fill: Box<Source<'a>>,
    },
    /// A bitsandbytes 4-bit base weight, dequantized, plus low-rank updates.
    Stored4Bit {
        /// Its packed codes (for releasing their pages).
        codes: TensorRef<'a>,
        /// The weight in NF4 (shape `[out, in]`).
        nf4: Nf4Tensor,
        /// Updates to add, already weighted and scaled.
        deltas: Vec<LoraDelta>,
    },
    /// A vocabulary tensor with some rows replaced (PEFT's trainable tokens), grown to `shape` when
    /// tokens were added (the rows beyond `inner`'s are all in `rows`).
    RowsReplaced {
        /// The tensor the other rows come from.
        inner: Box<Source<'a>>,
        /// Row → its values.
        rows: std::collections::BTreeMap<usize, Vec<f32>>,
        /// The output's shape: `inner`'s, or more rows.
        shape: Vec<usize>,
    },
    /// A base tensor as a QLoRA adapter saw it, dequant(NF4(W)), plus low-rank updates.
    Requantized {
        /// The base tensor.
        base: TensorRef<'a>,
        /// Its NF4 form (quantized once, whole: the 64-value blocks run across rows).
        nf4: Nf4Tensor,
        /// Updates to add, already weighted and scaled.
        deltas: Vec<LoraDelta>,
    },
}

impl Source<'_> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape().iter().product()
    }

    /// Shape, outermost first.
    pub fn shape(&self) -> &[usize] {
        match self {
            Source::Stored4Bit { nf4, .. } => &nf4.shape,
            Source::RowsReplaced { shape, .. } => shape,
            _ => &self.base().info.shape,
        }
    }

    /// The tensor that gives this source its shape (the base's, for a resized one).
    fn base(&self) -> &TensorRef<'_> {
        match self {
            Source::Mapped(t)
            | Source::Folded { base: t, .. }
            | Source::Requantized { base: t, .. }
            | Source::Stored4Bit { codes: t, .. } => t,
            Source::Resized { fill, .. } => fill.base(),
            Source::RowsReplaced { inner, .. } => inner.base(),
        }
    }

    /// This source with its base replaced by dequant(NF4(base)), bitsandbytes' NF4 with blocks of 64
    /// (`double_quant`: the scales quantized too): the weights a QLoRA adapter was trained against.
    pub fn requantized(self, double_quant: bool) -> Self {
        let (base, deltas) = match self {
            Source::Mapped(t) => (t, Vec::new()),
            Source::Folded { base, deltas } | Source::Requantized { base, deltas, .. } => (base, deltas),
            // Already the NF4 a QLoRA adapter was trained against.
            stored @ Source::Stored4Bit { .. } => return stored,
            resized @ Source::Resized { .. } => return resized,
            replaced @ Source::RowsReplaced { .. } => return replaced,
        };
        let mut values = vec![0.0f32; base.info.numel()];
        Source::Mapped(base).read(0, &mut values);
        let nf4 = Nf4Tensor::quantize(&values, &base.info.shape, double_quant);
        Source::Requantized { base, nf4, deltas }
    }

    /// Fills `out` with elements `start..start + out.len()` (flattened, row-major) as f32.
    pub fn read(&self, start: usize, out: &mut [f32]) {
        if let Source::RowsReplaced { inner, rows, .. } = self {
            // The inner tensor's part of the range; rows beyond it are all replaced ones.
            let own = inner.numel().saturating_sub(start).min(out.len());
            if own > 0 {
                inner.read(start, &mut out[..own]);
            }
            let cols = self.shape()[1..].iter().product::<usize>();
            let end = start + out.len();
            for (&r, values) in rows.range(start / cols..end.div_ceil(cols)) {
                let (lo, hi) = ((r * cols).max(start), ((r + 1) * cols).min(end));
                out[lo - start..hi - start].copy_from_slice(&values[lo - r * cols..hi - r * cols]);
            }
            return;
        }
        if let Source::Resized { inner, rows, fill } = self {
            // Same row width: element i of the output is element i of the model's tensor below the
            // model's last row, and of the base's above it.
            let boundary = rows * self.shape()[1..].iter().product::<usize>();
            let split = boundary.saturating_sub(start).min(out.len());
            let (own, filled) = out.split_at_mut(split);
            if !own.is_empty() {
                inner.read(start, own);
            }
            if !filled.is_empty() {
                fill.read(start + split, filled);
            }
            return;
        }
        let deltas: &[LoraDelta] = match self {
            Source::Folded { deltas, .. } | Source::Requantized { deltas, .. } | Source::Stored4Bit { deltas, .. } => {
                deltas
            }
            _ => &[],
        };
        if let Some(cols) = deltas.iter().find(|d| d.magnitude().is_some()).map(|d| d.shape()[1]) {
            // DoRA rescales whole rows by their norms: the rows the range touches, read whole.
            let (r0, r1) = (start / cols, (start + out.len()).div_ceil(cols));
            let mut rows = vec![0f32; (r1 - r0) * cols];
            self.read_base(r0 * cols, &mut rows);
            for d in deltas {
                d.add_to(r0 * cols, &mut rows);
                d.rescale_rows(r0, &mut rows);
            }
            out.copy_from_slice(&rows[start - r0 * cols..start - r0 * cols + out.len()]);
            return;
        }
        self.read_base(start, out);
        for d in deltas {
            d.add_to(start, out);
        }
    }

    /// Elements `start..start + out.len()` of the base, before any update.
    fn read_base(&self, start: usize, out: &mut [f32]) {
        if let Source::Requantized { nf4, .. } | Source::Stored4Bit { nf4, .. } = self {
            nf4.dequantize_into(start, out);
            return;
        }
        let t = self.base();
        let size = t.info.dtype.size();
        BYTES.with(|cell| {
            let mut bytes = cell.borrow_mut();
            bytes.resize(out.len() * size, 0);
            t.file.read_part(t.info, start * size, &mut bytes);
            decode_f32(&bytes, t.info.dtype, out);
        });
    }

    /// Drops this tensor's pages from the resident set (see [`crate::safetensors::SafetensorsFile::release`]).
    pub fn release(&self) {
        if let Source::Resized { inner, fill, .. } = self {
            inner.release();
            fill.release();
            return;
        }
        if let Source::RowsReplaced { inner, .. } = self {
            return inner.release();
        }
        let t = self.base();
        t.file.release(t.info);
    }
}
