//! Routed experts on disk and in adapter files: the fused layout transformers 5 and the Qwen3.5
//! checkpoints write, PEFT's flattened expert adapters written back as PEFT wrote them, and the
//! older per-expert adapters, which combine as PEFT converts them.

use std::collections::BTreeMap;
use std::path::Path;

use lora_core::adapter::{load_adapter, save_adapter};
use lora_core::io::safetensors_write::StoredDtype;
use lora_core::network::model::{CausalLm, TokenBatch};
use lora_core::{default_device, to_f32_vec};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};

use crate::common::*;

fn logits(model: &CausalLm) -> Vec<f32> {
    let batch = TokenBatch::left_padded(&[vec![0, 17, 45, 99, 12, 250], vec![0, 301, 7]], 4);
    to_f32_vec(model.forward(&batch, None).unwrap()).unwrap()
}

fn read(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            assert_eq!(v.dtype(), Dtype::F32, "{n}");
            let values = v.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            (n, (v.shape().to_vec(), values))
        })
        .collect()
}

fn write(path: &Path, tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, (s, v))| (n.clone(), s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, TensorView)> =
        bytes.iter().map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// PEFT's own expert adapters (Qwen3-MoE and Mixtral, after its 20 training steps) read by lora and
/// written back: the same tensors under the same names, value for value.
#[test]
fn peft_expert_adapters_save_back_to_peft_s_own_tensors() {
    let device = default_device();
    for (fixture, model) in [("qwen3_moe-experts-replay", "qwen3_moe"), ("mixtral-experts-replay", "mixtral")] {
        let theirs = fixtures().join(fixture).join("adapter-trained");
        let mut m = CausalLm::load_dir(model_dir(model), &device).unwrap();
        let cfg = load_adapter(&mut m, &theirs, 1.0, false).unwrap();
        let d = temp_dir(&format!("experts-save-{model}"));
        save_adapter(&m, &d, &cfg, StoredDtype::F32).unwrap();
        let (ours, peft) =
            (read(&d.join("adapter_model.safetensors")), read(&theirs.join("adapter_model.safetensors")));
        assert_eq!(ours.keys().collect::<Vec<_>>(), peft.keys().collect::<Vec<_>>(), "{fixture}");
        assert!(ours.keys().any(|k| k.ends_with("mlp.experts.base_layer.lora_A.weight")));
        for (k, v) in &peft {
            assert_eq!(&ours[k], v, "{fixture}: {k}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// A checkpoint whose experts are fused on disk (`mlp.experts.gate_up_proj` [E, 2I, H],
/// `mlp.experts.down_proj` [E, H, I]) gives the per-expert checkpoint's logits.
#[test]
fn fused_experts_on_disk_equal_per_expert_ones() {
    let src = model_dir("qwen3_moe");
    let d = temp_dir("experts-fused");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), d.join(f)).unwrap();
    }
    let mut t = read(&src.join("model.safetensors"));
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    let n = cfg["num_local_experts"].as_u64().unwrap() as usize;
    for layer in 0..4 {
        let p = format!("model.layers.{layer}.mlp.experts");
        if !t.contains_key(&format!("{p}.0.gate_proj.weight")) {
            continue; // the dense layer
        }
        let (mut gate_up, mut down) = (Vec::new(), Vec::new());
        let (mut i, mut h) = (0, 0);
        for e in 0..n {
            let (gs, g) = t.remove(&format!("{p}.{e}.gate_proj.weight")).unwrap();
            let (_, u) = t.remove(&format!("{p}.{e}.up_proj.weight")).unwrap();
            let (_, dn) = t.remove(&format!("{p}.{e}.down_proj.weight")).unwrap();
            (i, h) = (gs[0], gs[1]);
            gate_up.extend(g.into_iter().chain(u));
            down.extend(dn);
        }
        t.insert(format!("{p}.gate_up_proj"), (vec![n, 2 * i, h], gate_up));
        t.insert(format!("{p}.down_proj"), (vec![n, h, i], down));
    }
    write(&d.join("model.safetensors"), &t);
    let device = default_device();
    let fused = logits(&CausalLm::load_dir(&d, &device).unwrap());
    let per_expert = logits(&CausalLm::load_dir(&src, &device).unwrap());
    assert_eq!(fused, per_expert);
    let _ = std::fs::remove_dir_all(&d);
}

/// An older per-expert adapter (`mlp.experts.E.{gate,up,down}_proj.lora_A/B`) gives the logits of
/// its conversion to PEFT's fused layout (A stacked along the rank, B block-diagonal), and changes
/// them from the base's.
#[test]
fn per_expert_adapters_equal_their_fused_conversion() {
    let device = default_device();
    let model = model_dir("qwen3_moe");
    let base = logits(&CausalLm::load_dir(&model, &device).unwrap());
    let (n, h, i, r) = (5usize, 32usize, 24usize, 2usize);
    let value = |seed: usize, k: usize| ((seed * 7919 + k * 104729) % 1000) as f32 / 1000.0 - 0.5;
    let (mut v4, mut v5) = (BTreeMap::new(), BTreeMap::new());
    for layer in [0usize, 1, 3] {
        let p = format!("base_model.model.model.layers.{layer}.mlp.experts");
        let (mut gu_a, mut gu_b, mut dn_a, mut dn_b) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for e in 0..n {
            let mut mats = Vec::new();
            for (j, (name, a_shape, b_shape)) in
                [("gate_proj", [r, h], [i, r]), ("up_proj", [r, h], [i, r]), ("down_proj", [r, i], [h, r])]
                    .into_iter()
                    .enumerate()
            {
                let seed = 1000 * layer + 10 * e + j;
                let a: Vec<f32> = (0..r * a_shape[1]).map(|k| value(seed, k)).collect();
                let b: Vec<f32> = (0..b_shape[0] * r).map(|k| value(seed + 500, k)).collect();
                v4.insert(format!("{p}.{e}.{name}.lora_A.weight"), (a_shape.to_vec(), a.clone()));
                v4.insert(format!("{p}.{e}.{name}.lora_B.weight"), (b_shape.to_vec(), b.clone()));
                mats.push((a, b));
            }
            // The fused conversion: A = [A_gate; A_up], B = [[B_gate, 0], [0, B_up]].
            gu_a.push([mats[0].0.clone(), mats[1].0.clone()].concat());
            let mut b = vec![0.0f32; 2 * i * 2 * r];
            for o in 0..i {
                for k in 0..r {
                    b[o * 2 * r + k] = mats[0].1[o * r + k];
                    b[(i + o) * 2 * r + r + k] = mats[1].1[o * r + k];
                }
            }
            gu_b.push(b);
            dn_a.push(mats[2].0.clone());
            dn_b.push(mats[2].1.clone());
        }
        let gu = lora_core::adapter::experts::FlatExperts::from_experts(&gu_a, &gu_b, 2 * r, h, 2 * i);
        let dn = lora_core::adapter::experts::FlatExperts::from_experts(&dn_a, &dn_b, r, i, h);
        v5.insert(format!("{p}.base_layer.lora_A.weight"), (vec![n * 2 * r, h], gu.a));
        v5.insert(format!("{p}.base_layer.lora_B.weight"), (vec![2 * i, n * 2 * r], gu.b));
        v5.insert(format!("{p}.lora_A.weight"), (vec![n * r, i], dn.a));
        v5.insert(format!("{p}.lora_B.weight"), (vec![h, n * r], dn.b));
    }
    let mut out = Vec::new();
    for (name, tensors, config) in [
        (
            "v4",
            &v4,
            serde_json::json!({"peft_type": "LORA", "r": r, "lora_alpha": 4, "target_modules": ["gate_proj", "up_proj", "down_proj"]}),
        ),
        (
            "v5",
            &v5,
            serde_json::json!({"peft_type": "LORA", "r": r, "lora_alpha": 4, "target_modules": [],
            "target_parameters": ["gate_up_proj", "down_proj"], "rank_pattern": {r".*\.gate_up_proj": 2 * r},
            "alpha_pattern": {r".*\.gate_up_proj": 8}}),
        ),
    ] {
        let d = temp_dir(&format!("experts-{name}"));
        write(&d.join("adapter_model.safetensors"), tensors);
        std::fs::write(d.join("adapter_config.json"), config.to_string()).unwrap();
        let mut m = CausalLm::load_dir(&model, &device).unwrap();
        load_adapter(&mut m, &d, 1.0, false).unwrap();
        out.push(logits(&m));
        let _ = std::fs::remove_dir_all(&d);
    }
    let diff = out[0].iter().zip(&out[1]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-5, "per-expert vs fused: {diff}");
    let moved = out[0].iter().zip(&base).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(moved > 1e-2, "the adapter changes nothing ({moved}): the test would prove nothing");
}

/// The fused CPU experts (`kernels::fused_experts`: one operation per block, a hand-written
/// backward) give the per-expert loop's outputs and gradients: of the block's input (through the
/// experts and, by the routing weights, through the router) and of every expert's adapter factors,
/// zero for an expert without tokens as the loop leaves it none. On a trained PEFT expert adapter.
#[test]
fn fused_experts_equal_the_per_expert_loop() {
    use lora_core::burn::tensor::{Tensor, TensorData};
    let device = default_device();
    let mut m = CausalLm::load_dir(fixtures().join("models/qwen3_moe"), &device).unwrap();
    load_adapter(&mut m, &fixtures().join("qwen3_moe-experts-replay/adapter-trained"), 1.0, false).unwrap();
    let moe = m.model.layers[0].moe.as_mut().expect("layer 0 is sparse");
    let n_experts = moe.experts.len();
    for e in &mut moe.experts {
        for l in [&mut e.gate_up_proj, &mut e.down_proj] {
            let a = &mut l.lora[0];
            a.lora_a = a.lora_a.clone().autodiff().require_grad();
            a.lora_b = a.lora_b.clone().autodiff().require_grad();
        }
    }
    let moe = m.model.layers[0].moe.as_ref().unwrap();
    let h = 32;
    let values = |seed: u32, n: usize| -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0).collect()
    };
    let mut idle = false;
    // Six tokens reach every expert; one token leaves two of the five without any.
    for (b, t) in [(2, 3), (1, 1)] {
        let (xv, dyv) = (values(7, b * t * h), values(11, b * t * h));
        let run = |fused: bool| {
            let x = Tensor::<3>::from_data(TensorData::new(xv.clone(), [b, t, h]), &device).autodiff().require_grad();
            let y = if fused { moe.forward(x.clone()) } else { moe.forward_reference(x.clone()) };
            let dy = Tensor::<3>::from_data(TensorData::new(dyv.clone(), [b, t, h]), &device);
            let grads = (y.clone() * dy).sum().backward();
            let mut out = vec![to_f32_vec(y.inner()).unwrap(), to_f32_vec(x.grad(&grads).unwrap()).unwrap()];
            let mut used = 0;
            for e in &moe.experts {
                for l in [&e.gate_up_proj, &e.down_proj] {
                    for p in [&l.lora[0].lora_a, &l.lora[0].lora_b] {
                        let g = p.grad(&grads).map(|g| to_f32_vec(g).unwrap());
                        used += usize::from(g.is_some());
                        out.push(g.unwrap_or_else(|| vec![0.0; p.dims().iter().product()]));
                    }
                }
            }
            (out, used)
        };
        let ((fused, fused_used), (reference, used)) = (run(true), run(false));
        // The fused operation ran: it gives every expert's factors a gradient, zero without tokens.
        assert_eq!(fused_used, 4 * n_experts, "{b}x{t}: the fused path did not run");
        idle |= used < 4 * n_experts;
        assert_eq!(fused[0], reference[0], "{b}x{t}: forward, the same products in the same order");
        for (i, (a, r)) in fused.iter().zip(&reference).enumerate() {
            let scale = r.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            let d = a.iter().zip(r).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(d <= 1e-5 * scale, "{b}x{t}: tensor {i}: max |Δ| {d:e} (scale {scale})");
        }
    }
    assert!(idle, "no probe left an expert without tokens");
}
