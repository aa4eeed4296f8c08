//! The kernel's HZ (jiffies per second), for the drop sampler's window, which the
//! XDP program times in jiffies (`bpf_jiffies64` is inlined; a clock helper is a
//! call on every refused packet). User space cannot read HZ directly (`CLK_TCK` is
//! USER_HZ, always 100), so it comes from the kernel's own configuration:
//! `/proc/config.gz`, else `/boot/config-<release>`. Without either, the sampler
//! uses the largest HZ in use, so a window lasts at least a second and the rate is
//! never exceeded, only under-used.

use std::io::{BufRead, BufReader, Read};
use std::sync::OnceLock;

use airlock_common::FALLBACK_WINDOW_JIFFIES;

/// HZ, looked up once per process.
pub fn kernel_hz() -> u32 {
    static HZ: OnceLock<u32> = OnceLock::new();
    *HZ.get_or_init(|| match configured_hz() {
        Some(hz) => hz,
        None => {
            tracing::debug!(
                "kernel HZ not found in /proc/config.gz or /boot/config-*; drop-sample windows assume HZ={FALLBACK_WINDOW_JIFFIES}"
            );
            FALLBACK_WINDOW_JIFFIES
        }
    })
}

fn configured_hz() -> Option<u32> {
    if let Ok(file) = std::fs::File::open("/proc/config.gz")
        && let Some(hz) = hz_in(flate2::read::GzDecoder::new(file))
    {
        return Some(hz);
    }
    let release = nix::sys::utsname::uname().ok()?;
    let path = format!("/boot/config-{}", release.release().to_string_lossy());
    hz_in(std::fs::File::open(path).ok()?)
}

/// `CONFIG_HZ=N` in a kernel configuration, if it is one HZ can be (the kernel
/// offers 100 to 1000).
fn hz_in(config: impl Read) -> Option<u32> {
    BufReader::new(config)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("CONFIG_HZ=")?.trim().parse().ok())
        .filter(|hz| (24..=1200).contains(hz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_config_hz_and_ignores_its_neighbours() {
        let config =
            "CONFIG_HZ_250=y\n# CONFIG_HZ_1000 is not set\nCONFIG_HZ=250\nCONFIG_HZ_PERIODIC=y\n";
        assert_eq!(hz_in(config.as_bytes()), Some(250));
        assert_eq!(hz_in("CONFIG_HZ_1000=y\n".as_bytes()), None);
        assert_eq!(hz_in("CONFIG_HZ=0\n".as_bytes()), None);
    }

    #[test]
    fn this_kernel_has_a_plausible_hz() {
        assert!((24..=1200).contains(&kernel_hz()));
    }
}
