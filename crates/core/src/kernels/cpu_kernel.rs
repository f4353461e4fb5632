//! What the hand-written CPU kernels (`fused_*`) share: reading and making burn-flex tensors, a
//! vectorisable `exp`, a per-CPU compilation of a loop (AVX-512 / AVX2 chosen at run time), and the
//! rule that decides when a fused kernel replaces the plain burn composition.
//!
//! Results do not depend on the thread count nor on the instruction set chosen: work is split into
//! independent pieces whose reductions run in a fixed order, and no compiler contracts `a·b + c`
//! into an FMA (Rust does not reassociate or fuse floating-point operations), so the AVX-512, AVX2
//! and scalar builds of a loop compute the same bits.

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Device, Tensor, TensorData};

/// Whether the fused CPU kernels replace burn's composed operations for a tensor: on burn-flex, in
/// f32, unless `LORA_REFERENCE_KERNELS=1` asks for the plain path (kept for comparison, e.g. by
/// `scripts/bench_train.sh`).
pub fn use_fused<const D: usize>(x: &Tensor<D>) -> bool {
    !reference_kernels() && x.dtype() == DType::F32 && x.device().inner() == Device::flex()
}

/// `LORA_REFERENCE_KERNELS=1`: every CPU operation takes burn's plain path.
pub fn reference_kernels() -> bool {
    static REFERENCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REFERENCE.get_or_init(|| std::env::var("LORA_REFERENCE_KERNELS").is_ok_and(|v| v == "1"))
}

/// The values of an f32 tensor in row-major order, copied only when its layout is not contiguous.
pub fn f32_values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.layout().contiguous_offsets() {
        Some((start, end)) => std::borrow::Cow::Borrowed(&t.storage::<f32>()[start..end]),
        None => std::borrow::Cow::Owned(t.to_contiguous().storage::<f32>().to_vec()),
    }
}

/// A contiguous f32 tensor from its values.
pub fn f32_tensor(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

/// A raw pointer that may be sent to the threads of a parallel loop which write disjoint parts of
/// one buffer.
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut f32);
// SAFETY: only used by loops whose iterations write disjoint elements.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// e^x in f32, branch-free so that loops over it vectorise: x = n·ln2 + r with |r| ≤ ln2/2
/// (Cody–Waite split of ln2), e^r by its Taylor polynomial of degree 7 (relative error < 2e-8,
/// below f32's half ulp), 2^n built in the exponent bits. Underflows to 0 below −87.3 (where f32's
/// normal range ends) and saturates at e^88.37.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5·2²³: adding and subtracting it rounds to the nearest integer, with no call to `round`.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.37);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    // n as an integer, read from t's mantissa (t = 1.5·2²³ + n exactly) rather than by `n as i32`:
    // Rust's saturating float-to-int cast compiles to one scalar conversion per lane and keeps the
    // whole loop from vectorising. Same value, so the same bits.
    let n_int = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    if x < -87.3 { 0.0 } else { p * scale }
}

/// Lanes of the fixed-order accumulators: a sum over a row is kept as 16 partial sums (element i
/// goes to lane i mod 16) added up in a fixed order at the end, which vectorises without letting the
/// compiler reorder anything.
pub const LANES: usize = 16;

/// Σ a·b, in the fixed 16-lane order.
#[inline(always)]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (&x, &y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[l] += x * y;
    }
    fold_lanes(acc)
}

/// Σ e^(v − shift) over the values, in the fixed 16-lane order.
#[inline(always)]
pub fn sum_exp_f32(values: &[f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] += exp_f32(c[l] - shift);
        }
    }
    for (l, &v) in chunks.remainder().iter().enumerate() {
        acc[l] += exp_f32(v - shift);
    }
    fold_lanes(acc)
}

/// values ← e^(values − shift), returning their sum in the fixed 16-lane order.
#[inline(always)]
pub fn exp_in_place_sum_f32(values: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = values.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            c[l] = exp_f32(c[l] - shift);
            acc[l] += c[l];
        }
    }
    for (l, v) in chunks.into_remainder().iter_mut().enumerate() {
        *v = exp_f32(*v - shift);
        acc[l] += *v;
    }
    fold_lanes(acc)
}

/// Σ a·b·c, in the fixed 16-lane order.
#[inline(always)]
pub fn dot3_f32(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let n = a.len().min(b.len()).min(c.len());
    let full = n / LANES * LANES;
    for i in (0..full).step_by(LANES) {
        let (x, y, z) = (&a[i..i + LANES], &b[i..i + LANES], &c[i..i + LANES]);
        for l in 0..LANES {
            acc[l] += x[l] * y[l] * z[l];
        }
    }
    for i in full..n {
        acc[i - full] += a[i] * b[i] * c[i];
    }
    fold_lanes(acc)
}

