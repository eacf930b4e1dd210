//! The named random streams every draw comes from: one seed in the config fans out into them.
//!
//! A stream's seed mixes `(seed, stream id, parts…)` with splitmix64, so each draw depends only on
//! what it is for and where it happens (epoch, step), never on what ran before: a resumed run
//! repeats the uninterrupted one. The ids are those the runs have always used, so seeds and runs
//! made before the streams were named keep their numbers. (The data loader derives its order and
//! augmentation streams the same way in `dmlp-datasets`, which cannot depend on this crate.)

/// What a random draw is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedStream {
    /// The classifier's mixup λ and permutation, per `(epoch, step)`.
    Mixup,
    /// The classifier's dropout masks, per `(epoch, step)`.
    Dropout,
    /// PriorsNet's initial weights.
    PriorsNetInit,
    /// PriorsNet's sampler: each epoch's subset and order.
    PriorsNetSampler,
    /// PriorsNet's background locations, per `(epoch, step)`.
    PriorsNetBackground,
    /// PriorsNet's dropout masks, per `(epoch, step)`.
    PriorsNetDropout,
    /// GeoNet's initial weights.
    GeoNetInit,
    /// GeoNet's dropout masks, per `(epoch, step)`.
    GeoNetDropout,
}

impl SeedStream {
    /// The stream's id in the seed mix (kept from the numbered constants it replaces; two streams
    /// may share an id when they never serve the same model).
    pub fn id(self) -> u64 {
        match self {
            SeedStream::PriorsNetInit => 1,
            SeedStream::GeoNetInit => 2,
            SeedStream::Mixup | SeedStream::PriorsNetSampler => 11,
            SeedStream::Dropout | SeedStream::PriorsNetBackground => 12,
            SeedStream::PriorsNetDropout => 13,
            SeedStream::GeoNetDropout => 21,
        }
    }

    /// The seed of this stream of `seed` at `parts` (usually `[epoch, step]`).
    pub fn seed(self, seed: u64, parts: &[u64]) -> u64 {
        let mut all = Vec::with_capacity(parts.len() + 2);
        all.extend([seed, self.id()]);
        all.extend_from_slice(parts);
        stream_seed(&all)
    }
}

/// A stable mix of seed parts (splitmix64).
pub fn stream_seed(parts: &[u64]) -> u64 {
    let mut state = 0x243F_6A88_85A3_08D3u64;
    for part in parts {
        state = state.wrapping_add(*part).wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        state = z ^ (z >> 31);
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_seed_is_the_mix_of_seed_id_and_parts() {
        assert_eq!(SeedStream::Mixup.seed(37, &[2, 5]), stream_seed(&[37, 11, 2, 5]));
        assert_eq!(SeedStream::GeoNetInit.seed(37, &[]), stream_seed(&[37, 2]));
        assert_ne!(SeedStream::Mixup.seed(37, &[2, 5]), SeedStream::Dropout.seed(37, &[2, 5]));
        assert_ne!(stream_seed(&[1, 2]), stream_seed(&[2, 1]));
    }
}
