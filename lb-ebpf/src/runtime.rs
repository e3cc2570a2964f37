//! What every BPF object of this crate needs once: a panic handler (the verifier proves panics
//! unreachable) and the GPL license the helpers it calls require.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
