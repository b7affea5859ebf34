//! Overcommit figures, and their definitions.
//!
//! Per VM ([`VmMemory`], served as `GET /memory/report` and printed at the end of
//! `memvisor run`): configured guest RAM per region and backend, host memory resident behind it,
//! what the balloon took back, KSM sharing, zero pages, swapped pages, hugetlb-backed bytes and
//! uffd faults served.
//!
//! Per host ([`HostReport`], `memvisor report overcommit --all`): every VM registered in the
//! runtime directory (see [`crate::report::registry`]) asked for its [`VmMemory`] over its API
//! socket (by `crate::control::host_report`, which is above this layer), stale entries listed and
//! skipped, against `/proc/meminfo`:
//! - **overcommit ratio** = sum of configured guest RAM / `MemTotal`;
//! - **density** = sum of configured guest RAM / host memory the guests use: their resident
//!   bytes minus what KSM saves ([`HostReport::ksm_saved_bytes`]: the kernel's host-wide
//!   `pages_sharing`, capped by the pages the VMs merged, so exact when only memvisor VMs use
//!   KSM). Per VM, *used* is resident minus what KSM saves inside that VM alone
//!   ([`VmMemory::used_bytes`]).
//!
//! KSM savings of one VM are counted from its own page map: pages merged by KSM
//! (`ksm_merging_pages` of `/proc/PID/ksm_stat`, the kernel's figure) minus the distinct KSM
//! pages they map to (from `/proc/self/pagemap`). A KSM page shared between two VMs is counted
//! as a cost in each of them, so the host-wide figure errs on the side of "used".

use crate::memory::{GuestRam, PagerReport};
use crate::report::mappings::{self, MappingReport};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;

const PAGE: u64 = 4096;

pub use crate::devices::balloon::BalloonFigures;

/// KSM sharing inside one VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KsmFigures {
    /// Pages of this process merged by KSM (`ksm_merging_pages`, the kernel's counter).
    pub merging_pages: u64,
    /// Guest RAM pages that map to a KSM page (from the page map; `None` without
    /// `/proc/kpageflags`).
    pub guest_ksm_pages: Option<u64>,
    /// Distinct KSM pages those guest pages map to (`None` when frame numbers are hidden).
    pub distinct_pages: Option<u64>,
    /// Bytes KSM saves inside this VM: (guest KSM pages - distinct KSM pages) x 4 KiB; 0 when
    /// that cannot be known.
    pub saved_bytes: u64,
    /// The kernel's `ksm_process_profit` (bytes saved minus KSM's own metadata), if shown.
    pub kernel_profit_bytes: Option<i64>,
    /// Zero pages KSM merged (`ksm_zero_pages`), if shown.
    pub zero_pages: Option<u64>,
    /// Why the per-process figures are missing, if they are.
    pub note: Option<String>,
}

/// One region in the overcommit report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionMemory {
    /// Region index.
    pub index: usize,
    /// Backend name.
    pub backend: String,
    /// Configured bytes.
    pub configured_bytes: u64,
    /// Host page size.
    pub page_size: u64,
    /// Host bytes resident.
    pub resident_bytes: u64,
    /// Resident bytes on hugetlb pages.
    pub hugetlb_bytes: u64,
    /// Bytes swapped out.
    pub swapped_bytes: u64,
    /// Bytes mapped to the shared zero page (`None` without `/proc/kpageflags`).
    pub zero_page_bytes: Option<u64>,
    /// Bytes mapped to KSM pages (`None` without `/proc/kpageflags`).
    pub ksm_bytes: Option<u64>,
    /// Marked `MADV_MERGEABLE`.
    pub mergeable: bool,
    /// uffd faults served (uffd regions with the internal handler).
    pub uffd_faults: Option<u64>,
}

