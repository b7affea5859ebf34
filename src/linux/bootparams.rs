//! The Linux boot protocol's zero page (`struct boot_params`, Documentation/arch/x86/boot.rst)
//! and the e820 memory map memvisor gives the kernel: built from the RAM ranges guest memory
//! really has, with the legacy BIOS areas below 1 MiB reserved (the EBDA and the 0xE0000-0xFFFFF
//! area where the ACPI tables live), and nothing inside the 3-4 GiB MMIO hole.

use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, CAN_USE_HEAP, E820_MAX_ENTRIES_ZEROPAGE,
    LOADED_HIGH,
};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// Start of the extended BIOS data area: RAM below it is the usable low memory.
pub const EBDA_START: u64 = 0x9_fc00;
/// End of the EBDA (start of the VGA hole).
pub const EBDA_END: u64 = 0xa_0000;
/// The BIOS area where memvisor puts the ACPI tables (reserved in e820).
pub const BIOS_AREA_START: u64 = 0xe_0000;
/// End of the first MiB.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;

/// `boot_flag` magic.
pub const BOOT_FLAG: u16 = 0xaa55;
/// `header` magic: "HdrS".
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader`: undefined boot loader.
pub const LOADER_UNDEFINED: u8 = 0xff;

/// One e820 entry: `[addr, addr+size)` of `kind` (E820_RAM or E820_RESERVED).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start.
    pub addr: u64,
    /// Length.
    pub size: u64,
    /// Type.
    pub kind: u32,
}

impl E820Entry {
    /// One past the end.
    pub fn end(&self) -> u64 {
        self.addr + self.size
    }

    /// The line the kernel prints for this entry at boot (`BIOS-e820: [mem 0x...-0x...] usable`).
    pub fn kernel_line(&self) -> String {
        let kind = match self.kind {
            E820_RAM => "usable",
            E820_RESERVED => "reserved",
            3 => "ACPI data",
            4 => "ACPI NVS",
            _ => "type ?",
        };
        format!(
            "BIOS-e820: [mem {:#018x}-{:#018x}] {kind}",
            self.addr,
            self.end() - 1
        )
    }
}

/// Why the RAM layout cannot boot Linux.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum E820Error {
    /// The first RAM range must start at 0 and reach past 1 MiB.
    #[error("a Linux guest needs RAM from guest-physical 0 past 1 MiB; the first region must be at least 64 MiB")]
    NoLowRam,
    /// More entries than the zero page holds.
    #[error("the RAM layout needs {0} e820 entries; the zero page holds {E820_MAX_ENTRIES_ZEROPAGE}: use fewer --memory regions")]
    TooMany(usize),
}

/// The e820 map for RAM `ranges` (`(gpa, len)`, sorted, as [`crate::memory::GuestRam::ram_ranges`]
/// returns them). Adjacent RAM ranges are merged (the kernel merges them too), so the result is
/// exactly what the kernel prints as its `BIOS-e820` lines.
pub fn e820_map(ranges: &[(u64, u64)]) -> Result<Vec<E820Entry>, E820Error> {
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for &(gpa, len) in ranges {
        match merged.last_mut() {
            Some((s, l)) if *s + *l == gpa => *l += len,
            _ => merged.push((gpa, len)),
        }
    }
    let (first_start, first_len) = *merged.first().ok_or(E820Error::NoLowRam)?;
    if first_start != 0 || first_len <= HIGH_MEMORY_START {
        return Err(E820Error::NoLowRam);
    }
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: EBDA_END - EBDA_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: BIOS_AREA_START,
            size: HIGH_MEMORY_START - BIOS_AREA_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: HIGH_MEMORY_START,
            size: first_len - HIGH_MEMORY_START,
            kind: E820_RAM,
        },
    ];
    for &(addr, size) in &merged[1..] {
        map.push(E820Entry {
            addr,
            size,
            kind: E820_RAM,
        });
    }
    if map.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(E820Error::TooMany(map.len()));
    }
    Ok(map)
}

/// What goes into the zero page besides the kernel's own setup header.
#[derive(Clone, Debug, Default)]
pub struct ZeroPage {
    /// Guest-physical address of the NUL-terminated command line.
    pub cmdline_gpa: u64,
    /// Length of the command line without its NUL.
    pub cmdline_len: u32,
    /// Initrd `(gpa, len)`.
    pub initrd: Option<(u64, u64)>,
    /// Guest-physical address of the ACPI RSDP.
    pub rsdp_gpa: u64,
    /// The memory map.
    pub e820: Vec<E820Entry>,
}

/// Builds `boot_params` from the kernel's setup header (bzImage) or, for an ELF vmlinux that
/// has none, a minimal one.
pub fn boot_params(header: Option<setup_header>, z: &ZeroPage) -> boot_params {
    let mut p = boot_params {
        hdr: header.unwrap_or(setup_header {
            boot_flag: BOOT_FLAG,
            header: HDRS_MAGIC,
            kernel_alignment: 0x0100_0000,
            ..Default::default()
        }),
        ..Default::default()
    };
    p.hdr.type_of_loader = LOADER_UNDEFINED;
    p.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    // The heap ends below the zero page's own 4 KiB (relative to the real-mode segment).
    p.hdr.heap_end_ptr = 0xfe00;
    p.hdr.cmd_line_ptr = z.cmdline_gpa as u32;
    p.ext_cmd_line_ptr = (z.cmdline_gpa >> 32) as u32;
    if header.is_none() {
        p.hdr.cmdline_size = z.cmdline_len;
    }
    if let Some((gpa, len)) = z.initrd {
        p.hdr.ramdisk_image = gpa as u32;
        p.ext_ramdisk_image = (gpa >> 32) as u32;
        p.hdr.ramdisk_size = len as u32;
        p.ext_ramdisk_size = (len >> 32) as u32;
    }
    p.acpi_rsdp_addr = z.rsdp_gpa;
    for (slot, e) in p.e820_table.iter_mut().zip(&z.e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    p.e820_entries = z.e820.len().min(E820_MAX_ENTRIES_ZEROPAGE) as u8;
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::layout::place;
    const M: u64 = 1 << 20;
    const G: u64 = 1 << 30;

    /// RAM ranges as GuestRam reports them for regions of these sizes (4 KiB pages).
    fn ranges(sizes: &[u64]) -> Vec<(u64, u64)> {
        let regions: Vec<(u64, u64)> = sizes.iter().map(|s| (*s, 4096)).collect();
        let mut v: Vec<(u64, u64)> = place(&regions)
            .into_iter()
            .flatten()
            .map(|e| (e.gpa, e.len))
            .collect();
        v.sort();
        v
    }

    fn lines(map: &[E820Entry]) -> Vec<String> {
        map.iter().map(|e| e.kernel_line()).collect()
    }

    #[test]
    fn one_region_below_the_hole() {
        let map = e820_map(&ranges(&[512 * M])).unwrap();
        assert_eq!(
            lines(&map),
            [
                "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
                "BIOS-e820: [mem 0x000000000009fc00-0x000000000009ffff] reserved",
                "BIOS-e820: [mem 0x00000000000e0000-0x00000000000fffff] reserved",
                "BIOS-e820: [mem 0x0000000000100000-0x000000001fffffff] usable",
            ]
        );
    }

    #[test]
    fn region_crossing_3g_is_split_around_the_hole() {
        let map = e820_map(&ranges(&[4 * G])).unwrap();
        assert_eq!(map.len(), 5);
        assert_eq!(
            map[3],
            E820Entry {
                addr: M,
                size: 3 * G - M,
                kind: E820_RAM
            }
        );
        assert_eq!(
            map[4],
            E820Entry {
                addr: 4 * G,
                size: G,
                kind: E820_RAM
            }
        );
        assert!(map.iter().all(|e| e.end() <= 3 * G || e.addr >= 4 * G));
    }

    #[test]
    fn two_regions_with_the_hole_between() {
        // --memory 3G --memory 1G: the second region starts above 4 GiB.
        let map = e820_map(&ranges(&[3 * G, G])).unwrap();
        assert_eq!(
            lines(&map)[3..],
            [
                "BIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] usable",
                "BIOS-e820: [mem 0x0000000100000000-0x000000013fffffff] usable",
            ]
        );
    }

    #[test]
    fn adjacent_regions_merge_and_a_crossing_region_splits() {
        // 1G + 2.5G: the second region fills 1G..3G, then continues at 4G.
        let map = e820_map(&ranges(&[G, 5 * G / 2])).unwrap();
        let ram: Vec<(u64, u64)> = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| (e.addr, e.end()))
            .collect();
        assert_eq!(ram, [(0, EBDA_START), (M, 3 * G), (4 * G, 4 * G + G / 2)]);
    }

    #[test]
    fn too_little_low_ram_is_refused() {
        assert_eq!(e820_map(&[(0, 512 * 1024)]), Err(E820Error::NoLowRam));
        assert_eq!(e820_map(&[]), Err(E820Error::NoLowRam));
        assert_eq!(e820_map(&[(M, 64 * M)]), Err(E820Error::NoLowRam));
    }

    #[test]
    fn zero_page_fields() {
        let e820 = e820_map(&ranges(&[3 * G, G])).unwrap();
        let z = ZeroPage {
            cmdline_gpa: 0x2_0000,
            cmdline_len: 42,
            initrd: Some((0xbf00_0000, 0x80_1234)),
            rsdp_gpa: 0xe_0000,
            e820: e820.clone(),
        };
        let hdr = setup_header {
            boot_flag: BOOT_FLAG,
            header: HDRS_MAGIC,
            version: 0x020f,
            loadflags: LOADED_HIGH,
            cmdline_size: 2047,
            initrd_addr_max: 0x7fff_ffff,
            ..Default::default()
        };
        let p = boot_params(Some(hdr), &z);
        let h = p.hdr;
        assert_eq!({ h.boot_flag }, BOOT_FLAG);
        assert_eq!({ h.header }, HDRS_MAGIC);
        assert_eq!({ h.version }, 0x020f, "the kernel's own header is kept");
        assert_eq!(h.type_of_loader, LOADER_UNDEFINED);
        assert_eq!(
            h.loadflags & (LOADED_HIGH | CAN_USE_HEAP),
            LOADED_HIGH | CAN_USE_HEAP
        );
        assert_eq!({ h.cmd_line_ptr }, 0x2_0000);
        assert_eq!(
            { h.cmdline_size },
            2047,
            "the kernel's limit is not overwritten"
        );
        assert_eq!({ h.ramdisk_image }, 0xbf00_0000);
        assert_eq!({ h.ramdisk_size }, 0x80_1234);
        assert_eq!({ p.ext_ramdisk_image }, 0);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe_0000);
        assert_eq!(p.e820_entries as usize, e820.len());
        for (slot, e) in p.e820_table.iter().zip(&e820) {
            assert_eq!(
                ({ slot.addr }, { slot.size }, { slot.r#type }),
                (e.addr, e.size, e.kind)
            );
        }
        // The byte layout the kernel reads: magic at 0x202, loadflags at 0x211, cmd_line_ptr at
        // 0x228, ramdisk at 0x218/0x21c, e820_entries at 0x1e8, e820 table at 0x2d0.
        use vm_memory::ByteValued;
        let b = p.as_slice();
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        assert_eq!(u32_at(0x202), HDRS_MAGIC);
        assert_eq!(b[0x211], LOADED_HIGH | CAN_USE_HEAP);
        assert_eq!(u32_at(0x228), 0x2_0000);
        assert_eq!(u32_at(0x218), 0xbf00_0000);
        assert_eq!(u32_at(0x21c), 0x80_1234);
        assert_eq!(b[0x1e8] as usize, e820.len());
        assert_eq!(
            u32_at(0x2d0 + 20 * 3),
            M as u32,
            "4th entry starts at 1 MiB"
        );
        assert_eq!(u32_at(0x2d0 + 20 * 3 + 16), E820_RAM);
    }

    #[test]
    fn elf_kernels_get_a_minimal_header() {
        let p = boot_params(
            None,
            &ZeroPage {
                cmdline_gpa: 0x2_0000,
                cmdline_len: 10,
                ..Default::default()
            },
        );
        assert_eq!({ p.hdr.header }, HDRS_MAGIC);
        assert_eq!({ p.hdr.boot_flag }, BOOT_FLAG);
        assert_eq!({ p.hdr.cmdline_size }, 10);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
    }
}
