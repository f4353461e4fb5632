//! The start-up check of a data-parallel run: every rank must run the same recipe on the same data,
//! or the run is one error on every rank before any step.

use super::comm::{CommError, Communicator};

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
