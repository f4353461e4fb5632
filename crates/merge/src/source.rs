//! An input tensor of a merge, read as f32 in chunks: straight from a mapping, or with LoRA updates
//! folded in on the fly (`folder+adapter` inputs and adapter folds).

use std::cell::RefCell;

use crate::adapter::LoraDelta;
use crate::dtype::decode_f32;
use crate::model_dir::TensorRef;

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
}

impl Source<'_> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.base().info.numel()
    }

    /// Shape, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.base().info.shape
    }

    fn base(&self) -> &TensorRef<'_> {
        match self {
            Source::Mapped(t) | Source::Folded { base: t, .. } => t,
        }
    }

    /// Fills `out` with elements `start..start + out.len()` (flattened, row-major) as f32.
    pub fn read(&self, start: usize, out: &mut [f32]) {
        let t = self.base();
        let size = t.info.dtype.size();
        BYTES.with(|cell| {
            let mut bytes = cell.borrow_mut();
            bytes.resize(out.len() * size, 0);
            t.file.read_part(t.info, start * size, &mut bytes);
            decode_f32(&bytes, t.info.dtype, out);
        });
        if let Source::Folded { deltas, .. } = self {
            for d in deltas {
                d.add_to(start, out);
            }
        }
    }

    /// Drops this tensor's pages from the resident set (see [`crate::safetensors::SafetensorsFile::release`]).
    pub fn release(&self) {
        let t = self.base();
        t.file.release(t.info);
    }
}
