//! The two reductions of a step's adapter gradients across ranks.
//!
//! One process accumulates a step's gradient by adding each contribution (a micro-batch's, or a
//! part of one: the head's chunks) onto the running sum in order, the first taken as is. Each rank
//! records its own block's contributions in that order ([`Contributions`]); then:
//! - [`exact`]: rank 0 adds its contributions, sends the running sums to rank 1, which adds its own
//!   onto them, and so on; the last rank broadcasts the totals. Every addition is the one the single
//!   process makes, on the same operands: the totals are its bits, on every rank.
//! - [`fast`]: each rank sums its own, then one all-reduce (the engine's order): identical across
//!   ranks, within float tolerance of the single process.

use super::comm::{CommError, Communicator};

/// One rank's gradient contributions, per trainable tensor (slot), in the order its step made them.
#[derive(Debug, Clone, PartialEq)]
pub struct Contributions {
    /// Per slot, the contributions in order (flattened).
    pub slots: Vec<Vec<Vec<f32>>>,
}

impl Contributions {
    /// None yet, for `n` slots.
    pub fn new(n: usize) -> Self {
        Self { slots: vec![Vec::new(); n] }
    }

    /// Records a contribution to slot `slot`.
    pub fn push(&mut self, slot: usize, values: Vec<f32>) {
        self.slots[slot].push(values);
    }
}

/// Adds `c` onto the running sum as one process does: the first contribution is taken as is.
fn add_into(acc: &mut Option<Vec<f32>>, c: &[f32]) {
    match acc {
        Some(a) => a.iter_mut().zip(c).for_each(|(x, y)| *x += y),
        None => *acc = Some(c.to_vec()),
    }
}

/// The running sums as one message: per slot a presence flag (0 or 1) and `sizes[slot]` values.
fn encode(sums: &[Option<Vec<f32>>], sizes: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(sizes.iter().map(|s| s + 1).sum());
    for (s, &n) in sums.iter().zip(sizes) {
        match s {
            Some(v) => {
                out.push(1.0);
                out.extend_from_slice(v);
            }
            None => {
                out.push(0.0);
                out.extend(std::iter::repeat_n(0.0, n));
            }
        }
    }
    out
}

fn decode(msg: &[f32], sizes: &[usize]) -> Vec<Option<Vec<f32>>> {
    let mut at = 0;
    sizes
        .iter()
        .map(|&n| {
            let present = msg[at] != 0.0;
            let v = msg[at + 1..at + 1 + n].to_vec();
            at += n + 1;
            present.then_some(v)
        })
        .collect()
}

fn message_len(sizes: &[usize]) -> usize {
    sizes.iter().map(|s| s + 1).sum()
}

/// The exact reduction: every slot's total (`None` where no rank contributed), the single
/// process's bits, on every rank. Every rank calls it, with or without contributions.
pub fn exact<C: Communicator + ?Sized>(
    comm: &mut C,
    own: &Contributions,
    sizes: &[usize],
) -> Result<Vec<Option<Vec<f32>>>, CommError> {
    let (rank, world) = (comm.rank(), comm.world());
    let len = message_len(sizes);
    let mut sums = if rank == 0 { vec![None; sizes.len()] } else { decode(&comm.recv(rank - 1, len)?, sizes) };
    for (sum, contributions) in sums.iter_mut().zip(&own.slots) {
        for c in contributions {
            add_into(sum, c);
        }
    }
    let mut msg = encode(&sums, sizes);
    if rank + 1 < world {
        comm.send(rank + 1, &msg)?;
    }
    comm.broadcast(world - 1, &mut msg)?;
    Ok(decode(&msg, sizes))
}

/// The fast reduction: each rank's own sums, then one all-reduce of them (and of the presence
/// flags). Identical across ranks, within float tolerance of [`exact`].
pub fn fast<C: Communicator + ?Sized>(
    comm: &mut C,
    own: &Contributions,
    sizes: &[usize],
) -> Result<Vec<Option<Vec<f32>>>, CommError> {
    let mut sums = vec![None; sizes.len()];
    for (sum, contributions) in sums.iter_mut().zip(&own.slots) {
        for c in contributions {
            add_into(sum, c);
        }
    }
    let mut msg = encode(&sums, sizes);
    comm.all_reduce_sum(&mut msg)?;
    Ok(decode(&msg, sizes))
}

/// An f64 as its bits in two f32 slots (moved, never added).
fn split_f64(x: f64) -> [f32; 2] {
    let b = x.to_bits();
    [f32::from_bits((b >> 32) as u32), f32::from_bits(b as u32)]
}

/// The f64 of [`split_f64`]'s two slots.
fn join_f64(m: &[f32]) -> f64 {
    f64::from_bits((u64::from(m[0].to_bits()) << 32) | u64::from(m[1].to_bits()))
}

/// Every rank's `own` values, concatenated in rank order, on every rank; `counts[r]` is how many rank
/// r has (every rank knows them). The f64s travel as their bits.
pub fn gather_f64<C: Communicator + ?Sized>(
    comm: &mut C,
    own: &[f64],
    counts: &[usize],
) -> Result<Vec<f64>, CommError> {
    let mut all = Vec::with_capacity(counts.iter().sum());
    for (r, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let mut msg: Vec<f32> =
            if r == comm.rank() { own.iter().flat_map(|&x| split_f64(x)).collect() } else { vec![0.0; 2 * n] };
        comm.broadcast(r, &mut msg)?;
        all.extend(msg.chunks_exact(2).map(join_f64));
    }
    Ok(all)
}

