//! The self-checks of `lora export` and `lora merge --check`: fixed probe sequences through the
//! source and through what was written, compared within a tolerance.

use anyhow::Result;

/// The logits of fixed probe sequences (two rows of 16 ids spread over the vocabulary).
pub fn probe_logits(model: &lora_core::CausalLm) -> Result<Vec<f32>> {
    let vocab = model.config.vocab_size;
    let rows: Vec<Vec<u32>> =
        (0..2).map(|k| (0..16).map(|i| ((i * 7919 + k * 104_729 + 13) % vocab) as u32).collect()).collect();
    Ok(lora_core::kernels::host::to_f32_vec(model.forward(&lora_core::TokenBatch::rows(rows), None)?)?)
}

/// Compares the probe logits of the source (`want`) and of the written output (`got`): an error when
/// the largest difference exceeds `tol` relative to the logits' size, else a line with that
/// difference and whether greedy tokens agree.
pub fn judge(what: &str, want: &[f32], got: &[f32], vocab: usize, tol: f32) -> Result<String> {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = want.iter().zip(got).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let argmax = |v: &[f32]| -> Vec<usize> {
        v.chunks(vocab)
            .map(|r| r.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0)
            .collect()
    };
    let same = argmax(want) == argmax(got);
    anyhow::ensure!(diff <= tol * scale, "max |Δ logits| {diff:.3e} exceeds {tol:.1e} of the logits' size {scale:.3}");
    Ok(format!(
        "check: {what} on 2 probe sequences: max |Δ logits| {diff:.3e}, greedy tokens {}",
        if same { "agree" } else { "differ (within tolerance)" }
    ))
}
