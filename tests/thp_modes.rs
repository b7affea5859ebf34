//! Guest RAM under each host THP mode (`/sys/kernel/mm/transparent_hugepage/enabled`:
//! `always`, `madvise`, `never`), so every branch that depends on the host's mode runs on any
//! machine, not only on machines that happen to be set that way: `thp=off` never gets huge
//! pages, `thp=on` gets them unless THP is disabled host-wide (and memvisor then says so),
//! a region without a `thp=` option follows the host. The mode is restored afterwards, also
//! when the test fails. Root only; one test in its own binary, so nothing else runs while the
//! host-wide mode is changed (cargo runs test binaries one at a time).

mod common;

use common::{kvm_or_skip, root_or_skip, skip, smaps_field};
use hugepages::ThpMode;
use memvisor::config::RegionConfig;
use memvisor::memory::GuestRam;
use vm_memory::{Bytes, GuestAddress};

const ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
const SIZE: u64 = 32 << 20;

/// Sets the host THP mode; puts the one it found back on drop.
struct ModeGuard {
    found: String,
}

impl ModeGuard {
    fn new() -> std::io::Result<ModeGuard> {
        let text = std::fs::read_to_string(ENABLED)?;
        let found = hugepages::thp::parse_selected(&text)
            .ok_or_else(|| std::io::Error::other(format!("{ENABLED}: no selected mode")))?
            .to_string();
        Ok(ModeGuard { found })
    }

    fn set(&self, mode: &str) {
        std::fs::write(ENABLED, mode).unwrap_or_else(|e| panic!("set THP mode {mode}: {e}"));
        assert_eq!(
            hugepages::thp_mode().unwrap(),
            mode_of(mode),
            "THP mode after writing {mode}"
        );
    }
}

impl Drop for ModeGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(ENABLED, &self.found) {
            eprintln!("could not restore THP mode {}: {e}", self.found);
        }
    }
}

fn mode_of(name: &str) -> ThpMode {
    match name {
        "always" => ThpMode::Always,
        "madvise" => ThpMode::Madvise,
        _ => ThpMode::Never,
    }
}

/// AnonHugePages of a fresh region `spec` after every page of it was written.
fn thp_bytes(spec: &str) -> u64 {
    let ram = GuestRam::new(&[RegionConfig::parse(0, spec).unwrap()])
        .unwrap_or_else(|e| panic!("{spec}: {e}"));
    let buf = vec![0x5au8; 2 << 20];
    for off in (0..SIZE).step_by(buf.len()) {
        ram.memory().write_slice(&buf, GuestAddress(off)).unwrap();
    }
    smaps_field(ram.regions()[0].host_addr(), "AnonHugePages").unwrap_or(0)
}

#[test]
fn guest_ram_follows_each_host_thp_mode() {
    let t = "guest_ram_follows_each_host_thp_mode";
    if !root_or_skip(t) {
        return;
    }
    let guard = match ModeGuard::new() {
        Ok(g) => g,
        Err(e) => return skip(t, format_args!("no THP on this kernel ({e})")),
    };
    let kvm = kvm_or_skip("guest_ram_follows_each_host_thp_mode (the warning of a run)");
    for mode in ["always", "madvise", "never"] {
        guard.set(mode);
        let off = thp_bytes(&format!("size={SIZE},backend=anon,thp=off"));
        let on = thp_bytes(&format!("size={SIZE},backend=anon,thp=on"));
        let mut host = thp_bytes(&format!("size={SIZE},backend=anon"));
        if mode == "always" && host == 0 {
            // Huge pages for memory nobody advised come only from free 2 MiB blocks (no
            // direct compaction under the default defrag setting): make some, try again.
            common::make_room_for_huge_pages();
            host = thp_bytes(&format!("size={SIZE},backend=anon"));
        }
        println!("THP mode {mode}: thp=off {off} B, thp=on {on} B, no option {host} B");
        assert_eq!(
            off, 0,
            "{mode}: thp=off (MADV_NOHUGEPAGE) never gets huge pages"
        );
        match mode {
            "never" => {
                assert_eq!(on, 0, "never: no huge pages, whatever was advised");
                assert_eq!(host, 0, "never: no huge pages");
            }
            "madvise" => {
                assert!(on > 0, "madvise: thp=on (MADV_HUGEPAGE) gets huge pages");
                assert_eq!(host, 0, "madvise: a region nobody advised gets none");
            }
            _ => {
                assert!(on > 0, "always: thp=on gets huge pages");
                assert!(host > 0, "always: a region with no option gets huge pages");
            }
        }
        // What a user sees: with THP disabled host-wide, thp=on is said to get 4 KiB pages.
        if kvm {
            let out =
                common::memvisor(&["run", "-m", "size=64M,backend=anon,thp=on", "-w", "touch"]);
            let text = common::text(&out);
            assert!(out.status.success(), "{mode}: {text}");
            assert_eq!(
                text.contains("transparent huge pages are disabled host-wide"),
                mode == "never",
                "{mode}: {text}"
            );
        }
    }
    drop(guard);
}
