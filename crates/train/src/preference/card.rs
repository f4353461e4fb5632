//! What a preference run's model card says of its method: the loss, its parameters and the
//! reference, in a sentence before the card's data description.

use crate::preference::DpoLoss;
use crate::recipe::Recipe;

/// The reference a run's card names: the recipe's reference adapter, else the adapter the policy
/// started from, else the base.
fn reference(recipe: &Recipe) -> String {
    let chosen = recipe.preference.as_ref().and_then(|x| x.reference_adapter.clone());
    match chosen.or(recipe.lora.init_from.clone()) {
        Some(r) => format!("the base with the adapter `{}` as the reference", r.display()),
        None => "the base without the adapter as the reference".to_string(),
    }
}

/// The card's sentence on how a preference recipe trained.
pub fn method_text(recipe: &Recipe) -> String {
    if recipe.is_kto() {
        let k = recipe.kto();
        return format!(
            "Trained with KTO ({:?} loss, beta {}, desirable weight {}, undesirable weight {}) and {}, on unpaired \
             examples, each a completion labelled desirable or undesirable.",
            k.loss,
            k.beta,
            k.desirable_weight,
            k.undesirable_weight,
            reference(recipe)
        );
    }
    let d = recipe.dpo();
    let reference = if d.loss.needs_reference() { reference(recipe) } else { "no reference model".to_string() };
    let method = match d.loss {
        DpoLoss::Simpo => "SimPO",
        DpoLoss::Orpo => "ORPO",
        _ => "DPO",
    };
    let gamma = if d.loss == DpoLoss::Simpo { format!(", gamma {}", d.gamma) } else { String::new() };
    format!(
        "Trained with {method} ({:?} loss, beta {}, label smoothing {}, SFT term weight {}{gamma}) and {reference}, \
         on preference pairs (each \"example\" below is a pair; trained tokens are both completions').",
        d.loss, d.beta, d.label_smoothing, d.sft_weight
    )
}
