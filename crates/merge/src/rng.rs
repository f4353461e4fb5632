//! A counter-based random number generator: the value for element i of tensor T of model m is a hash
//! of (seed, T, m, i), so random merges give the same result whatever the number of threads or the
//! order chunks run in.
//!
//! mergekit draws from torch's global generator, whose stream depends on the order tensors are
//! processed; its DARE/DELLA masks cannot be reproduced outside torch, so lora's random methods are
//! tested by their algebraic properties, not against mergekit's outputs.

/// SplitMix64's finaliser (Steele, Lea, Flood 2014): a bijective mix with full avalanche.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stream key for one (seed, tensor, model).
pub fn stream(seed: u64, tensor: &str, model: usize) -> u64 {
    // FNV-1a over the name, then mixed with the seed and model index.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tensor.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    mix64(h ^ mix64(seed ^ mix64(model as u64 + 1)))
}

/// A uniform value in [0, 1) for element `index` of `stream`, with 24 bits (exact in f32).
pub fn uniform(stream: u64, index: u64) -> f32 {
    let bits = mix64(stream.wrapping_add(index.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    (bits >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// A Bernoulli draw with probability `p` of `true`.
pub fn bernoulli(stream: u64, index: u64, p: f32) -> bool {
    uniform(stream, index) < p
}
