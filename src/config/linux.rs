//! The Linux boot request: kernel, initrd, command line and console, as the user gave them, and
//! the command line the kernel gets on a given host. Booting it is [`crate::linux`]'s work.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Command line used when `--cmdline` is not given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 earlyprintk=serial reboot=k panic=1";
/// Added on hosts without hardware virtualisation, where KVM emulates guest ring-0 code: it
/// loops on `xrstor` during the kernel's FPU set-up (`noxsave`), and stops on POPCNT and
/// CLAC/STAC, which the kernel patches in unless told the CPU lacks them (hiding them in
/// `KVM_SET_CPUID2` does not reach the guest there).
pub const NO_HW_VIRT_CMDLINE: &[&str] = &["noxsave", "clearcpuid=popcnt,smap"];

/// What to boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinuxConfig {
    /// bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    /// Initial ramdisk (e.g. a gzip'd newc cpio).
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line; [`DEFAULT_CMDLINE`] when `None`.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Write the serial console here instead of stdout.
    #[serde(default)]
    pub console: Option<PathBuf>,
}

impl LinuxConfig {
    /// The command line the kernel gets on this host: the given or default one, plus
    /// each of [`NO_HW_VIRT_CMDLINE`] not already there when the host has no hardware
    /// virtualisation.
    pub fn effective_cmdline(&self, hardware_virt: bool) -> String {
        let mut c = self
            .cmdline
            .clone()
            .unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
        if !hardware_virt {
            for extra in NO_HW_VIRT_CMDLINE {
                if !c.split_whitespace().any(|w| w == *extra) {
                    c.push(' ');
                    c.push_str(extra);
                }
            }
        }
        c
    }
}
