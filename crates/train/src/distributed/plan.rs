//! One batch plan for every world size: each step's micro-batches, in global order, split into
//! contiguous blocks, one per rank in rank order. Blocks differ by at most one micro-batch (the
//! first ranks take the extra ones), and a rank may have none.

use std::ops::Range;

/// The global indices of the micro-batches rank `rank` of `world` takes from a step of
/// `micro_batches`.
pub fn block(micro_batches: usize, world: usize, rank: usize) -> Range<usize> {
    assert!(world > 0 && rank < world, "rank {rank} of a world of {world}");
    let (per, extra) = (micro_batches / world, micro_batches % world);
    let start = rank * per + rank.min(extra);
    let len = per + usize::from(rank < extra);
    start..start + len
}

/// For each rank of `world`, the sum of `size_of(i)` over its block of `items`: what each rank
/// sends when it shares per-item values (every rank can compute it).
pub fn block_sums(items: usize, world: usize, size_of: impl Fn(usize) -> usize) -> Vec<usize> {
    (0..world).map(|r| block(items, world, r).map(&size_of).sum()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocks cover every micro-batch once, in order, at most one apart in size.
    #[test]
    fn blocks_tile_the_step_in_rank_order() {
        for m in 0..12 {
            for world in 1..6 {
                let blocks: Vec<_> = (0..world).map(|r| block(m, world, r)).collect();
                let flat: Vec<usize> = blocks.iter().flat_map(Clone::clone).collect();
                assert_eq!(flat, (0..m).collect::<Vec<_>>(), "{m} over {world}");
                let (lo, hi) = (blocks.iter().map(|b| b.len()).min(), blocks.iter().map(|b| b.len()).max());
                assert!(hi.unwrap() - lo.unwrap() <= 1, "{m} over {world}: {blocks:?}");
            }
        }
        assert_eq!(block(2, 3, 2), 2..2, "the last rank of 3 has none of 2 micro-batches");
        assert_eq!(block(5, 2, 0), 0..3);
    }
}
