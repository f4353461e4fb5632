//! The trainable tensors of a model with adapters: every lora_A and lora_B, in module order.

use lora_core::CausalLm;
use lora_core::burn::tensor::Tensor;

/// The adapter tensors of `model` in a fixed order (module path order, A before B).
pub fn adapter_tensors(model: &CausalLm) -> Vec<Tensor<2>> {
    let mut out = Vec::new();
    for (_, lin) in model.linear_modules() {
        for a in &lin.lora {
            out.push(a.lora_a.clone());
            out.push(a.lora_b.clone());
        }
    }
    out
}

/// Takes the adapter tensors out of the model (same order as [`adapter_tensors`]), leaving empty
/// placeholders: the values returned are then the only references to their buffers, which the
/// optimizer updates in place. [`set_adapter_tensors`] puts values back.
pub fn take_adapter_tensors(model: &mut CausalLm) -> Vec<Tensor<2>> {
    let mut out = Vec::new();
    for (_, lin) in model.linear_modules_mut() {
        for a in lin.lora.iter_mut() {
            for t in [&mut a.lora_a, &mut a.lora_b] {
                let empty = Tensor::empty([0, 0], &t.device());
                out.push(std::mem::replace(t, empty).inner());
            }
        }
    }
    out
}

/// Replaces the adapter tensors with `values` (same order as [`adapter_tensors`]), as new autodiff
/// leaves that require gradients.
pub fn set_adapter_tensors(model: &mut CausalLm, values: Vec<Tensor<2>>) {
    let mut it = values.into_iter();
    for (_, lin) in model.linear_modules_mut() {
        for a in lin.lora.iter_mut() {
            a.lora_a = it.next().expect("one value per tensor").autodiff().require_grad();
            a.lora_b = it.next().expect("one value per tensor").autodiff().require_grad();
        }
    }
    assert!(it.next().is_none(), "more values than adapter tensors");
}

/// Switches dropout of every adapter on (training) or off (evaluation).
pub fn set_training(model: &mut CausalLm, training: bool) {
    for (_, lin) in model.linear_modules_mut() {
        for a in lin.lora.iter_mut() {
            a.training = training;
        }
    }
}

/// Number of trainable values.
pub fn trainable_parameters(model: &CausalLm) -> usize {
    adapter_tensors(model).iter().map(|t| t.dims().iter().product::<usize>()).sum()
}

/// Gives every adapter its own dropout seed derived from `seed` (one call per micro-batch).
pub fn set_dropout_seeds(model: &mut CausalLm, seed: u64) {
    for (i, (_, lin)) in model.linear_modules_mut().into_iter().enumerate() {
        for (j, a) in lin.lora.iter_mut().enumerate() {
            a.dropout_seed = seed ^ ((i as u64) << 32 | j as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        }
    }
}

/// The decoder layer of each adapter tensor (`None` for the head), in [`adapter_tensors`] order.
pub fn adapter_layers(model: &CausalLm) -> Vec<Option<usize>> {
    let mut out = Vec::new();
    for (path, lin) in model.linear_modules() {
        let layer = lora_core::network::config::layer_index(&path);
        for _ in &lin.lora {
            out.push(layer);
            out.push(layer);
        }
    }
    out
}

/// Makes the adapters of the selected layers fresh autodiff leaves that require gradients, leaving the
/// others as they are; returns the leaves (in [`adapter_tensors`] order, `None` where not selected), to
/// read their gradients after `backward`.
pub fn track_adapters(model: &mut CausalLm, select: impl Fn(Option<usize>) -> bool) -> Vec<Option<Tensor<2>>> {
    let layers = adapter_layers(model);
    let mut out = Vec::with_capacity(layers.len());
    let mut k = 0;
    for (_, lin) in model.linear_modules_mut() {
        for a in lin.lora.iter_mut() {
            if select(layers[k]) {
                a.lora_a = a.lora_a.clone().inner().autodiff().require_grad();
                a.lora_b = a.lora_b.clone().inner().autodiff().require_grad();
                out.push(Some(a.lora_a.clone()));
                out.push(Some(a.lora_b.clone()));
            } else {
                out.push(None);
                out.push(None);
            }
            k += 2;
        }
    }
    out
}

/// Drops the autodiff association of every adapter: a forward pass then records no graph.
pub fn untrack_adapters(model: &mut CausalLm) {
    for (_, lin) in model.linear_modules_mut() {
        for a in lin.lora.iter_mut() {
            a.lora_a = a.lora_a.clone().inner();
            a.lora_b = a.lora_b.clone().inner();
        }
    }
}

/// Makes every adapter an autodiff constant: a forward pass then runs burn's autodiff operations
/// (whose attention, for one, is composed of other operations than the plain backend's) without
/// recording a graph, so that an untracked pass computes the same values as a tracked one.
pub fn constant_adapters(model: &mut CausalLm) {
    for (_, lin) in model.linear_modules_mut() {
        for a in lin.lora.iter_mut() {
            a.lora_a = a.lora_a.clone().inner().autodiff();
            a.lora_b = a.lora_b.clone().inner().autodiff();
        }
    }
}
