//! The start-up check of a data-parallel run: every rank must run the same recipe on the same data,
//! or the run is one error on every rank before any step.

use sha2::{Digest, Sha256};

use super::comm::{CommError, Communicator};
use crate::data::Example;
use crate::preference::PreferenceExamples;

/// The hex sha256 the ranks compare: the recipe's text, then every training id (little-endian) —
/// an SFT run's examples, a preference run's pairs or KTO examples (each sequence's length, then its
/// ids, and a KTO example's label) — streamed into the hasher, no copy of the data.
pub fn run_digest(recipe_text: &str, train: &[Example], preference: &PreferenceExamples) -> String {
    let mut hasher = Sha256::new_with_prefix(recipe_text.as_bytes());
    for id in train.iter().flat_map(|e| &e.ids) {
        hasher.update(id.to_le_bytes());
    }
    let sequences: Vec<&Vec<u32>> = match preference {
        PreferenceExamples::Pairs(pairs) => pairs.iter().flat_map(|q| [&q.prompt, &q.chosen, &q.rejected]).collect(),
        PreferenceExamples::Unpaired(examples) => {
            for e in examples {
                hasher.update([u8::from(e.desirable)]);
            }
            examples.iter().flat_map(|e| [&e.prompt, &e.completion, &e.kl_completion]).collect()
        }
    };
    for seq in sequences {
        hasher.update((seq.len() as u64).to_le_bytes());
        for id in seq {
            hasher.update(id.to_le_bytes());
        }
    }
    format!("{:x}", hasher.finalize())
}

/// Compares `digest` (a hex sha256 of the rank's recipe and data) across the ranks; `Ok(None)` when
/// every rank has rank 0's, `Ok(Some(r))` naming the first rank that differs, on every rank.
pub fn first_differing<C: Communicator + ?Sized>(comm: &mut C, digest: &str) -> Result<Option<usize>, CommError> {
    // The digest's first 32 hex digits as 4 words, carried as f32 bit patterns (never added).
    let words: Vec<f32> = (0..4)
        .map(|i| u32::from_str_radix(digest.get(i * 8..i * 8 + 8).unwrap_or("0"), 16).unwrap_or(0))
        .map(f32::from_bits)
        .collect();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let mut verdict = [f32::from_bits(u32::MAX)];
    if comm.rank() == 0 {
        let mut first = None;
        for r in 1..comm.world() {
            let theirs = comm.recv(r, 4)?;
            if first.is_none() && bits(&theirs) != bits(&words) {
                first = Some(r);
            }
        }
        verdict = [f32::from_bits(first.map_or(u32::MAX, |r| r as u32))];
    } else {
        comm.send(0, &words)?;
    }
    comm.broadcast(0, &mut verdict)?;
    let r = verdict[0].to_bits();
    Ok((r != u32::MAX).then_some(r as usize))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::distributed::thread_comm::{ThreadComm, on_ranks};

    #[test]
    fn a_rank_with_other_inputs_is_named_on_every_rank() {
        for (digests, want) in [(["ab12", "ab12", "ab12"], None), (["ab12", "ab12", "cd34"], Some(2))] {
            let got = on_ranks(ThreadComm::group(3, Duration::from_secs(10)), move |mut c| {
                let d = format!("{:0<64}", digests[c.rank()]);
                first_differing(&mut c, &d).unwrap()
            });
            assert!(got.iter().all(|g| *g == want), "{got:?}");
        }
    }
}
