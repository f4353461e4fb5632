//! Preference tuning of a LoRA adapter: DPO and its loss variants, SimPO, ORPO and KTO, as TRL 1.x
//! defines them.
//!
//! [`data`] reads TRL's preference records into token ids; [`loss`] holds the pair losses, their derivatives and TRL's metrics; [`step`] runs one optimizer
//! step over micro-batches of pairs, with the reference's log-probabilities from the same model
//! without its adapters. [`kto`] is KTO's, on unpaired examples.

pub mod card;
pub mod data;
pub mod kto;
pub mod loss;
pub mod run;
pub mod step;

pub use data::{
    FieldMap, MAPPABLE_FIELDS, PreferenceData, PreferenceExamples, fit, load_pairs, load_preference_data, tokenize_pair,
};
pub use loss::{Dpo, DpoLoss, PairLogProbs, PreferenceMetrics};
pub use run::PreferenceTraining;
pub use step::{
    DpoStepOutcome, PairBatch, PairIds, Reference, ReferenceLogProbs, dpo_step, evaluate_pairs, reference_log_probs,
    sequence_log_probs,
};
