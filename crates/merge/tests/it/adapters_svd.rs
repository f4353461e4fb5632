//! SVDs, `merge-adapters` and `extract`: exact where the algebra says so, reported errors where not.

use lora_merge::svd::{Dense, jacobi_svd, randomized_svd, svd_of_factors};
use lora_merge::{AdapterMergeOptions, Combination, FoldOptions, extract_adapter, fold_adapters, merge_adapters};

use crate::common::*;

fn reconstruct(svd: &lora_merge::svd::Svd, rows: usize, cols: usize) -> Vec<f64> {
    let mut m = vec![0f64; rows * cols];
    for ((u, &s), v) in svd.u.iter().zip(&svd.s).zip(&svd.v) {
        for i in 0..rows {
            for j in 0..cols {
                m[i * cols + j] += u[i] * s * v[j];
            }
        }
    }
    m
}

#[test]
fn svds_reconstruct() {
    // A 7×5 matrix with entries from a fixed formula.
    let (rows, cols) = (7, 5);
    let m: Vec<f32> = (0..rows * cols).map(|k| ((k * 37 % 11) as f32 - 5.0) / 3.0).collect();
    let columns: Vec<Vec<f64>> = (0..cols).map(|j| (0..rows).map(|i| m[i * cols + j] as f64).collect()).collect();
    let svd = jacobi_svd(columns);
    // jacobi_svd of the columns: M = U·S·Vᵀ with U over rows.
    let r = reconstruct(&svd, rows, cols);
    for (a, b) in r.iter().zip(&m) {
        assert!((a - *b as f64).abs() < 1e-12);
    }
    assert!(svd.s.windows(2).all(|w| w[0] >= w[1]));
    // Randomized at full rank is exact too.
    let d = Dense { data: &m, rows, cols };
    let rs = randomized_svd(&d, 5, 4, 2, 7);
    for (a, b) in rs.s.iter().zip(&svd.s) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }
    // From factors: B [7, 2], A [2, 5].
    let b: Vec<Vec<f64>> = (0..2).map(|k| (0..rows).map(|i| (i + k) as f64 * 0.5 - 1.0).collect()).collect();
    let a: Vec<Vec<f64>> = (0..2).map(|k| (0..cols).map(|j| (j * (k + 2)) as f64 * 0.25 - 0.3).collect()).collect();
    let fs = svd_of_factors(&b, &a);
    let r = reconstruct(&fs, rows, cols);
    for i in 0..rows {
        for j in 0..cols {
            let exact = b[0][i] * a[0][j] + b[1][i] * a[1][j];
            assert!((r[i * cols + j] - exact).abs() < 1e-12);
        }
    }
}

#[test]
fn cat_and_full_rank_svd_fold_like_the_adapters() {
    let fx = fixtures();
    let dir = temp_dir("madapters");
    let base = fx.join("models/llama");
    let adapters = [merge_fixtures().join("adapters/a1"), merge_fixtures().join("adapters/a2")];
    fold_adapters(&base, &adapters, &dir.join("fold"), &FoldOptions::default()).unwrap();
    let reference = load_all(&dir.join("fold"));
    for (method, rank) in [(Combination::Cat, None), (Combination::Svd, Some(12))] {
        let opts = AdapterMergeOptions { method, weights: None, rank, density: 1.0, seed: 0, force: false };
        let out = dir.join(format!("{method:?}"));
        let report = merge_adapters(&adapters, &out, &opts).unwrap();
        assert!(report.iter().all(|m| m.relative_error < 1e-6), "{report:?}");
        let refold = dir.join(format!("{method:?}-fold"));
        fold_adapters(&base, &[out], &refold, &FoldOptions::default()).unwrap();
        let ours = load_all(&refold);
        for (k, v) in &reference {
            assert!(max_diff(v, &ours[k]) < 2e-5, "{method:?} {k}: {}", max_diff(v, &ours[k]));
        }
    }
    // A lower rank loses something, and says how much.
    let opts = AdapterMergeOptions {
        method: Combination::Svd,
        weights: Some(vec![1.0, 0.5]),
        rank: Some(2),
        density: 1.0,
        seed: 0,
        force: false,
    };
    let report = merge_adapters(&adapters, &dir.join("low"), &opts).unwrap();
    let q = report.iter().find(|m| m.module == "model.layers.0.self_attn.q_proj").unwrap();
    assert!(q.relative_error > 0.05 && q.relative_error < 1.0, "{q:?}");
    // TIES and DARE variants run and report errors in [0, 1].
    for method in [Combination::TiesSvd, Combination::DareSvd] {
        let opts = AdapterMergeOptions { method, weights: None, rank: Some(8), density: 0.5, seed: 1, force: false };
        let report = merge_adapters(&adapters, &dir.join(format!("{method:?}")), &opts).unwrap();
        assert!(report.iter().all(|m| (0.0..=1.0).contains(&m.relative_error)));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fold_then_extract_at_full_rank_recovers_the_update() {
    let fx = fixtures();
    let dir = temp_dir("extract");
    let base = fx.join("models/llama");
    let a1 = merge_fixtures().join("adapters/a1");
    fold_adapters(&base, &[a1], &dir.join("fold"), &FoldOptions::default()).unwrap();
    let report = extract_adapter(&base, &dir.join("fold"), &dir.join("lora"), 4, 0, false).unwrap();
    assert_eq!(report.modules.len(), 3 * 7);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    for m in &report.modules {
        assert!(m.energy > 1.0 - 1e-6, "{m:?}");
    }
    fold_adapters(&base, &[dir.join("lora")], &dir.join("refold"), &FoldOptions::default()).unwrap();
    let (a, b) = (load_all(&dir.join("fold")), load_all(&dir.join("refold")));
    for (k, v) in &a {
        assert!(max_diff(v, &b[k]) < 1e-5, "{k}: {}", max_diff(v, &b[k]));
    }
    // Rank 1 captures less.
    let low = extract_adapter(&base, &dir.join("fold"), &dir.join("lora1"), 1, 0, false).unwrap();
    assert!(low.modules.iter().all(|m| m.energy < 0.999 && m.energy > 0.0));
    std::fs::remove_dir_all(&dir).unwrap();
}
