//! The trainable tensors of a model with adapters: every lora_A and lora_B, and DoRA's magnitude
//! where an adapter has one, in module order.

use lora_core::CausalLm;
use lora_core::burn::tensor::Tensor;
use lora_core::network::lora::LoraAdapter;

/// What a trainable tensor is in its adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `lora_A`: [r, in].
    A,
    /// `lora_B`: [out, r].
    B,
    /// DoRA's `lora_magnitude_vector`, held as [1, out].
    Magnitude,
    /// Trained token rows (`trainable_tokens_delta`): [n, hidden], the input embedding's then an
    /// untied head's, after every adapter.
    Tokens,
}

/// The trainable tensors of one adapter, in order: A, B, then DoRA's magnitude.
fn slots(a: &mut LoraAdapter) -> Vec<&mut Tensor<2>> {
    let mut out = vec![&mut a.lora_a, &mut a.lora_b];
    if let Some(d) = a.dora.as_mut() {
        out.push(&mut d.magnitude);
    }
    out
}

/// [`slots`]' roles.
fn roles(a: &LoraAdapter) -> &'static [Role] {
    if a.dora.is_some() { &[Role::A, Role::B, Role::Magnitude] } else { &[Role::A, Role::B] }
}

/// Applies `f` to every trainable tensor of the model, in [`adapter_tensors`] order.
fn each_slot(model: &mut CausalLm, mut f: impl FnMut(&mut Tensor<2>)) {
    for (_, lin) in model.linear_modules_mut() {
        for a in lin.lora.iter_mut() {
            slots(a).into_iter().for_each(&mut f);
        }
    }
    if let Some(t) = model.model.embed_tokens.tokens.as_mut() {
        f(&mut t.values);
    }
    if let Some(t) = model.head_tokens.as_mut() {
        f(&mut t.values);
    }
}

/// The adapter tensors of `model` in a fixed order (module path order; A, B, then any magnitude).
pub fn adapter_tensors(model: &CausalLm) -> Vec<Tensor<2>> {
    let mut out = Vec::new();
    for (_, lin) in model.linear_modules() {
        for a in &lin.lora {
            out.push(a.lora_a.clone());
            out.push(a.lora_b.clone());
            if let Some(d) = &a.dora {
                out.push(d.magnitude.clone());
            }
        }
    }
    out.extend(model.model.embed_tokens.tokens.as_ref().map(|t| t.values.clone()));
    out.extend(model.head_tokens.as_ref().map(|t| t.values.clone()));
    out
}

/// The role of each adapter tensor, in [`adapter_tensors`] order.
pub fn adapter_roles(model: &CausalLm) -> Vec<Role> {
    let mut out: Vec<Role> = model
        .linear_modules()
        .iter()
        .flat_map(|(_, lin)| lin.lora.iter().flat_map(|a| roles(a).iter().copied()))
        .collect();
    out.extend(model.model.embed_tokens.tokens.as_ref().map(|_| Role::Tokens));
    out.extend(model.head_tokens.as_ref().map(|_| Role::Tokens));
    out
}

/// Names of the trainable tensors, as in the adapter file.
pub fn tensor_names(model: &CausalLm) -> Vec<String> {
    let mut out = Vec::new();
    for (path, lin) in model.linear_modules() {
        if let Some(a) = lin.lora.first() {
            out.push(format!("base_model.model.{path}.lora_A.weight"));
            out.push(format!("base_model.model.{path}.lora_B.weight"));
            if a.dora.is_some() {
                out.push(format!("base_model.model.{path}.lora_magnitude_vector"));
            }
        }
    }
    if model.model.embed_tokens.tokens.is_some() {
        out.push(lora_core::adapter::tokens::tokens_key(model));
    }
    if model.head_tokens.is_some() {
        out.push(lora_core::adapter::tokens::head_tokens_key());
    }
    out
}

/// LoRA+'s learning-rate multiples, in [`adapter_tensors`] order: PEFT's `create_loraplus_optimizer`
/// puts every B and every 1-D parameter (DoRA's magnitudes) at `ratio` times A's rate.
pub fn loraplus_scales(model: &CausalLm, ratio: f64) -> Vec<f64> {
    // PEFT's groups: B and 1-D parameters at the ratio; the token rows (2-D, not an `Embedding`
    // module) with A.
    adapter_roles(model).into_iter().map(|r| if matches!(r, Role::A | Role::Tokens) { 1.0 } else { ratio }).collect()
}

/// Takes the adapter tensors out of the model (same order as [`adapter_tensors`]), leaving empty
/// placeholders: the values returned are then the only references to their buffers, which the
/// optimizer updates in place. [`set_adapter_tensors`] puts values back.
pub fn take_adapter_tensors(model: &mut CausalLm) -> Vec<Tensor<2>> {
    let mut out = Vec::new();
    each_slot(model, |t| {
        let empty = Tensor::empty([0, 0], &t.device());
        out.push(std::mem::replace(t, empty).inner());
    });
    out
}

/// Replaces the adapter tensors with `values` (same order as [`adapter_tensors`]), as new autodiff
/// leaves that require gradients.
pub fn set_adapter_tensors(model: &mut CausalLm, values: Vec<Tensor<2>>) {
    let mut it = values.into_iter();
    each_slot(model, |t| *t = it.next().expect("one value per tensor").autodiff().require_grad());
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
        for a in &lin.lora {
            out.extend(roles(a).iter().map(|_| layer));
        }
    }
    // The token rows go with the head (tied: the head reads them) and get the embedding's part of
    // their gradient from the first layer's input (step.rs).
    out.extend(model.model.embed_tokens.tokens.as_ref().map(|_| None));
    out.extend(model.head_tokens.as_ref().map(|_| None));
    out
}

/// Makes the adapters of the selected layers fresh autodiff leaves that require gradients, leaving the
/// others as they are; returns the leaves (in [`adapter_tensors`] order, `None` where not selected), to
/// read their gradients after `backward`.
pub fn track_adapters(model: &mut CausalLm, select: impl Fn(Option<usize>) -> bool) -> Vec<Option<Tensor<2>>> {
    let layers = adapter_layers(model);
    let mut out = Vec::with_capacity(layers.len());
    each_slot(model, |t| {
        if select(layers[out.len()]) {
            *t = t.clone().inner().autodiff().require_grad();
            out.push(Some(t.clone()));
        } else {
            out.push(None);
        }
    });
    out
}

/// Drops the autodiff association of every adapter: a forward pass then records no graph.
pub fn untrack_adapters(model: &mut CausalLm) {
    each_slot(model, |t| *t = t.clone().inner());
}

/// Makes every adapter an autodiff constant: a forward pass then runs burn's autodiff operations
/// (whose attention, for one, is composed of other operations than the plain backend's) without
/// recording a graph, so that an untracked pass computes the same values as a tracked one.
pub fn constant_adapters(model: &mut CausalLm) {
    each_slot(model, |t| *t = t.clone().inner().autodiff());
}
