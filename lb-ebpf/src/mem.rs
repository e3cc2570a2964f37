//! Zeroing without memset. A zero-initialised struct or array in the BPF build becomes a call
//! to a byte-at-a-time memset loop (tens of instructions per byte, measured on the hot path);
//! volatile word stores cannot be merged back into one.

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
