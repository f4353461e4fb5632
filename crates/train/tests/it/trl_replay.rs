//! What the replays of TRL's preference trainers (`dpo.rs`, `kto.rs`) share: the fixtures' token
//! ids and adapters, and the comparisons with TRL's logged metrics and final adapter.

use lora_core::adapter::load_adapter;
use lora_core::burn::tensor::Device;
use lora_core::kernels::host::to_f32_vec;
use lora_core::network::model::CausalLm;
use lora_train::trainable::adapter_tensors;
use serde_json::Value;

use crate::common::fixtures;

/// A golden file of `tests/fixtures/dpo`.
pub fn golden(file: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("dpo").join(file)).unwrap()).unwrap()
}

/// Token ids of a JSON list (none for null).
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().map_or(Vec::new(), |a| a.iter().map(|x| x.as_u64().unwrap() as u32).collect())
}

/// The tiny Llama with the PEFT adapter `tests/fixtures/dpo/<adapter>`.
pub fn model_on(adapter: &str, trainable: bool, device: &Device) -> CausalLm {
    let mut model = CausalLm::load_dir(fixtures().join("models/llama"), device).unwrap();
    load_adapter(&mut model, &fixtures().join("dpo").join(adapter), 1.0, trainable).unwrap();
    model
}

/// A metric against TRL's logged value: relative 1e-4, with an absolute floor for the rewards and
/// KL, which start at exactly 0. TRL leaves out a metric a step had no example for; ours is NaN then.
pub fn assert_metric(run: &str, step: usize, name: &str, got: f64, want: Option<f64>) {
    match want {
        None => assert!(got.is_nan(), "{run} step {step}: {name} {got}, TRL has none"),
        Some(want) => {
            let tol = 1e-4 * want.abs().max(1e-2);
            assert!((got - want).abs() <= tol, "{run} step {step}: {name} {got} vs TRL {want}");
        }
    }
}

/// The model's adapter against TRL's trained one (`<run>/adapter-trained`), within 1e-4; the
/// adapter's values.
pub fn assert_final_adapter(run: &str, model: &CausalLm, device: &Device) -> Vec<Vec<f32>> {
    let trained = model_on(&format!("{run}/adapter-trained"), false, device);
    let (ours, theirs) = (adapter_tensors(model), adapter_tensors(&trained));
    assert_eq!(ours.len(), theirs.len());
    let mut values = Vec::new();
    for (o, t) in ours.into_iter().zip(theirs) {
        let (o, t) = (to_f32_vec(o.inner()).unwrap(), to_f32_vec(t.inner()).unwrap());
        let d = o.iter().zip(&t).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(d <= 1e-4, "{run}: final adapter max |Δ| {d:e}");
        values.push(o);
    }
    values
}
