//! PiSSA and OLoRA (`[lora] init`): PEFT's initial factors and residual base, a 10-step replay, and
//! the adapter saved converted for the original base (scripts/make_pissa_fixtures.py).

use lora_core::adapter::base_init::MovingInit;
use lora_core::adapter::config::TargetModules;
use lora_core::adapter::{LoraInit, LoraSpec, attach_new_moving, load_adapter, save_adapter_converted};
use lora_core::default_device;
use lora_core::io::safetensors_write::StoredDtype;
use lora_core::kernels::host::to_f32_vec;
use lora_core::loss::shifted_cross_entropy_sum;
use lora_formats::peft::AdapterConfig;
use lora_formats::safetensors::SafetensorsFile;
use lora_train::optimizer::{AdamW, AdamWConfig};
use lora_train::trainable::{adapter_tensors, set_adapter_tensors};
use serde_json::Value;

use crate::common::*;
use crate::replay::{base_on, batch, golden, labels, max_abs};

fn spec(init: MovingInit) -> LoraSpec {
    LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
        use_rslora: false,
        init: LoraInit::Moving(init),
        layers_to_transform: None,
        use_dora: false,
    }
}

/// s·B·A of a module of an adapter file: [out, in].
fn delta(file: &SafetensorsFile, module: &str, s: f32) -> Vec<f32> {
    let (a, ash) = file.to_f32(&format!("base_model.model.{module}.lora_A.weight")).unwrap();
    let (b, bsh) = file.to_f32(&format!("base_model.model.{module}.lora_B.weight")).unwrap();
    let (r, inp, out) = (ash[0], ash[1], bsh[0]);
    (0..out)
        .flat_map(|o| (0..inp).map(move |j| (o, j)))
        .map(|(o, j)| s * (0..r).map(|i| b[o * r + i] * a[i * inp + j]).sum::<f32>())
        .collect()
}

#[test]
fn pissa_and_olora_start_train_and_save_as_peft() {
    let device = default_device();
    let g = golden();
    let (ids, labels) = (batch(&g), labels(&g));
    for (name, init) in [("pissa", MovingInit::Pissa), ("olora", MovingInit::Olora)] {
        let dir = fixtures().join("lora/pissa").join(name);
        let initial = SafetensorsFile::open(dir.join("initial.safetensors")).unwrap();
        let mut model = base_on(&device);
        let (targets, factors) = attach_new_moving(&mut model, &spec(init), 7, true).unwrap();
        assert_eq!((targets.len(), factors.len()), (6, 6));
        // The residual base equals PEFT's; A₀ and B₀ too, up to the sign of each pair.
        for f in &factors {
            let linears = model.linear_modules();
            let lin = linears.iter().find(|(p, _)| *p == f.module).unwrap().1;
            let ours = to_f32_vec(lin.weight.to_f32(&device)).unwrap();
            let (theirs, _) = initial.to_f32(&format!("{}.weight", f.module)).unwrap();
            let d = max_abs(&ours, &theirs);
            assert!(d <= 1e-5, "{name} {}: residual max |Δ| {d:e}", f.module);
            let (a, _) = initial.to_f32(&format!("{}.lora_A", f.module)).unwrap();
            let (b, _) = initial.to_f32(&format!("{}.lora_B", f.module)).unwrap();
            let (r, inp) = (4, a.len() / 4);
            for i in 0..r {
                let row = |v: &[f32]| v[i * inp..(i + 1) * inp].to_vec();
                let col = |v: &[f32]| v.iter().skip(i).step_by(r).copied().collect::<Vec<_>>();
                let dot: f32 = row(&f.lora_a).iter().zip(row(&a)).map(|(x, y)| x * y).sum();
                let sign = dot.signum();
                let flip = |v: Vec<f32>| v.into_iter().map(|x| x * sign).collect::<Vec<_>>();
                let (da, db) = (max_abs(&flip(row(&f.lora_a)), &row(&a)), max_abs(&flip(col(&f.lora_b)), &col(&b)));
                assert!(da <= 1e-4 && db <= 1e-4, "{name} {} pair {i}: A {da:e}, B {db:e}", f.module);
            }
        }
        // The residual model starts where the base is.
        let logits = to_f32_vec(model.forward(&ids, None).unwrap()).unwrap();
        let d = max_abs(&logits, &initial.to_f32("logits").unwrap().0);
        assert!(d <= 1e-4, "{name}: initial logits max |Δ| {d:e}");
        // 10 AdamW steps: PEFT's losses.
        let meta: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
        let expected: Vec<f64> =
            meta["replay"]["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let mut opt = AdamW::new(AdamWConfig::default(), &adapter_tensors(&model));
        for (step, want) in expected.iter().enumerate() {
            let (sum, count) = shifted_cross_entropy_sum(model.forward(&ids, None).unwrap(), &labels);
            let loss = sum / count as f64;
            let got = to_f32_vec(loss.clone().inner()).unwrap()[0] as f64;
            assert!(((got - want) / want).abs() <= 1e-4, "{name} step {step}: loss {got} vs PEFT {want}");
            let grads = loss.backward();
            let params = adapter_tensors(&model);
            let gs = params.iter().map(|p| p.grad(&grads).unwrap()).collect();
            let new = opt.update(params, gs, 1e-3);
            set_adapter_tensors(&mut model, new);
        }
        // Saved converted: PEFT's rank-2r adapter for the original base.
        let out = temp_dir(&format!("pissa-{name}"));
        let peft_dir = dir.join("adapter-converted");
        let mut cfg = AdapterConfig::load(&peft_dir.join("adapter_config.json")).unwrap();
        (cfg.r, cfg.lora_alpha, cfg.init_lora_weights) = (4, 8.0, Value::String(name.into()));
        save_adapter_converted(&model, &out, &cfg, StoredDtype::F32, &factors).unwrap();
        let saved = AdapterConfig::load(&out.join("adapter_config.json")).unwrap();
        assert_eq!((saved.r, saved.lora_alpha, saved.init_lora_weights.clone()), (8, 16.0, Value::Bool(true)));
        let (ours, theirs) = (
            SafetensorsFile::open(out.join("adapter_model.safetensors")).unwrap(),
            SafetensorsFile::open(peft_dir.join("adapter_model.safetensors")).unwrap(),
        );
        for module in &targets {
            let d = max_abs(&delta(&ours, module, 2.0), &delta(&theirs, module, 2.0));
            assert!(d <= 1e-4, "{name} {module}: converted ΔW max |Δ| {d:e}");
        }
        let mut original = base_on(&device);
        load_adapter(&mut original, &out, 1.0, false).unwrap();
        let logits = to_f32_vec(original.forward(&ids, None).unwrap()).unwrap();
        let d = max_abs(
            &logits,
            &SafetensorsFile::open(dir.join("trained.safetensors")).unwrap().to_f32("logits").unwrap().0,
        );
        assert!(d <= 1e-4, "{name}: the converted adapter's logits on the original base, max |Δ| {d:e}");
    }
}
