//! The stable mapping from a key to its vShard.
//!
//! **The hash is part of the on-disk and on-wire contract**: every node, every client and
//! every version must map a key to the same vShard, or data becomes unreachable. It is
//! defined here, in full, and pinned by test vectors:
//!
//! ```text
//! h      = FNV-1a-64(key)            offset 0xcbf29ce484222325, prime 0x100000001b3
//! h      = SplitMix64-finalise(h)    see `rng::mix64`
//! vShard = h >> (64 - log2(vshard_count))
//! ```
//!
//! FNV-1a is simple enough to re-implement in any client language; the SplitMix64 finaliser
//! repairs its weak high bits so consecutive keys spread evenly. Taking the top bits means a
//! cluster with twice the vShards splits each vShard into exactly two.

use thiserror::Error;

use crate::constants::{VSHARD_COUNT_DEFAULT, VSHARD_COUNT_MAX};
use crate::ids::VShardId;
use crate::rng::mix64;

/// An invalid vShard count.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum VShardCountError {
    /// The count is zero or not a power of two.
    #[error("vShard count {0} is not a power of two (try 256, 1024 or 4096)")]
    NotPowerOfTwo(u32),
    /// The count exceeds the supported maximum.
    #[error("vShard count {count} exceeds the maximum {max}")]
    TooLarge { count: u32, max: u32 },
}

/// Maps keys to vShards for a cluster with a fixed, power-of-two number of vShards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VShardMap {
    count: u32,
    bits: u32,
}

impl Default for VShardMap {
    fn default() -> Self {
        VShardMap::new(VSHARD_COUNT_DEFAULT).expect("the default count is a valid power of two")
    }
}

impl VShardMap {
    /// A map over `count` vShards; `count` must be a power of two in `1..=VSHARD_COUNT_MAX`.
    pub fn new(count: u32) -> Result<VShardMap, VShardCountError> {
        if !count.is_power_of_two() {
            return Err(VShardCountError::NotPowerOfTwo(count));
        }
        if count > VSHARD_COUNT_MAX {
            return Err(VShardCountError::TooLarge {
                count,
                max: VSHARD_COUNT_MAX,
            });
        }
        Ok(VShardMap {
            count,
            bits: count.trailing_zeros(),
        })
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// The vShard that owns `key`.
    pub fn vshard_of(&self, key: &[u8]) -> VShardId {
        let h = key_hash(key);
        // With one vShard (bits = 0) a shift by 64 would overflow: everything maps to 0.
        let index = if self.bits == 0 {
            0
        } else {
            h >> (64 - self.bits)
        };
        debug_assert!(index < u64::from(self.count));
        VShardId(index as u32)
    }
}

/// The 64-bit key hash described in the module documentation.
pub fn key_hash(key: &[u8]) -> u64 {
    mix64(fnv1a64(key))
}

/// FNV-1a, 64 bits (also the cluster id of a CA certificate and the digest that counts a
/// certificate's connections).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(FNV_OFFSET, |h, &byte| {
        (h ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned vectors, computed by an independent implementation of the documented
    /// algorithm (Python). If this test fails, the mapping changed and every existing cluster
    /// would lose track of its data. Never update these values; fix the code instead.
    #[test]
    fn key_to_vshard_mapping_is_pinned() {
        let map = VShardMap::default();
        let cases: [(&[u8], u32); 6] = [
            (b"", 782),
            (b"a", 380),
            (b"user:1", 711),
            (b"user:2", 796),
            (b"order/2026/11/26", 858),
            (&[0xff, 0x00, 0x7f], 459),
        ];
        for (key, expected) in cases {
            assert_eq!(map.vshard_of(key), VShardId(expected), "key {key:?}");
        }
        assert_eq!(key_hash(b"user:1"), 0xb1cb_d658_59d0_0aff);
    }

    #[test]
    fn doubling_the_count_splits_each_vshard_in_two() {
        let small = VShardMap::new(256).unwrap();
        let large = VShardMap::new(512).unwrap();
        for i in 0..2000u32 {
            let key = i.to_le_bytes();
            assert_eq!(large.vshard_of(&key).0 / 2, small.vshard_of(&key).0);
        }
    }

    #[test]
    fn keys_spread_evenly() {
        let map = VShardMap::new(64).unwrap();
        let mut counts = [0u32; 64];
        for i in 0..64_000u32 {
            counts[map.vshard_of(format!("key{i}").as_bytes()).0 as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 850 && *max < 1150, "min {min} max {max}");
    }

    #[test]
    fn invalid_counts_are_typed_errors() {
        assert_eq!(VShardMap::new(0), Err(VShardCountError::NotPowerOfTwo(0)));
        assert_eq!(
            VShardMap::new(1000),
            Err(VShardCountError::NotPowerOfTwo(1000))
        );
        assert!(matches!(
            VShardMap::new(1 << 21),
            Err(VShardCountError::TooLarge { .. })
        ));
        assert_eq!(VShardMap::new(1).unwrap().vshard_of(b"x"), VShardId(0));
    }
}
