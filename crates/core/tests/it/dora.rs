//! DoRA's layer (`network/dora.rs`): the row norms without the dense W + s·B·A, the fused CPU layer
//! against the composed reference (values and every gradient, the magnitude's included), and the
//! dropout form PEFT computes.

use lora_core::burn::tensor::{Tensor, TensorData};
use lora_core::default_device;
use lora_core::kernels::host::to_f32_vec;
use lora_core::network::base_weight::BaseWeight;
use lora_core::network::dora::Dora;
use lora_core::network::linear::Linear;
use lora_core::network::lora::LoraAdapter;

use crate::common::lcg;

fn tensor<const D: usize>(v: &[f32], shape: [usize; D]) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(v.to_vec(), shape), &default_device())
}

fn leaf<const D: usize>(v: &[f32], shape: [usize; D]) -> Tensor<D> {
    tensor(v, shape).autodiff().require_grad()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    to_f32_vec(t.inner()).unwrap()
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

const S: f64 = 1.5;

/// A layer with one DoRA adapter (magnitude off the row norms) and a bias.
fn layer(d_in: usize, d_out: usize, r: usize, dropout: f64) -> (Linear, [Tensor<2>; 3]) {
    let w = lcg(40, d_out * d_in, 0.5);
    let mut layer = Linear::from_weight(tensor(&w, [d_out, d_in]));
    layer.bias = Some(lora_core::burn::module::Param::from_tensor(tensor(&lcg(41, d_out, 0.3), [d_out])));
    let (a, b) = (leaf(&lcg(42, r * d_in, 0.5), [r, d_in]), leaf(&lcg(43, d_out * r, 0.5), [d_out, r]));
    let mut dora =
        Dora::new(lcg(44, d_out, 1.0).iter().map(|x| 2.0 + x).collect(), &layer.weight, &default_device(), true);
    let m = dora.magnitude.clone();
    dora.fixed_scale = None;
    layer.lora.push(LoraAdapter {
        lora_a: a.clone(),
        lora_b: b.clone(),
        scaling: S,
        dropout,
        training: true,
        dropout_seed: 9,
        dora: Some(dora),
    });
    (layer, [a, b, m])
}

/// ‖W + s·B·A‖ per row from the factored form equals the dense one.
#[test]
fn row_norms_equal_the_dense_weights() {
    let (d_in, d_out, r) = (37, 19, 4);
    let (layer, [a, b, _]) = layer(d_in, d_out, r, 0.0);
    let BaseWeight::Dense(w) = &layer.weight else { unreachable!() };
    let dense = (w.clone() + b.clone().inner().matmul(a.clone().inner()) * S).square().sum_dim(1).sqrt();
    let dora = layer.lora[0].dora.as_ref().unwrap();
    let factored = dora.weight_norm(&layer.weight, &a, &b, S);
    let d = max_rel(&values(factored), &values(dense));
    assert!(d <= 1e-6, "row norms: {d:e}");
}

/// y, ∂x, ∂A, ∂B, ∂m of the layer on `n` rows, fused or composed.
fn run(fused: bool, n: usize, dropout: f64) -> [Vec<f32>; 5] {
    let (d_in, d_out, r) = (160, 96, 8);
    let (layer, [a, b, m]) = layer(d_in, d_out, r, dropout);
    let x = leaf(&lcg(45, n * d_in, 1.0), [n, d_in]);
    let y = if fused { layer.forward(x.clone()) } else { layer.forward_reference(x.clone()) };
    let g = (y.clone() * tensor(&lcg(46, n * d_out, 1.0), [n, d_out])).sum().backward();
    [
        values(y),
        values(x.grad(&g).unwrap()),
        values(a.grad(&g).unwrap()),
        values(b.grad(&g).unwrap()),
        values(m.grad(&g).unwrap()),
    ]
}

#[test]
fn fused_dora_layer_equals_the_reference() {
    let (f, r) = (run(true, 300, 0.0), run(false, 300, 0.0));
    for (i, what) in ["y", "∂x", "∂A", "∂B", "∂m"].iter().enumerate() {
        let d = max_rel(&f[i], &r[i]);
        assert!(d <= 1e-5, "{what}: {d:e}");
    }
}

/// With dropout while training: W·x + b + (g − 1)·W·x' + g·s·B·A·x', x' the dropped input, as PEFT.
#[test]
fn dropout_feeds_both_terms_as_peft() {
    let (n, d_in, d_out, r) = (30, 160, 96, 8);
    let (layer, [a, b, m]) = layer(d_in, d_out, r, 0.25);
    let x = lcg(45, n * d_in, 1.0);
    let ours = values(layer.forward(tensor(&x, [n, d_in])));
    let adapter = &layer.lora[0];
    let keep = adapter.dropout_keep(n * d_in).unwrap();
    let dropped: Vec<f32> = x.iter().zip(&keep).map(|(v, k)| v * k).collect();
    let (xt, xd) = (tensor(&x, [n, d_in]), tensor(&dropped, [n, d_in]));
    let BaseWeight::Dense(w) = &layer.weight else { unreachable!() };
    let (a, b, m) = (a.inner(), b.inner(), m.inner());
    let norm = (w.clone() + b.clone().matmul(a.clone()) * S).square().sum_dim(1).sqrt().reshape([1, d_out]);
    let g = m / norm;
    let wx = xt.matmul(w.clone().transpose());
    let wxd = xd.clone().matmul(w.clone().transpose());
    let lora = xd.matmul(a.transpose()).matmul(b.transpose()) * S;
    let bias = layer.bias.as_ref().unwrap().val().unsqueeze::<2>();
    let peft = values(wx + bias + wxd * (g.clone() - 1.0) + lora * g);
    let d = max_rel(&ours, &peft);
    assert!(d <= 1e-5, "{d:e}");
    // Dropout really acted.
    assert!(keep.iter().any(|k| *k == 0.0));
}

/// On a 4-bit base, DoRA's norms are the dequantized weight's, as PEFT's with bitsandbytes: the
/// layer equals DoRA on the dequantized weight held dense, magnitude gradient included.
#[test]
fn nf4_base_takes_the_dequantized_norms() {
    let (n, d_in, d_out, r) = (20, 128, 64, 4);
    let q = lora_formats::nf4::Nf4Tensor::quantize(&lcg(47, d_out * d_in, 0.5), &[d_out, d_in], true);
    let dense = q.dequantize();
    let run = |weight: BaseWeight| {
        let mut layer = Linear { weight, bias: None, lora: Vec::new(), compute: None };
        let (a, b) = (leaf(&lcg(42, r * d_in, 0.5), [r, d_in]), leaf(&lcg(43, d_out * r, 0.5), [d_out, r]));
        let dora = Dora::init(&layer.weight, &a, &b, S, &default_device(), true);
        let m = dora.magnitude.clone();
        layer.lora.push(LoraAdapter {
            lora_a: a,
            lora_b: b,
            scaling: S,
            dropout: 0.0,
            training: true,
            dropout_seed: 0,
            dora: Some(dora),
        });
        let y = layer.forward(tensor(&lcg(45, n * d_in, 1.0), [n, d_in]));
        let g = (y.clone() * tensor(&lcg(46, n * d_out, 1.0), [n, d_out])).sum().backward();
        (values(m.clone()), values(y), values(m.grad(&g).unwrap()))
    };
    let nf4 = run(BaseWeight::Nf4(std::sync::Arc::new(q)));
    let full = run(BaseWeight::Dense(tensor(&dense, [d_out, d_in])));
    for (what, a, b) in [("initial m", &nf4.0, &full.0), ("y", &nf4.1, &full.1), ("∂m", &nf4.2, &full.2)] {
        let d = max_rel(a, b);
        assert!(d <= 1e-5, "{what}: {d:e}");
    }
}
