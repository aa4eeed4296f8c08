//! A library target lets `userspace` name this crate as a build-dependency, so
//! cargo rebuilds the embedded objects when they change. It holds only what every
//! program object repeats.
#![no_std]

/// The panic handler and license section every program object needs, once per
/// binary. The handler is unreachable by construction: nothing in the programs can
/// panic, and the verifier would reject a program that could (the loop has no exit).
#[macro_export]
macro_rules! program_object {
    () => {
        #[cfg(not(test))]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
    };
}