/// The overcommit figures of one VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmMemory {
    /// Process id of the VMM.
    pub pid: u32,
    /// Configured guest RAM.
    pub configured_bytes: u64,
    /// Host bytes resident behind guest RAM.
    pub resident_bytes: u64,
    /// Host bytes this guest costs: resident minus KSM savings inside it.
    pub used_bytes: u64,
    /// Bytes the guest has handed to the balloon (0 without a balloon).
    pub ballooned_bytes: u64,
    /// Balloon target and actual, when there is a balloon.
    pub balloon: Option<BalloonFigures>,
    /// Resident bytes on hugetlb pages.
    pub hugetlb_bytes: u64,
    /// Bytes swapped out.
    pub swapped_bytes: u64,
    /// Bytes mapped to the zero page (`None` without `/proc/kpageflags`).
    pub zero_page_bytes: Option<u64>,
    /// KSM sharing.
    pub ksm: KsmFigures,
    /// uffd faults served over all uffd regions.
    pub uffd_faults: u64,
    /// Whether host frame numbers were visible for the page-map figures.
    pub pfns_visible: bool,
    /// Major page faults of the VMM process (swap-ins of guest pages are among them).
    #[serde(default)]
    pub major_faults: u64,
    /// Guest RAM written in the last working-set window (`None` while nobody asked for the
    /// estimate: see `crate::vmm::working_set`).
    #[serde(default)]
    pub working_set_bytes: Option<u64>,
    /// Regions.
    pub regions: Vec<RegionMemory>,
}

impl VmMemory {
    /// Reads the figures of the VM whose guest RAM is `ram` (in this process).
    pub fn read(ram: &GuestRam, balloon: Option<BalloonFigures>) -> VmMemory {
        let pid = std::process::id();
        let map = mappings::map(ram, None).ok();
        Self::from_parts(ram, balloon, map.as_ref(), ksm::process_stats(pid))
    }

    fn from_parts(
        ram: &GuestRam,
        balloon: Option<BalloonFigures>,
        map: Option<&MappingReport>,
        ksm_stats: Result<ksm::ProcessKsmStats, ksm::KsmError>,
    ) -> VmMemory {
        let resident = ram.resident_bytes();
        let kinds_known = map.is_some_and(|m| m.note.is_none() && m.pfns_visible);
        let mut ksm_hpas: HashSet<u64> = HashSet::new();
        let mut guest_ksm_pages = 0u64;
        let mut regions = Vec::new();
        for (r, res) in ram.regions().iter().zip(resident) {
            let rm = map.and_then(|m| m.regions.iter().find(|x| x.region == r.index));
            if let Some(rm) = rm {
                for run in rm
                    .runs
                    .iter()
                    .filter(|x| x.flags.iter().any(|f| f == "ksm"))
                {
                    guest_ksm_pages += run.len / PAGE;
                    if let Some(h) = run.hpa {
                        ksm_hpas.extend((0..run.len / PAGE).map(|i| h + i * PAGE));
                    }
                }
            }
            let uffd_faults = match r.pager.as_ref().map(|p| p.report()) {
                Some(PagerReport::Internal(s)) => Some(s.faults),
                _ => None,
            };
            regions.push(RegionMemory {
                index: r.index,
                backend: r.config.backend.name().into(),
                configured_bytes: r.config.size,
                page_size: r.page_size,
                resident_bytes: res,
                hugetlb_bytes: if r.page_size > PAGE { res } else { 0 },
                swapped_bytes: rm.map(|m| m.totals.swapped).unwrap_or(0),
                zero_page_bytes: rm.filter(|_| kinds_known).map(|m| m.totals.zero),
                ksm_bytes: rm.filter(|_| kinds_known).map(|m| m.totals.ksm),
                mergeable: r.config.mergeable,
                uffd_faults,
            });
        }
        let ksm = match ksm_stats {
            Ok(s) => {
                let distinct = kinds_known.then_some(ksm_hpas.len() as u64);
                let guest = kinds_known.then_some(guest_ksm_pages);
                KsmFigures {
                    merging_pages: s.merging_pages,
                    guest_ksm_pages: guest,
                    distinct_pages: distinct,
                    saved_bytes: match (guest, distinct) {
                        (Some(g), Some(d)) => g.saturating_sub(d) * PAGE,
                        _ => 0,
                    },
                    kernel_profit_bytes: s.process_profit,
                    zero_pages: s.zero_pages,
                    note: (!kinds_known).then(|| {
                        "KSM pages per guest page need root (/proc/kpageflags and frame numbers); savings not counted".to_string()
                    }),
                }
            }
            Err(e) => KsmFigures {
                note: Some(e.to_string()),
                ..KsmFigures::default()
            },
        };
        let resident_bytes: u64 = regions.iter().map(|r| r.resident_bytes).sum();
        VmMemory {
            pid: std::process::id(),
            configured_bytes: ram.size(),
            resident_bytes,
            used_bytes: resident_bytes.saturating_sub(ksm.saved_bytes),
            ballooned_bytes: balloon.map(|b| b.actual_bytes).unwrap_or(0),
            balloon,
            hugetlb_bytes: regions.iter().map(|r| r.hugetlb_bytes).sum(),
            swapped_bytes: regions.iter().map(|r| r.swapped_bytes).sum(),
            zero_page_bytes: regions
                .iter()
                .map(|r| r.zero_page_bytes)
                .sum::<Option<u64>>(),
            uffd_faults: regions.iter().filter_map(|r| r.uffd_faults).sum(),
            pfns_visible: map.is_some_and(|m| m.pfns_visible),
            major_faults: major_faults(),
            working_set_bytes: None,
            ksm,
            regions,
        }
    }