/// max of the values (−∞ for none), in the fixed 16-lane order.
#[inline(always)]
pub fn max_f32(values: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    for (l, &v) in chunks.remainder().iter().enumerate() {
        acc[l] = if v > acc[l] { v } else { acc[l] };
    }
    acc.into_iter().fold(f32::NEG_INFINITY, |m, v| if v > m { v } else { m })
}

#[inline(always)]
fn fold_lanes(acc: [f32; LANES]) -> f32 {
    // A pairwise tree, always the same.
    let mut a = acc;
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            a[l] += a[l + w];
        }
        w /= 2;
    }
    a[0]
}

/// Defines `fn name(args) -> ret` whose body is compiled three times, for AVX-512, for AVX2 + FMA
/// and for the baseline, the best the CPU has being chosen at run time (what `is_x86_feature_detected`
/// reports). Everything the body calls must be `#[inline(always)]` to be compiled with it.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl") {
                    // SAFETY: the CPU has the features v4 is compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features v3 is compiled for.
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Elements per task of the elementwise kernels: large enough that a task outweighs its scheduling,
/// small enough that two cores share a 128 × 576 activation.
pub const ELEMENTWISE_CHUNK: usize = 16 * 1024;

/// Asks the C allocator (glibc) to keep freed memory for reuse instead of returning it to the system
/// at once: a training step frees and re-allocates the same activation and gradient buffers
/// (hundreds of MB for a 49k-vocabulary head), and with glibc's defaults each one comes back as
/// fresh pages, every page faulted in and zeroed by the kernel again (7% of a small model's step,
/// measured with `scripts/bench_train.sh`). Blocks up to 32 MiB (glibc's cap) come from the heap,
/// up to 1 GiB of free heap is kept. A process-wide setting, so binaries call it, not the
/// library; a no-op on other C libraries.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
    }
}

/// Products with at least this many multiply-adds (160³) and an output at least
/// [`PARALLEL_MIN_COLUMNS`] wide that [`gemm_f32`] does not split itself (neither side has two
/// parts of [`SPLIT_MIN`]) are split by gemm when allowed. Measured with 2 threads (gemm 0.19): a thin
/// adapter product, 512×896 by 896×8 or 512×8 by 8×896, is up to twice as slow split by gemm.
pub const PARALLEL_MACS: usize = 160 * 160 * 160;

/// See [`PARALLEL_MACS`]: gemm splits the output's columns, and a rank-wide output does not split.
pub const PARALLEL_MIN_COLUMNS: usize = 64;

/// Multiply-adds from which [`gemm_f32`] splits a product over the threads itself, by output
/// columns or rows, each part one single-threaded `gemm` call.
///
/// gemm 0.19's own split divides the tokens (the rows of our products) and packs the whole weight
/// first on the calling thread while the others wait (x·Wᵀ), or once per thread (g·W); split by
/// columns, each thread packs only its share. Measured with 2 threads (`examples/bench_gemm.rs`):
/// 512×896×896 x·Wᵀ 240 → 299 GFLOP/s, 512×4864×896 x·Wᵀ 203 → 289, the 135M head's g·W 249 → 297,
/// none slower. An adapter's thin products (n or k the rank: 512×576×8 is 2.4M) split by rows: gemm
/// kept them on one thread, as its own split of them was slower (up to 2x); by rows, +1–2% of a step.
pub const SPLIT_MACS: usize = 1 << 20;

/// Columns, or else rows, per part at least when [`gemm_f32`] splits a product: above 64 so that no
/// part falls under gemm's small-product branch (both sides at most 64), whose reduction blocks
/// differ (k ≤ 512 per block), and the bits stay those of one call.
pub const SPLIT_MIN: usize = 80;

