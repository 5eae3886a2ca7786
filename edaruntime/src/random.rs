//! Randomness for event ids, trace ids and retry jitter: one xoshiro256++ generator per thread,
//! seeded once from the operating system. Asking the OS for every id (as `Uuid::now_v7` does)
//! cost a system call per published event, a third of the publisher's own work.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    static STATE: Cell<[u64; 4]> = Cell::new(seed());
}

/// 256 bits from the OS; should it fail, the time and the thread mixed through SplitMix64 (ids
/// then stay unique in practice: the millisecond is part of them too).
fn seed() -> [u64; 4] {
    let mut bytes = [0u8; 32];
    let mut state = if getrandom::fill(&mut bytes).is_ok() {
        [0, 1, 2, 3].map(|i| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(word)
        })
    } else {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64);
        let local = 0u8;
        let mut x = nanos ^ (&local as *const u8 as u64).rotate_left(32);
        [0; 4].map(|_| splitmix64(&mut x))
    };
    if state == [0; 4] {
        state[0] = 1; // the one state xoshiro never leaves
    }
    state
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64 random bits (xoshiro256++).
pub(crate) fn next_u64() -> u64 {
    STATE.with(|cell| {
        let mut s = cell.get();
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        cell.set(s);
        result
    })
}

/// A uniform number in `[0, 1)`.
pub(crate) fn unit() -> f64 {
    (next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Appends `bytes` random bytes as lowercase hex to `out`.
pub(crate) fn push_hex(out: &mut String, bytes: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes * 2);
    let mut bits = 0u64;
    for i in 0..bytes * 2 {
        if i % 16 == 0 {
            bits = next_u64();
        }
        out.push(char::from(HEX[(bits & 0xf) as usize]));
        bits >>= 4;
    }
}

/// A new event id: a UUID v7 (milliseconds since the epoch, then 74 random bits), hyphenated.
pub(crate) fn uuid_v7() -> String {
    uuid_v7_at(SystemTime::now())
}

/// A UUID v7 for an event of time `now` (one clock read serves the id and the event time).
pub(crate) fn uuid_v7_at(now: SystemTime) -> String {
    let millis = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&next_u64().to_le_bytes());
    random[8..].copy_from_slice(&next_u64().to_le_bytes()[..2]);
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    id.hyphenated()
        .encode_lower(&mut uuid::Uuid::encode_buffer())
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_7_distinct_and_time_ordered_by_millisecond() {
        let a = uuid_v7();
        let b = uuid_v7();
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(&a).map_err(|e| e.to_string());
        assert_eq!(parsed.map(|u| u.get_version_num()), Ok(7), "{a}");
        assert_eq!(a.len(), 36);
        assert!(a[..13] <= b[..13], "{a} then {b}");
    }

    #[test]
    fn units_lie_in_zero_to_one_and_hex_has_its_length() {
        for _ in 0..1000 {
            let u = unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
        let hex = |bytes| {
            let mut out = String::from("x");
            push_hex(&mut out, bytes);
            out
        };
        let h = hex(16);
        assert_eq!(h.len(), 33);
        assert!(h[1..].bytes().all(|c| c.is_ascii_hexdigit()), "{h}");
        assert_ne!(hex(8), hex(8));
    }
}