    /// Configured over used (how many times over this guest's RAM is "sold"); `None` when it
    /// uses nothing.
    pub fn density(&self) -> Option<f64> {
        ratio(self.configured_bytes, self.used_bytes)
    }

    /// Readable lines (indented by two), as `memvisor run` prints them.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let density = self
            .density()
            .map(|d| format!("{d:.2}x"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "  configured {}, resident {}, used {} (density {density}), ballooned {}",
            sz(self.configured_bytes),
            sz(self.resident_bytes),
            sz(self.used_bytes),
            sz(self.ballooned_bytes),
        );
        let _ = writeln!(
            s,
            "  hugetlb {}, swapped {}, zero page {}, uffd faults {}",
            sz(self.hugetlb_bytes),
            sz(self.swapped_bytes),
            opt_sz(self.zero_page_bytes),
            self.uffd_faults
        );
        let _ = writeln!(
            s,
            "  working set {}, major faults (swap-ins among them) {}",
            self.working_set_bytes
                .map(sz)
                .unwrap_or_else(|| "not tracked".into()),
            self.major_faults
        );
        let k = &self.ksm;
        let _ = writeln!(
            s,
            "  KSM: {} pages merged (kernel), {} guest pages on {} KSM pages, {} saved{}",
            k.merging_pages,
            k.guest_ksm_pages
                .map(|n| n.to_string())
                .unwrap_or_else(|| "?".into()),
            k.distinct_pages
                .map(|n| n.to_string())
                .unwrap_or_else(|| "?".into()),
            sz(k.saved_bytes),
            k.note
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
        s
    }
}

fn sz(b: u64) -> String {
    crate::config::Size(b).to_string()
}

fn opt_sz(b: Option<u64>) -> String {
    b.map(sz).unwrap_or_else(|| "?".into())
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// The host's memory, from `/proc/meminfo` (bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMemory {
    /// `MemTotal`.
    pub mem_total: u64,
    /// `MemFree`.
    pub mem_free: u64,
    /// `MemAvailable`.
    pub mem_available: u64,
    /// `SwapTotal`.
    pub swap_total: u64,
    /// `SwapFree`.
    pub swap_free: u64,
}

impl HostMemory {
    /// Parses `/proc/meminfo` text.
    pub fn parse(meminfo: &str) -> HostMemory {
        let get = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map(|kib| kib * 1024)
                .unwrap_or(0)
        };
        HostMemory {
            mem_total: get("MemTotal"),
            mem_free: get("MemFree"),
            mem_available: get("MemAvailable"),
            swap_total: get("SwapTotal"),
            swap_free: get("SwapFree"),
        }
    }

    /// Reads `/proc/meminfo`.
    pub fn read() -> std::io::Result<HostMemory> {
        Ok(Self::parse(&std::fs::read_to_string("/proc/meminfo")?))
    }
}

/// One registered VM in the host report.
#[derive(Clone, Debug, Serialize)]
pub struct VmEntry {
    /// Process id.
    pub pid: u32,
    /// API socket.
    pub api_sock: PathBuf,
    /// Its figures, when it answered.
    pub memory: Option<VmMemory>,
    /// Why there are no figures (stale entry, no answer).
    pub skipped: Option<String>,
}