/// dst = [dst +] beta·lhs·rhs, f32, for matrices given as (pointer, row stride, column stride) in
/// elements; `m × k` times `k × n`. Split over the threads when `threads` and the product is large
/// enough: by columns or rows ([`SPLIT_MACS`], [`SPLIT_MIN`]), or else by gemm itself
/// ([`PARALLEL_MACS`]). Either way every output element is reduced over k in the same blocks and
/// order as by one single-threaded call (gemm's reduction blocks depend on k alone), so the bits do
/// not depend on the thread count.
///
/// # Safety
/// The pointers must cover the matrices their strides describe, and dst must not overlap lhs or rhs.
pub unsafe fn gemm_f32(
    [m, n, k]: [usize; 3],
    dst: (*mut f32, usize, usize),
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    accumulate: bool,
    beta: f32,
    threads: bool,
) {
    use rayon::prelude::*;
    let macs = m * n * k;
    let workers = rayon::current_num_threads();
    let (by_columns, by_rows) = (workers.min(n / SPLIT_MIN), workers.min(m / SPLIT_MIN));
    if threads && macs >= SPLIT_MACS && (by_columns > 1 || by_rows > 1) {
        // A small right operand whose panels do not divide among the threads goes by rows: each
        // thread packs all of it (cheap), and no panel is shared.
        let small_rhs = n * k <= SMALL_RHS && n.div_ceil(PANEL) % by_columns.max(1) != 0;
        let parts = if by_columns > 1 && !(small_rhs && by_rows > 1) {
            split_columns(m, n, by_columns)
        } else {
            split_rows(m, n, by_rows)
        };
        let (d, l, r) = (SendPtr(dst.0), SendPtr(lhs.0 as *mut f32), SendPtr(rhs.0 as *mut f32));
        let ([d_rs, d_cs], [l_rs, l_cs], [r_rs, r_cs]) = ([dst.1, dst.2], [lhs.1, lhs.2], [rhs.1, rhs.2]);
        parts.par_iter().for_each(|pieces| {
            let (d, l, r) = (d, l, r);
            for &[(i0, i1), (j0, j1)] in pieces {
                // SAFETY: rows i0..i1 and columns j0..j1 of dst (rows of lhs, columns of rhs), within
                // the caller's matrices; the pieces of all parts are disjoint.
                unsafe {
                    gemm_call(
                        [i1 - i0, j1 - j0, k],
                        (d.0.add(i0 * d_rs + j0 * d_cs), d_rs, d_cs),
                        (l.0.add(i0 * l_rs) as *const f32, l_rs, l_cs),
                        (r.0.add(j0 * r_cs) as *const f32, r_rs, r_cs),
                        accumulate,
                        beta,
                        gemm::Parallelism::None,
                    )
                }
            }
        });
        return;
    }
    let parallelism = if threads && n >= PARALLEL_MIN_COLUMNS && macs >= PARALLEL_MACS {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: forwarded from the caller.
    unsafe { gemm_call([m, n, k], dst, lhs, rhs, accumulate, beta, parallelism) }
}

/// Values of the right operand up to which [`gemm_f32`] splits a product by rows rather than share
/// a column panel between threads (the 135M shape's k/v projections, 576 × 192: 246 → 278 GFLOP/s).
const SMALL_RHS: usize = 128 * 1024;

/// A block of a product's output, `[rows, columns]` as half-open ranges.
pub type Piece = [(usize, usize); 2];

/// Columns of gemm's widest microkernel (4 × 16 f32 lanes); a part narrower than a multiple of it
/// runs its last columns on a narrower, slower kernel (x2x6: 7.5% of the microkernel time of a 135M
/// step, for 11% of the columns, when 576 columns went as 288 + 288).
const PANEL: usize = 64;

/// The output of an `m × n` product cut into `parts` parts of equal work, each a list of pieces, by
/// columns: whole panels of [`PANEL`] columns, a panel that falls across two parts shared between
/// them by rows, so that every piece is a whole number of panels wide (576 columns on 2 threads:
/// 4 panels and the first half of the fifth's rows, the rest). A shared panel's boundary moves to the
/// panel's edge when either side would have fewer than [`SPLIT_MIN`] rows, and with fewer than twice
/// that many rows, the parts are plain column ranges (multiples of 16, at least [`SPLIT_MIN`]): no
/// piece is at most 64 by 64, gemm's small-product branch. Deterministic in (m, n, parts).
pub fn split_columns(m: usize, n: usize, parts: usize) -> Vec<Vec<Piece>> {
    if m < 2 * SPLIT_MIN {
        return split_rows(n, m, parts).into_iter().map(|p| p.into_iter().map(|[c, r]| [r, c]).collect()).collect();
    }
    let panels = n.div_ceil(PANEL);
    // Part p covers the units (panel · m + row) from bound(p) to bound(p + 1).
    let bound = |p: usize| {
        let u = p * panels * m / parts;
        let (panel, row) = (u / m, u % m);
        if row < SPLIT_MIN {
            panel * m
        } else if m - row < SPLIT_MIN {
            (panel + 1) * m
        } else {
            u
        }
    };
    (0..parts)
        .map(|p| {
            let (mut u, end) = (bound(p), bound(p + 1));
            let mut pieces = Vec::new();
            while u < end {
                let (panel, row) = (u / m, u % m);
                let cols = |a: usize, b: usize| (a * PANEL, (b * PANEL).min(n));
                if row == 0 && end - u >= m {
                    let whole = (end - u) / m;
                    pieces.push([(0, m), cols(panel, panel + whole)]);
                    u += whole * m;
                } else {
                    let last = m.min(row + (end - u));
                    pieces.push([(row, last), cols(panel, panel + 1)]);
                    u += last - row;
                }
            }
            pieces
        })
        .collect()
}

/// The output of an `m × n` product cut into `parts` row ranges of a multiple of 16 rows, at least
/// [`SPLIT_MIN`] each (the caller's `parts` allows it); the last takes the rest.
pub fn split_rows(m: usize, n: usize, parts: usize) -> Vec<Vec<Piece>> {
    let per = m / parts / 16 * 16;
    (0..parts).map(|p| vec![[(p * per, if p + 1 == parts { m } else { (p + 1) * per }), (0, n)]]).collect()
}

/// One `gemm::gemm` call over (pointer, row stride, column stride) matrices.
///
/// # Safety
/// As [`gemm_f32`].
unsafe fn gemm_call(
    [m, n, k]: [usize; 3],
    dst: (*mut f32, usize, usize),
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    accumulate: bool,
    beta: f32,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2 as isize,
            dst.1 as isize,
            accumulate,
            lhs.0,
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0,
            rhs.2 as isize,
            rhs.1 as isize,
            1.0f32,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// A buffer of f32 values not yet written, for outputs that a product writes whole: allocating it
/// zeroed would cost a pass over memory (a `memset` on the calling thread, while the workers wait)
/// that the product overwrites at once.
pub struct Unwritten(Vec<std::mem::MaybeUninit<f32>>);

impl Unwritten {
    /// Room for `n` values.
    pub fn new(n: usize) -> Self {
        let mut v = Vec::with_capacity(n);
        // SAFETY: MaybeUninit values need no initialisation.
        unsafe { v.set_len(n) };
        Self(v)
    }

    /// Where the values go.
    pub fn ptr(&mut self) -> *mut f32 {
        self.0.as_mut_ptr().cast()
    }

    /// The values' slots, to be written by a kernel.
    pub fn slots(&mut self) -> &mut [std::mem::MaybeUninit<f32>] {
        &mut self.0
    }

    /// The values.
    ///
    /// # Safety
    /// Every value must have been written.
    pub unsafe fn assume_written(self) -> Vec<f32> {
        let mut v = std::mem::ManuallyDrop::new(self.0);
        // SAFETY: MaybeUninit<f32> has f32's layout, and the caller vouches that every value is written.
        unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast(), v.len(), v.capacity()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every output element in exactly one piece, no piece at most 64 × 64, the parts' work within a
    /// panel's rows of each other, and whole-panel pieces where the shape allows.
    #[test]
    fn column_splits_cover_the_output_once_in_balanced_parts() {
        for (m, n, parts) in [(512, 576, 2), (512, 192, 2), (512, 576, 3), (511, 1000, 4), (160, 200, 2), (100, 250, 3)]
        {
            let split = split_columns(m, n, parts);
            assert_eq!(split.len(), parts);
            let mut seen = vec![0u8; m * n];
            let mut work = Vec::new();
            for pieces in &split {
                let mut w = 0;
                for &[(i0, i1), (j0, j1)] in pieces {
                    assert!(i1 > i0 && j1 > j0, "{m}x{n}/{parts}: empty piece");
                    assert!(i1 - i0 > 64 || j1 - j0 > 64, "{m}x{n}/{parts}: piece {i0}..{i1} x {j0}..{j1} is small");
                    if m >= 2 * SPLIT_MIN {
                        assert!(j0 % PANEL == 0 && (j1 % PANEL == 0 || j1 == n), "{m}x{n}/{parts}: not whole panels");
                    }
                    for i in i0..i1 {
                        for j in j0..j1 {
                            seen[i * n + j] += 1;
                        }
                    }
                    w += (i1 - i0) * (j1 - j0);
                }
                work.push(w);
            }
            assert!(seen.iter().all(|&c| c == 1), "{m}x{n}/{parts}: not covered exactly once");
            let (lo, hi) = (work.iter().min().unwrap(), work.iter().max().unwrap());
            // Off by at most a snapped panel boundary's rows, and the missing columns of a partial
            // last panel (counted as whole in the split).
            let slack = (SPLIT_MIN + 16) * PANEL + (PANEL - n % PANEL) % PANEL * m;
            assert!(hi - lo <= slack, "{m}x{n}/{parts}: parts of {work:?}");
        }
        // 576 columns on 2 threads: 4 panels and half the fifth each.
        assert_eq!(
            split_columns(512, 576, 2),
            vec![
                vec![[(0, 512), (0, 256)], [(0, 256), (256, 320)]],
                vec![[(256, 512), (256, 320)], [(0, 512), (320, 576)]]
            ]
        );
    }
}
