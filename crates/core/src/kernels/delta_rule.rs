//! The gated delta rule of Gated DeltaNet (Yang, Kautz, Hatamizadeh, arXiv:2412.06464), the
//! linear-attention recurrence of Qwen3.5's `linear_attn` layers, per (batch, value head) with a
//! state `S ∈ R^{d_k × d_v}` that starts at zero:
//!
//! ```text
//! S ← exp(g_t) · S
//! S ← S + k_t (β_t (v_t − Sᵀ k_t))ᵀ      (the delta rule: only the prediction error is written)
//! o_t = Sᵀ q_t
//! ```
//!
//! Two forms, as transformers has them (`torch_recurrent_gated_delta_rule`,
//! `torch_chunk_gated_delta_rule`): [`recurrent_step`] for one token against a state (decoding), and
//! [`chunked`], which turns chunks of 64 tokens into matrix products (prompts, training). Both are
//! composed of burn operations, so autodiff differentiates them; everything here is f32.

use burn::tensor::{Bool, DType, Tensor};

/// Tokens per chunk of [`chunked`]: transformers' and flash-linear-attention's.
pub const CHUNK: usize = 64;

/// One token of the recurrence.
///
/// # Shapes
/// - q, k: `[batch, heads, d_k]` (normalised; q scaled by `d_k^-0.5`)
/// - v: `[batch, heads, d_v]`
/// - g, beta: `[batch, heads]` (log decay ≤ 0, write strength in (0, 1))
/// - state: `[batch, heads, d_k, d_v]`
/// - output: (o `[batch, heads, d_v]`, the new state)
pub fn recurrent_step(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    g: Tensor<2>,
    beta: Tensor<2>,
    state: Tensor<4>,
) -> (Tensor<3>, Tensor<4>) {
    let state = state * g.exp().unsqueeze_dims::<4>(&[2, 3]);
    let k4 = k.unsqueeze_dim::<4>(3); // [b, h, dk, 1]
    let kv_mem = (state.clone() * k4.clone()).sum_dim(2).squeeze_dim::<3>(2); // Sᵀk: [b, h, dv]
    let delta = (v - kv_mem) * beta.unsqueeze_dim::<3>(2); // [b, h, dv]
    let state = state + k4 * delta.unsqueeze_dim::<4>(2);
    let o = (state.clone() * q.unsqueeze_dim::<4>(3)).sum_dim(2).squeeze_dim::<3>(2); // [b, h, dv]
    (o, state)
}