/// The host-wide overcommit report.
#[derive(Clone, Debug, Serialize)]
pub struct HostReport {
    /// The runtime directory read.
    pub runtime_dir: PathBuf,
    /// Host memory.
    pub host: HostMemory,
    /// Host huge page pools (`None` when they cannot be read).
    pub hugepages: Option<hugepages::HostHugePages>,
    /// Host-wide KSM counters (`None` when KSM is not available).
    pub ksm: Option<ksm::KsmCounters>,
    /// Every entry of the runtime directory.
    pub vms: Vec<VmEntry>,
    /// VMs that answered.
    pub live_vms: usize,
    /// Entries skipped (stale or not answering).
    pub skipped_vms: usize,
    /// Configured guest RAM of the VMs that answered.
    pub configured_bytes: u64,
    /// Resident guest RAM of those VMs.
    pub resident_bytes: u64,
    /// Host memory those VMs use: resident minus KSM savings.
    pub used_bytes: u64,
    /// Bytes in their balloons.
    pub ballooned_bytes: u64,
    /// KSM savings of the fleet: the kernel's `pages_sharing` capped by the pages the VMs
    /// merged (exact when only memvisor VMs use KSM), at least the savings inside each VM.
    pub ksm_saved_bytes: u64,
    /// configured / MemTotal.
    pub overcommit_ratio: Option<f64>,
    /// configured / used.
    pub density: Option<f64>,
    /// Working sets of the VMs that track one (`None` when none does).
    #[serde(default)]
    pub working_set_bytes: Option<u64>,
    /// Swapped-out guest RAM of the VMs that answered.
    #[serde(default)]
    pub swapped_bytes: u64,
    /// Host swap areas and zram devices (`None` when they cannot be read).
    #[serde(default)]
    pub swap: Option<HostSwap>,
}

/// Host swap in the host-wide report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostSwap {
    /// Active swap areas.
    pub devices: Vec<crate::host::swap::SwapDevice>,
    /// Configured zram devices, with their compression ratio.
    pub zram: Vec<crate::host::swap::ZramDevice>,
    /// `vm.swappiness`.
    pub swappiness: u32,
}

impl HostSwap {
    /// Reads `/proc/swaps`, the zram devices and `vm.swappiness`.
    pub fn read() -> Option<HostSwap> {
        use crate::host::swap;
        Some(HostSwap {
            devices: swap::active().ok()?,
            zram: swap::zram_names()
                .iter()
                .filter_map(|n| swap::zram_device(n).ok())
                .filter(|z| z.disksize_bytes > 0)
                .collect(),
            swappiness: swap::swappiness().ok()?,
        })
    }
}

/// What KSM saves a fleet of VMs (bytes): the kernel's host-wide `pages_sharing`, capped by the
/// pages the VMs merged (other processes' merging does not count), and at least `within`, what
/// each VM saves inside itself. The report's *used* and `memvisor balance --fleet-budget` both
/// subtract it from the fleet's resident guest RAM.
pub fn fleet_ksm_saved(pages_sharing_bytes: u64, merged_bytes: u64, within: u64) -> u64 {
    pages_sharing_bytes.min(merged_bytes).max(within)
}

impl HostReport {
    /// Builds the report from the host figures and what each entry answered.
    pub fn build(
        runtime_dir: PathBuf,
        host: HostMemory,
        hugepages: Option<hugepages::HostHugePages>,
        ksm: Option<ksm::KsmCounters>,
        vms: Vec<VmEntry>,
    ) -> HostReport {
        let live: Vec<&VmMemory> = vms.iter().filter_map(|v| v.memory.as_ref()).collect();
        let configured: u64 = live.iter().map(|m| m.configured_bytes).sum();
        let resident: u64 = live.iter().map(|m| m.resident_bytes).sum();
        let within: u64 = live.iter().map(|m| m.ksm.saved_bytes).sum();
        let merged: u64 = live.iter().map(|m| m.ksm.merging_pages).sum();
        let saved = fleet_ksm_saved(
            ksm.as_ref().map_or(0, |k| k.pages_sharing * PAGE),
            merged * PAGE,
            within,
        );
        let used = resident.saturating_sub(saved);
        HostReport {
            runtime_dir,
            live_vms: live.len(),
            skipped_vms: vms.len() - live.len(),
            configured_bytes: configured,
            resident_bytes: resident,
            used_bytes: used,
            ballooned_bytes: live.iter().map(|m| m.ballooned_bytes).sum(),
            ksm_saved_bytes: saved,
            overcommit_ratio: ratio(configured, host.mem_total),
            density: ratio(configured, used),
            working_set_bytes: live
                .iter()
                .filter_map(|m| m.working_set_bytes)
                .reduce(|a, b| a + b),
            swapped_bytes: live.iter().map(|m| m.swapped_bytes).sum(),
            swap: None,
            host,
            hugepages,
            ksm,
            vms,
        }
    }