/// The sum of every rank's `own` values in rank order, from 0, as one process sums them in f64
/// (`loss_sum += x`), on every rank. The f64s travel as their bits in two f32 slots each.
pub fn exact_sum_f64<C: Communicator + ?Sized>(comm: &mut C, own: &[f64]) -> Result<f64, CommError> {
    let (rank, world) = (comm.rank(), comm.world());
    let mut sum = if rank == 0 { 0.0 } else { join_f64(&comm.recv(rank - 1, 2)?) };
    for x in own {
        sum += x;
    }
    let mut msg = split_f64(sum);
    if rank + 1 < world {
        comm.send(rank + 1, &msg)?;
    }
    comm.broadcast(world - 1, &mut msg)?;
    Ok(join_f64(&msg))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::distributed::plan::block;
    use crate::distributed::thread_comm::{ThreadComm, on_ranks};

    /// A step's contributions: `micro` micro-batches, each 1 to 3 contributions to some of 3 slots.
    fn step(micro: usize, sizes: &[usize]) -> Vec<Vec<(usize, Vec<f32>)>> {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        (0..micro)
            .map(|_| {
                (0..1 + next() as usize % 3)
                    .map(|_| {
                        let slot = next() as usize % sizes.len();
                        // Values of mixed magnitude, so that the order of the additions shows in the bits.
                        let v = (0..sizes[slot])
                            .map(|_| (next() % 2001) as f32 * 10f32.powi((next() % 7) as i32 - 3))
                            .collect();
                        (slot, v)
                    })
                    .collect()
            })
            .collect()
    }

    fn run(
        world: usize,
        micro: usize,
        sizes: &[usize],
        reduce: fn(&mut ThreadComm, &Contributions, &[usize]) -> Result<Vec<Option<Vec<f32>>>, CommError>,
    ) -> (Vec<Vec<Option<Vec<f32>>>>, Vec<Option<Vec<f32>>>) {
        let all = step(micro, sizes);
        // One process: every contribution in order.
        let mut single = vec![None; sizes.len()];
        for mb in &all {
            for (slot, v) in mb {
                add_into(&mut single[*slot], v);
            }
        }
        let sizes = sizes.to_vec();
        let ranks = on_ranks(ThreadComm::group(world, Duration::from_secs(10)), move |mut comm| {
            let mut own = Contributions::new(sizes.len());
            for mb in &all[block(micro, world, comm.rank())] {
                for (slot, v) in mb {
                    own.push(*slot, v.clone());
                }
            }
            reduce(&mut comm, &own, &sizes).unwrap()
        });
        (ranks, single)
    }

    fn bits(v: &[Option<Vec<f32>>]) -> Vec<Option<Vec<u32>>> {
        v.iter().map(|s| s.as_ref().map(|x| x.iter().map(|f| f.to_bits()).collect())).collect()
    }

    /// Exact: the single process's bits on every rank, for every world size, uneven blocks and
    /// ranks without micro-batches included.
    #[test]
    fn exact_chain_gives_the_single_process_bits() {
        let sizes = [7, 1, 33];
        for (world, micro) in [(1, 5), (2, 5), (3, 2), (3, 7), (4, 9), (5, 3)] {
            let (ranks, single) = run(world, micro, &sizes, exact::<ThreadComm>);
            for (r, got) in ranks.iter().enumerate() {
                assert_eq!(bits(got), bits(&single), "world {world}, {micro} micro-batches, rank {r}");
            }
        }
    }

    /// Fast: identical across ranks, within float tolerance of the single process.
    #[test]
    fn fast_all_reduce_is_identical_across_ranks_and_close() {
        let sizes = [7, 1, 33];
        let (ranks, single) = run(3, 7, &sizes, fast::<ThreadComm>);
        for got in &ranks {
            assert_eq!(bits(got), bits(&ranks[0]));
        }
        // The data is such that the order of the additions shows: the exact chain's bits are earned.
        assert_ne!(bits(&ranks[0]), bits(&single), "the order of the additions does not show in these sums");
        for (a, b) in ranks[0].iter().zip(&single) {
            let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{x} vs {y}");
            }
        }
    }

    /// A rank that dies makes the others fail within the timeout, not hang.
    #[test]
    fn gather_puts_every_ranks_values_in_rank_order_bit_for_bit() {
        // Rank 1 has none; the values need all of f64's bits.
        let counts = [2usize, 0, 3];
        let got = on_ranks(ThreadComm::group(3, Duration::from_secs(10)), move |mut c| {
            let first: usize = counts[..c.rank()].iter().sum();
            let own: Vec<f64> = (0..counts[c.rank()]).map(|i| 1.0 / (first + i + 3) as f64).collect();
            gather_f64(&mut c, &own, &counts).unwrap()
        });
        let want: Vec<u64> = (0..5).map(|i| (1.0 / (i + 3) as f64).to_bits()).collect();
        for g in got {
            assert_eq!(g.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want);
        }
    }

    #[test]
    fn a_dead_rank_is_an_error_on_the_others() {
        let mut comms = ThreadComm::group(3, Duration::from_millis(300));
        drop(comms.remove(1));
        let results = on_ranks(comms, |mut comm| {
            let t = std::time::Instant::now();
            let r = exact(&mut comm, &Contributions::new(1), &[4]);
            (r.map(|_| ()), t.elapsed())
        });
        for (r, took) in results {
            let e = r.unwrap_err();
            assert!(matches!(e, CommError::PeerGone { .. } | CommError::Timeout { .. }), "{e}");
            assert!(took < Duration::from_secs(5), "took {took:?}");
        }
    }
}