/// The whole sequence in chunks of [`CHUNK`] tokens: within a chunk, the updates are condensed by the
/// UT transform into a unit lower-triangular solve and products; between chunks, the state carries
/// over. The sequence is padded with zeros to whole chunks (a padded token has β = 0 and g = 0, so it
/// changes nothing before it).
///
/// # Shapes
/// - q, k: `[batch, heads, seq, d_k]` (normalised; q scaled by `d_k^-0.5`)
/// - v: `[batch, heads, seq, d_v]`
/// - g, beta: `[batch, heads, seq]`
/// - state: `[batch, heads, d_k, d_v]`, zero when `None`
/// - output: (o `[batch, heads, seq, d_v]`, the state after the last token)
pub fn chunked(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    g: Tensor<3>,
    beta: Tensor<3>,
    state: Option<Tensor<4>>,
) -> (Tensor<4>, Tensor<4>) {
    let [b, h, t, dk] = k.dims();
    let dv = v.dims()[3];
    let device = q.device();
    let pad = (CHUNK - t % CHUNK) % CHUNK;
    let n = (t + pad) / CHUNK;
    let pad4 = |x: Tensor<4>| {
        if pad == 0 {
            return x;
        }
        let d = x.dims()[3];
        Tensor::cat(vec![x, Tensor::zeros([b, h, pad, d], &device)], 2)
    };
    let pad3 = |x: Tensor<3>| if pad == 0 { x } else { Tensor::cat(vec![x, Tensor::zeros([b, h, pad], &device)], 2) };
    let (q, k, v, g, beta) = (pad4(q), pad4(k), pad4(v), pad3(g), pad3(beta));
    let beta4 = beta.unsqueeze_dim::<4>(3); // [b, h, T, 1]
    let chunks = |x: Tensor<4>| {
        let d = x.dims()[3];
        x.reshape([b, h, n, CHUNK, d])
    };
    let v_beta = chunks(v * beta4.clone()); // [b, h, n, C, dv]
    let k_beta = chunks(k.clone() * beta4); // [b, h, n, C, dk]
    let (q, k) = (chunks(q), chunks(k)); // [b, h, n, C, dk]
    let cum = g.reshape([b, h, n, CHUNK]).cumsum(3); // Γ: [b, h, n, C]

    // D_ij = exp(Γ_i − Γ_j) for j ≤ i, 0 above the diagonal.
    let above: Tensor<5, Bool> = Tensor::<2, Bool>::tril_mask([CHUNK, CHUNK], 0, &device).unsqueeze();
    let pairwise = (cum.clone().unsqueeze_dim::<5>(4) - cum.clone().unsqueeze_dim::<5>(3))
        .mask_fill(above.clone().expand([b, h, n, CHUNK, CHUNK]), f32::NEG_INFINITY)
        .exp(); // [b, h, n, C, C]
    let kt = k.clone().swap_dims(3, 4); // [b, h, n, dk, C]
    let ut = k_beta.clone().matmul(kt.clone()) * pairwise.clone(); // [b, h, n, C, C]
    let intra = q.clone().matmul(kt) * pairwise; // [b, h, n, C, C]
    let cum_exp = cum.clone().exp().unsqueeze_dim::<5>(4); // [b, h, n, C, 1]
    let decayed_k_beta = k_beta * cum_exp.clone();

    // L = I + strictly-lower(ut); new values U = L⁻¹(βV), W = L⁻¹(β e^Γ K).
    let inverse = unit_lower_inverse(ut);
    let new_values = inverse.clone().matmul(v_beta); // [b, h, n, C, dv]
    let k_cumdecay = inverse.matmul(decayed_k_beta); // [b, h, n, C, dk]

    let last = cum.clone().slice([0..b, 0..h, 0..n, CHUNK - 1..CHUNK]); // Γ_C: [b, h, n, 1]
    let q_decayed = q * cum_exp; // e^Γ ⊙ Q
    let k_decayed = k * (last.clone() - cum).exp().unsqueeze_dim::<5>(4); // e^{Γ_C − Γ} ⊙ K
    let chunk_decay = last.exp().unsqueeze_dim::<5>(4); // [b, h, n, 1, 1]

    let mut state = state.unwrap_or_else(|| Tensor::zeros([b, h, dk, dv], &device)).cast(DType::F32);
    let mut outputs = Vec::with_capacity(n);
    let at = |x: &Tensor<5>, i: usize| {
        let [_, _, _, r, c] = x.dims();
        x.clone().slice([0..b, 0..h, i..i + 1, 0..r, 0..c]).reshape([b, h, r, c])
    };
    for i in 0..n {
        let v_new = at(&new_values, i) - at(&k_cumdecay, i).matmul(state.clone()); // [b, h, C, dv]
        outputs.push(at(&q_decayed, i).matmul(state.clone()) + at(&intra, i).matmul(v_new.clone()));
        state = state * at(&chunk_decay, i) + at(&k_decayed, i).swap_dims(2, 3).matmul(v_new);
    }
    let o = Tensor::cat(outputs, 2); // [b, h, T, dv]
    (o.slice([0..b, 0..h, 0..t, 0..dv]), state)
}

/// The inverse of `I + strictly-lower(a)` for each trailing `[C, C]` matrix, by forward
/// substitution a row at a time (row i of the inverse is e_i minus row i of the strict lower part
/// times the rows above it): transformers' export path, and stable where a product of powers of
/// the nilpotent part would not be.
///
/// # Shapes
/// - a: `[..., C, C]` (only its strictly lower part is read)
/// - output: `[..., C, C]`, unit lower-triangular
fn unit_lower_inverse(a: Tensor<5>) -> Tensor<5> {
    let [b, h, n, c, _] = a.dims();
    let device = a.device();
    let eye: Tensor<5> = Tensor::<2>::eye(c, &device).unsqueeze();
    let row_of_eye = |i: usize| eye.clone().slice([0..1, 0..1, 0..1, i..i + 1, 0..c]).expand([b, h, n, 1, c]);
    let mut rows = vec![row_of_eye(0)];
    for i in 1..c {
        let above = Tensor::cat(rows.clone(), 3); // [b, h, n, i, C]
        let l = a.clone().slice([0..b, 0..h, 0..n, i..i + 1, 0..i]); // [b, h, n, 1, i]
        rows.push(row_of_eye(i) - l.matmul(above));
    }
    Tensor::cat(rows, 3)
}
