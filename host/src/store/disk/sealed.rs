//! Every value on disk carries a checksum of its namespace, key and bytes.
//!
//! redb keeps its own structure consistent (a torn commit is rolled back,
//! a damaged page header fails the read), but it does not check the bytes
//! of a value: a flipped byte in one would be served as data. So each value
//! is stored behind a CRC-32 (crc32fast: hardware-accelerated, a few GB/s)
//! of the namespace, the key and the value, checked on every read. A value
//! whose checksum does not hold is not served: its read, or a write that
//! depends on it (`increment`, `compare-and-swap`), gets `error: state
//! unavailable`, and it is counted and logged. `set` and `delete` replace
//! it. Covering the key too means a value copied under another key (or
//! another plugin's) does not pass either. What it does not see: damage to
//! a key itself (the key then reads as absent, or as another key).

use std::sync::LazyLock;

use crate::telemetry::{Admit, LogBudget};

/// The checksum's bytes, before the value.
const CHECKSUM_BYTES: usize = 4;

/// The format of the entries' values: sealed (this module). A store
/// without it (written before values were sealed) is sealed once, when it
/// is opened.
pub const FORMAT: u32 = 2;

/// A value whose checksum does not hold: the bytes stored in its place.
pub struct Damaged<'a>(pub &'a [u8]);

/// `value`, stored as the value of `key` in `ns`.
pub fn seal(ns: &str, key: &str, value: &[u8]) -> Vec<u8> {
    let mut sealed = Vec::with_capacity(CHECKSUM_BYTES + value.len());
    sealed.extend_from_slice(&checksum(ns, key, value).to_le_bytes());
    sealed.extend_from_slice(value);
    sealed
}

/// The value stored as `sealed` for `key` in `ns`, if its checksum holds;
/// else it is reported (see [`report`]) and returned as [`Damaged`].
pub fn open<'a>(ns: &str, key: &str, sealed: &'a [u8]) -> Result<&'a [u8], Damaged<'a>> {
    let Some((sum, value)) = sealed.split_first_chunk::<CHECKSUM_BYTES>() else {
        report(ns, key);
        return Err(Damaged(sealed));
    };
    if u32::from_le_bytes(*sum) == checksum(ns, key, value) {
        Ok(value)
    } else {
        report(ns, key);
        Err(Damaged(value))
    }
}

fn checksum(ns: &str, key: &str, value: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    // Lengths first, so that ("ab", "c") and ("a", "bc") differ.
    for part in [ns.as_bytes(), key.as_bytes()] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.update(value);
    hasher.finalize()
}

/// Counts a damaged value, and logs it (at most a few lines a second: a
/// damaged store read in a loop must not flood the log).
fn report(ns: &str, key: &str) {
    static LOG: LazyLock<LogBudget> = LazyLock::new(|| LogBudget::new("damaged_values", 5));
    crate::telemetry::state_value_damaged();
    if let Admit::Write { unwritten_before } = LOG.admit() {
        tracing::error!(
            plugin = ns,
            key,
            unwritten_before,
            "a value of the state store is damaged (its checksum does not hold): \
             reads of it get `state unavailable` until it is set or deleted"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_where_it_was_sealed_and_undamaged() {
        let sealed = seal("onoff", "state", b"on");
        assert_eq!(open("onoff", "state", &sealed).ok(), Some(&b"on"[..]));
        assert!(open("onoff", "other", &sealed).is_err());
        assert!(open("relay", "state", &sealed).is_err());
        for at in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[at] ^= 0x20;
            assert!(open("onoff", "state", &flipped).is_err(), "byte {at}");
        }
        assert!(open("onoff", "state", &sealed[..3]).is_err());
        let empty = seal("p", "k", b"");
        assert_eq!(open("p", "k", &empty).ok(), Some(&b""[..]));
    }
}
