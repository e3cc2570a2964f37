//! Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624), as the rewrite
//! stage uses them. Checksums and data are handled as big-endian 16-bit words, as on the wire.

/// Ones'-complement sum of `bytes` (even length) added to `sum`, unfolded.
#[inline(always)]
pub fn sum_words(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// Folds a 32-bit ones'-complement sum to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum after replacing `old` by `new` in the covered data:
/// HC' = ~(~HC + ~m + m') (RFC 1624, eqn. 3). `N` is even (addresses, ports); the fixed size lets
/// the BPF build unroll the loop with no bounds checks.
#[inline(always)]
pub fn replace<const N: usize>(check: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    let mut sum = !check as u32;
    let mut i = 0;
    while i + 1 < N {
        sum += !u16::from_be_bytes([old[i], old[i + 1]]) as u32;
        sum += u16::from_be_bytes([new[i], new[i + 1]]) as u32;
        i += 2;
    }
    !fold(sum)
}

/// The same for a single 16-bit field (a port).
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    replace(check, &old.to_be_bytes(), &new.to_be_bytes())
}

/// The checksum after replacing the 32-bit word `old` by `new`, all three exactly as loaded from
/// packet memory (native order): ones'-complement sums are byte-order independent (RFC 1071
/// §2(B)), so no swapping is needed, and whole words keep the BPF program short.
#[inline(always)]
pub fn update32(check: u16, old: u32, new: u32) -> u16 {
    let mut sum = (!check) as u64;
    sum += (!old) as u64;
    sum += new as u64;
    !fold64(sum)
}

/// The same for a 16-bit word as loaded from packet memory (native order).
#[inline(always)]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u64 + (!old) as u64 + new as u64;
    !fold64(sum)
}

/// Folds a 64-bit ones'-complement sum to 16 bits.
#[inline(always)]
pub fn fold64(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    fold(sum as u32)
}

/// A full checksum over `bytes` (used by tests and by header rebuilds).
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = sum_words(0, bytes);
    if bytes.len() % 2 == 1 {
        sum += (bytes[bytes.len() - 1] as u32) << 8;
    }
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 header (RFC 1071 example style) with its checksum field zeroed.
    fn header(dst: [u8; 4]) -> [u8; 20] {
        let mut h = [0x45, 0, 0, 0x3c, 0x1c, 0x46, 0x40, 0, 0x40, 0x06, 0, 0, 0xac, 0x10, 0x0a, 0x63, 0, 0, 0, 0];
        h[16..20].copy_from_slice(&dst);
        h
    }

    #[test]
    fn incremental_update_equals_recomputation() {
        let before = header([0xac, 0x10, 0x0a, 0x0c]);
        let after = header([10, 1, 0, 5]);
        let check = checksum(&before);
        let (old, new): ([u8; 4], [u8; 4]) = (before[16..20].try_into().unwrap(), after[16..20].try_into().unwrap());
        assert_eq!(replace(check, &old, &new), checksum(&after));
    }

    #[test]
    fn port_update_equals_recomputation() {
        let mut data = [0u8; 8];
        data[2..4].copy_from_slice(&80u16.to_be_bytes());
        let check = checksum(&data);
        data[2..4].copy_from_slice(&31005u16.to_be_bytes());
        assert_eq!(replace16(check, 80, 31005), checksum(&data));
    }

    /// Loads as the BPF program does: native-order words straight from the bytes.
    fn native16(b: &[u8]) -> u16 {
        u16::from_ne_bytes([b[0], b[1]])
    }

    fn native32(b: &[u8]) -> u32 {
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn native_word_updates_equal_recomputation() {
        let before = header([0xac, 0x10, 0x0a, 0x0c]);
        let mut after = header([10, 1, 0, 5]);
        after[8] = 0x3f; // TTL 64 → 63
        let mut check_bytes = checksum(&before).to_be_bytes();
        let mut check = native16(&check_bytes);
        check = update32(check, native32(&before[16..20]), native32(&after[16..20]));
        check = update16(check, native16(&before[8..10]), native16(&after[8..10]));
        check_bytes = check.to_ne_bytes();
        assert_eq!(u16::from_be_bytes(check_bytes), checksum(&after));
    }

    #[test]
    fn a_header_with_its_checksum_sums_to_zero() {
        let mut h = header([1, 2, 3, 4]);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&h), 0);
    }
}
