//! Zeroing and comparing without memset/memcmp. A zero-initialised struct or array in the BPF
//! build becomes a call to a byte-at-a-time memset loop (tens of instructions per byte, measured
//! on the hot path); volatile word stores cannot be merged back into one. Comparing arrays with
//! `==` likewise becomes a byte loop (or a memcmp call BPF does not have).

/// Zeroes 16 bytes (an address field) with four 32-bit stores.
#[inline(always)]
pub fn zero16(bytes: &mut [u8; 16]) {
    let words = bytes.as_mut_ptr().cast::<u32>();
    // SAFETY: 16 writable bytes; unaligned 32-bit stores are allowed for BPF on the targets this
    // runs on (the verifier does not enforce strict alignment there).
    unsafe {
        words.write_volatile(0);
        words.add(1).write_volatile(0);
        words.add(2).write_volatile(0);
        words.add(3).write_volatile(0);
    }
}

/// Whether two 16-byte address fields are equal, with two 64-bit loads each.
#[inline(always)]
pub fn eq16(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (a, b) = (a.as_ptr().cast::<u64>(), b.as_ptr().cast::<u64>());
    // SAFETY: 16 readable bytes each; unaligned loads are allowed for BPF on the targets this runs
    // on (as for the stores in `zero16`).
    unsafe { a.read_unaligned() == b.read_unaligned() && a.add(1).read_unaligned() == b.add(1).read_unaligned() }
}