    /// The readable table.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let h = &self.host;
        let _ = writeln!(
            s,
            "host: MemTotal {}, MemAvailable {}, MemFree {}, swap {} of {} free",
            sz(h.mem_total),
            sz(h.mem_available),
            sz(h.mem_free),
            sz(h.swap_free),
            sz(h.swap_total)
        );
        if let Some(hp) = &self.hugepages {
            for p in &hp.pools {
                let _ = writeln!(s, "  hugepages {p}");
            }
        }
        if let Some(sw) = &self.swap {
            for d in &sw.devices {
                let _ = writeln!(s, "  swap {}", d.summary());
            }
            for z in &sw.zram {
                let _ = writeln!(s, "  {}", z.summary());
            }
        }
        if let Some(k) = &self.ksm {
            let _ = writeln!(
                s,
                "  KSM: {} shared, {} sharing, {} saved host-wide",
                k.pages_shared,
                k.pages_sharing,
                sz(k.bytes_saved(PAGE))
            );
        }
        let _ = writeln!(
            s,
            "VMs in {}: {} answering, {} skipped",
            self.runtime_dir.display(),
            self.live_vms,
            self.skipped_vms
        );
        let _ = writeln!(
            s,
            "  {:>8}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>11}  {:>8}  socket",
            "pid",
            "configured",
            "resident",
            "used",
            "ballooned",
            "ksm saved",
            "swapped",
            "working set",
            "density"
        );
        for v in &self.vms {
            match (&v.memory, &v.skipped) {
                (Some(m), _) => {
                    let _ = writeln!(
                        s,
                        "  {:>8}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>11}  {:>8}  {}",
                        v.pid,
                        sz(m.configured_bytes),
                        sz(m.resident_bytes),
                        sz(m.used_bytes),
                        sz(m.ballooned_bytes),
                        sz(m.ksm.saved_bytes),
                        sz(m.swapped_bytes),
                        m.working_set_bytes.map(sz).unwrap_or_else(|| "-".into()),
                        m.density()
                            .map(|d| format!("{d:.2}x"))
                            .unwrap_or_else(|| "-".into()),
                        v.api_sock.display()
                    );
                }
                (None, why) => {
                    let _ = writeln!(
                        s,
                        "  {:>8}  skipped: {}  {}",
                        v.pid,
                        why.as_deref().unwrap_or("no answer"),
                        v.api_sock.display()
                    );
                }
            }
        }
        let f = |r: Option<f64>| r.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "total: configured {}, resident {}, used {}, ballooned {}, KSM saved {}, swapped {}, working set {}",
            sz(self.configured_bytes),
            sz(self.resident_bytes),
            sz(self.used_bytes),
            sz(self.ballooned_bytes),
            sz(self.ksm_saved_bytes),
            sz(self.swapped_bytes),
            self.working_set_bytes
                .map(sz)
                .unwrap_or_else(|| "not tracked".into())
        );
        let _ = writeln!(
            s,
            "overcommit ratio {} (configured / MemTotal), density {} (configured / used)",
            f(self.overcommit_ratio),
            f(self.density)
        );
        s
    }
}

