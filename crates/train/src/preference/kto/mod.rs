//! KTO: preference tuning on unpaired examples, each a completion labelled desirable or not, as
//! TRL 1.x's `KTOTrainer` defines it. [`loss`] holds the losses and metrics, [`step`] the
//! optimizer step, [`data`] TRL's unpaired records (and paired ones, unpaired).

pub mod data;
pub mod loss;
pub mod step;

pub use data::{fit_unpaired, load_unpaired, mismatch, read_kto_files, tokenize_unpaired};
pub use loss::{Kto, KtoLoss, KtoMetrics, MicroBatchKto, UnpairedLogProbs};
pub use step::{
    KtoStepOutcome, Rows, UnpairedBatch, UnpairedIds, evaluate_unpaired, kto_step, unpaired_reference_log_probs,
};
