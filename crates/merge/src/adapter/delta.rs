//! A low-rank update ΔW = c·B·A held as two small f32 factors, added to any slice of a weight.

/// `c · B·A` for one module, laid out as `L [rows, r] · R [r, cols]` in the target tensor's own
/// orientation, so adding it to a row-major slice of the weight is a sum of contiguous axpys.
#[derive(Debug, Clone)]
pub struct LoraDelta {
    /// `[rows, r]`
    left: Vec<f32>,
    /// `[r, cols]`
    right: Vec<f32>,
    rank: usize,
    rows: usize,
    cols: usize,
    coef: f32,
    /// Where the `[rows, cols]` block starts in the flattened target (one expert's block of a fused
    /// `[E, rows, cols]` expert tensor); 0 for a 2-D target.
    offset: usize,
    /// DoRA's magnitude, one value per row: after the update, each row of W + ΔW is scaled to it
    /// (`m / ‖W + ΔW‖_row`, PEFT's `DoraLinearVariant.merge_safe`).
    magnitude: Option<std::sync::Arc<Vec<f32>>>,
}

impl LoraDelta {
    /// From PEFT's factors `a: [r, in]` and `b: [out, r]`, scaled by `coef`. With `transposed`, the
    /// target is stored `[in, out]` (embeddings, Conv1D) and receives `(B·A)ᵀ`.
    pub fn from_factors(a: &[f32], b: &[f32], r: usize, inp: usize, out: usize, coef: f32, transposed: bool) -> Self {
        assert_eq!(a.len(), r * inp);
        assert_eq!(b.len(), out * r);
        if transposed {
            // (B·A)ᵀ = Aᵀ·Bᵀ: left = Aᵀ [in, r], right = Bᵀ [r, out]
            let left = transpose(a, r, inp);
            let right = transpose(b, out, r);
            Self { left, right, rank: r, rows: inp, cols: out, coef, offset: 0, magnitude: None }
        } else {
            Self {
                left: b.to_vec(),
                right: a.to_vec(),
                rank: r,
                rows: out,
                cols: inp,
                coef,
                offset: 0,
                magnitude: None,
            }
        }
    }

    /// This update placed at element `offset` of a larger flattened target (an expert's block of a
    /// fused expert tensor).
    pub fn at(mut self, offset: usize) -> Self {
        self.offset = offset;
        self
    }

    /// This update as DoRA's: its rows rescaled to `magnitude` after it is added.
    pub fn with_magnitude(mut self, magnitude: Vec<f32>) -> Self {
        self.magnitude = Some(std::sync::Arc::new(magnitude));
        self
    }

    /// DoRA's magnitude, per row, when this update is DoRA's.
    pub fn magnitude(&self) -> Option<&[f32]> {
        self.magnitude.as_deref().map(Vec::as_slice)
    }

    /// For DoRA, scales whole rows `first_row..` held in `rows` (W + ΔW, row-major) by
    /// `m / ‖row‖`, as PEFT merges: the norm over the row in f32 values (accumulated in f64), the
    /// factor and the product in f32. Nothing for a plain update.
    pub fn rescale_rows(&self, first_row: usize, rows: &mut [f32]) {
        let Some(m) = self.magnitude() else { return };
        for (i, row) in rows.chunks_mut(self.cols).enumerate() {
            let norm = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt() as f32;
            let factor = m[first_row + i] / norm;
            row.iter_mut().for_each(|v| *v *= factor);
        }
    }

    /// The target tensor's shape `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Adds the update to `out`, which holds elements `start..start + out.len()` of the flattened
    /// target (`[rows, cols]`, or a larger tensor holding the block at its offset).
    ///
    /// Each element is `(Σₖ L[p,k]·R[k,q]) · c`, summed over k in order and scaled after, which is
    /// PEFT's `(B @ A) * scaling` up to the matmul's summation order.
    pub fn add_to(&self, start: usize, out: &mut [f32]) {
        // Only the part of `out` inside this update's block.
        let (lo, hi) = (self.offset, self.offset + self.rows * self.cols);
        let (from, to) = (start.max(lo), (start + out.len()).min(hi));
        if from < to {
            self.add_within(from - lo, &mut out[from - start..to - start]);
        }
    }

    /// [`Self::add_to`] for elements `start..` of the block itself.
    fn add_within(&self, start: usize, out: &mut [f32]) {
        let mut acc = vec![0f32; self.cols.min(out.len())];
        let mut pos = start;
        let end = start + out.len();
        while pos < end {
            let (p, q0) = (pos / self.cols, pos % self.cols);
            let q1 = self.cols.min(q0 + (end - pos));
            let n = q1 - q0;
            let acc = &mut acc[..n];
            acc.fill(0.0);
            for k in 0..self.rank {
                let l = self.left[p * self.rank + k];
                let r = &self.right[k * self.cols + q0..k * self.cols + q1];
                for (a, &x) in acc.iter_mut().zip(r) {
                    *a += l * x;
                }
            }
            let o = &mut out[pos - start..pos - start + n];
            for (o, &a) in o.iter_mut().zip(acc.iter()) {
                *o += a * self.coef;
            }
            pos += n;
        }
    }

    /// The dense update `[rows, cols]` (for tests and extraction).
    pub fn to_dense(&self) -> Vec<f32> {
        let mut d = vec![0f32; self.rows * self.cols];
        self.add_within(0, &mut d);
        d
    }
}

fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; x.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = x[i * cols + j];
        }
    }
    t
}