/// The VMM's major page faults so far (`/proc/self/stat` field 12), 0 when unreadable.
pub fn major_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            // After the name: field 3 is the first token; field 12 the 10th.
            rest.split_whitespace().nth(9)?.parse().ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parses_to_bytes() {
        let m = HostMemory::parse(
            "MemTotal:       24589996 kB\nMemFree:         1000 kB\nMemAvailable:    2000 kB\nBuffers: 5 kB\nSwapTotal:       0 kB\nSwapFree:        0 kB\n",
        );
        assert_eq!(m.mem_total, 24589996 * 1024);
        assert_eq!(m.mem_free, 1000 * 1024);
        assert_eq!(m.mem_available, 2000 * 1024);
        assert_eq!(m.swap_total, 0);
    }

    fn vm(configured: u64, resident: u64, saved: u64) -> VmMemory {
        VmMemory {
            pid: 1,
            configured_bytes: configured,
            resident_bytes: resident,
            used_bytes: resident - saved,
            ballooned_bytes: 0,
            balloon: None,
            hugetlb_bytes: 0,
            swapped_bytes: 0,
            zero_page_bytes: None,
            ksm: KsmFigures {
                saved_bytes: saved,
                ..KsmFigures::default()
            },
            uffd_faults: 0,
            pfns_visible: true,
            major_faults: 0,
            working_set_bytes: None,
            regions: Vec::new(),
        }
    }

    #[test]
    fn ratios_sum_answering_vms_and_skip_the_rest() {
        let g = 1u64 << 30;
        let vms = vec![
            VmEntry {
                pid: 1,
                api_sock: "/a".into(),
                memory: Some(vm(4 * g, g, 0)),
                skipped: None,
            },
            VmEntry {
                pid: 2,
                api_sock: "/b".into(),
                memory: Some(vm(4 * g, 2 * g, g)),
                skipped: None,
            },
            VmEntry {
                pid: 3,
                api_sock: "/c".into(),
                memory: None,
                skipped: Some("stale: process 3 is gone".into()),
            },
        ];
        let host = HostMemory {
            mem_total: 16 * g,
            ..HostMemory::default()
        };
        let r = HostReport::build("/run/memvisor".into(), host, None, None, vms);
        assert_eq!(r.live_vms, 2);
        assert_eq!(r.skipped_vms, 1);
        assert_eq!(r.configured_bytes, 8 * g);
        assert_eq!(r.resident_bytes, 3 * g);
        assert_eq!(r.used_bytes, 2 * g);
        assert_eq!(r.ksm_saved_bytes, g);
        assert_eq!(r.overcommit_ratio, Some(0.5));
        assert_eq!(r.density, Some(4.0));
        let t = r.to_text();
        assert!(t.contains("overcommit ratio 0.50x"), "{t}");
        assert!(t.contains("density 4.00x"), "{t}");
        assert!(t.contains("skipped: stale: process 3 is gone"), "{t}");
    }

    #[test]
    fn sharing_across_vms_counts_the_kernels_pages_sharing_capped_by_the_vms() {
        let g = 1u64 << 30;
        let mut a = vm(g, g / 2, 0);
        a.ksm.merging_pages = 1000;
        let mut b = vm(g, g / 2, 0);
        b.ksm.merging_pages = 1000;
        let entry = |m| VmEntry {
            pid: 1,
            api_sock: "/a".into(),
            memory: Some(m),
            skipped: None,
        };
        let host = HostMemory {
            mem_total: 16 * g,
            ..HostMemory::default()
        };
        // The two VMs share 1000 frames: the kernel counts 1000 pages sharing.
        let k = ksm::KsmCounters {
            pages_shared: 1000,
            pages_sharing: 1000,
            ..Default::default()
        };
        let r = HostReport::build(
            "/x".into(),
            host.clone(),
            None,
            Some(k.clone()),
            vec![entry(a.clone()), entry(b.clone())],
        );
        assert_eq!(r.ksm_saved_bytes, 1000 * PAGE);
        assert_eq!(r.used_bytes, g - 1000 * PAGE);
        // Someone else's sharing on the host cannot be claimed beyond what the VMs merged.
        let busy = ksm::KsmCounters {
            pages_sharing: 1_000_000,
            ..k
        };
        let r = HostReport::build(
            "/x".into(),
            host,
            None,
            Some(busy),
            vec![entry(a), entry(b)],
        );
        assert_eq!(r.ksm_saved_bytes, 2000 * PAGE);
    }

    #[test]
    fn no_vms_gives_no_ratios_not_nan() {
        let r = HostReport::build("/x".into(), HostMemory::default(), None, None, Vec::new());
        assert_eq!(r.overcommit_ratio, None);
        assert_eq!(r.density, None);
        assert!(r.to_text().contains("overcommit ratio -"));
    }
}
