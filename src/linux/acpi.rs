//! ACPI tables for a Linux guest, built with the `acpi_tables` crate: RSDP -> XSDT -> FADT
//! (hardware-reduced ACPI, so no PM timer or SCI is needed) -> DSDT, and a MADT with one
//! processor local APIC per vCPU and the I/O APIC. They are how the guest finds every vCPU:
//! Debian's cloud kernel is built without `CONFIG_X86_MPPARSE`, so an MP table would be ignored.
//!
//! The tables live in the reserved BIOS area at [`ACPI_START`] (`0xE0000`, where the kernel would
//! also scan for the RSDP); the zero page points at the RSDP directly (`acpi_rsdp_addr`).
//! Devices that need ACPI description (a PCI host bridge) hand their AML to [`build`], which puts
//! it in the DSDT.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

/// Where the RSDP goes (start of the reserved BIOS area in e820).
pub const ACPI_START: u64 = super::bootparams::BIOS_AREA_START;
/// End of the area the tables may use.
pub const ACPI_END: u64 = super::bootparams::HIGH_MEMORY_START;
/// The local APIC's MMIO base.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// The I/O APIC's MMIO base (KVM's in-kernel I/O APIC).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The I/O APIC's id (after the vCPUs' APIC ids).
pub const IOAPIC_ID: u8 = 0xfe;

const OEM_ID: [u8; 6] = *b"MEMVSR";
const OEM_REVISION: u32 = 1;
/// MADT flag: the system also has dual 8259 PICs (KVM's in-kernel irqchip does).
const MADT_PCAT_COMPAT: u32 = 1;

/// Errors building the tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    /// Too many vCPUs for 8-bit APIC ids in the MADT.
    #[error("{0} vCPUs: the MADT's local APIC entries hold at most 254")]
    TooManyVcpus(u32),
    /// The tables do not fit the BIOS area.
    #[error("the ACPI tables need {0} bytes; the BIOS area holds {max}", max = ACPI_END - ACPI_START)]
    TooLarge(u64),
}

/// The tables and where each goes in guest memory.
#[derive(Clone, Debug)]
pub struct AcpiTables {
    /// Guest-physical address of the RSDP.
    pub rsdp_gpa: u64,
    /// `(gpa, bytes)` of every table, the RSDP first.
    pub blobs: Vec<(u64, Vec<u8>)>,
}

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn align16(v: u64) -> u64 {
    (v + 15) & !15
}

/// The MADT: PCAT_COMPAT, one enabled local APIC per vCPU (APIC id = vCPU index, as CPUID
/// reports it), the I/O APIC at GSI base 0.
pub fn madt(vcpus: u32) -> Result<Vec<u8>, AcpiError> {
    if vcpus == 0 || vcpus > 254 {
        return Err(AcpiError::TooManyVcpus(vcpus));
    }
    let mut t = Sdt::new(*b"APIC", 44, 5, OEM_ID, *b"MVSRMADT", OEM_REVISION);
    t.write_u32(36, LAPIC_ADDR);
    t.write_u32(40, MADT_PCAT_COMPAT);
    for id in 0..vcpus {
        t.append_slice(&bytes(&ProcessorLocalApic::new(
            id as u8,
            id as u8,
            EnabledStatus::Enabled,
        )));
    }
    t.append_slice(&bytes(&IoApic::new(IOAPIC_ID, IOAPIC_ADDR, 0)));
    Ok(t.as_slice().to_vec())
}

/// The DSDT with `aml` (device descriptions; may be empty) as its body.
pub fn dsdt(aml: &[u8]) -> Vec<u8> {
    let mut t = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"MVSRDSDT", OEM_REVISION);
    t.append_slice(aml);
    t.as_slice().to_vec()
}

/// Builds every table for `vcpus` vCPUs, with `dsdt_aml` in the DSDT, laid out from
/// [`ACPI_START`].
pub fn build(vcpus: u32, dsdt_aml: &[u8]) -> Result<AcpiTables, AcpiError> {
    let rsdp_gpa = ACPI_START;
    let xsdt_gpa = align16(rsdp_gpa + Rsdp::len() as u64);
    let madt = madt(vcpus)?;
    let dsdt = dsdt(dsdt_aml);
    // XSDT with two entries (FADT, MADT).
    let xsdt_len = 36 + 2 * 8;
    let fadt_gpa = align16(xsdt_gpa + xsdt_len);
    let fadt_len = acpi_tables::fadt::FADT::len() as u64;
    let madt_gpa = align16(fadt_gpa + fadt_len);
    let dsdt_gpa = align16(madt_gpa + madt.len() as u64);
    let end = dsdt_gpa + dsdt.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooLarge(end - ACPI_START));
    }
    let fadt = FADTBuilder::new(OEM_ID, *b"MVSRFACP", OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt_gpa)
        .finalize();
    let mut xsdt = XSDT::new(OEM_ID, *b"MVSRXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_gpa);
    xsdt.add_entry(madt_gpa);
    let rsdp = Rsdp::new(OEM_ID, xsdt_gpa);
    let blobs = vec![
        (rsdp_gpa, bytes(&rsdp)),
        (xsdt_gpa, bytes(&xsdt)),
        (fadt_gpa, bytes(&fadt)),
        (madt_gpa, madt),
        (dsdt_gpa, dsdt),
    ];
    debug_assert_eq!(blobs[1].1.len() as u64, xsdt_len);
    Ok(AcpiTables { rsdp_gpa, blobs })
}

/// `\_SB_.COM1`: the 16550 UART at `base` (8 ports) with ISA interrupt `irq`, as a `PNP0501`
/// device. With hardware-reduced ACPI Linux sets up no legacy ISA interrupts, so the UART it
/// probes at the legacy COM1 address on its own gets no working IRQ (userspace writes to
/// `ttyS0` fail with EIO). Described here, `8250_pnp` (`CONFIG_SERIAL_8250_PNP` with
/// `CONFIG_PNPACPI`) takes over `ttyS0` with the interrupt mapped through the I/O APIC (GSI
/// `irq`, edge, active high: the ISA default, so the MADT needs no override).
pub fn com1_aml(base: u16, irq: u32) -> Vec<u8> {
    use acpi_tables::aml::{Device, EISAName, Interrupt, Name, Path, ResourceTemplate, IO};
    let io = IO::new(base, base, 1, 8);
    let int = Interrupt::new(true, true, false, false, irq);
    let crs = ResourceTemplate::new(vec![&io, &int]);
    let hid = EISAName::new("PNP0501");
    let zero = 0u8;
    let names = [
        Name::new("_HID".into(), &hid),
        Name::new("_UID".into(), &zero),
        Name::new("_CRS".into(), &crs),
    ];
    let dev = Device::new(
        Path::new("_SB_.COM1"),
        names.iter().map(|n| n as &dyn Aml).collect(),
    );
    bytes(&dev)
}

/// `\_SB_.PCI0`: a PCI host bridge (PNP0A03) for bus 0 reached through configuration
/// mechanism #1, with the legacy I/O ranges and the MMIO window `[start, start+size)` its BARs
/// live in, and a `_PRT` routing INTA# of `slots` to GSI `intx_gsi`. With ACPI, Linux finds
/// PCI root buses only through such a device (it does not scan bus 0 on its own).
pub fn pci_host_bridge_aml(start: u32, size: u32, slots: &[u8], intx_gsi: u32) -> Vec<u8> {
    use acpi_tables::aml::{
        AddressSpace, AddressSpaceCacheable, Device, EISAName, Name, Package, Path,
        ResourceTemplate, IO,
    };
    let bus = AddressSpace::<u16>::new_bus_number(0, 0);
    let cf8 = IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = AddressSpace::<u16>::new_io(0, 0xcf7, None);
    let io_high = AddressSpace::<u16>::new_io(0xd00, 0xffff, None);
    let mem = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        start,
        start + (size - 1),
        None,
    );
    let crs = ResourceTemplate::new(vec![&bus, &cf8, &io_low, &io_high, &mem]);
    // _PRT entries: Package { address (slot << 16 | 0xFFFF), pin 0 (INTA#), source 0, GSI }.
    let addrs: Vec<u32> = slots
        .iter()
        .map(|s| (u32::from(*s) << 16) | 0xffff)
        .collect();
    let zero = 0u8;
    let entries: Vec<Package> = addrs
        .iter()
        .map(|a| Package::new(vec![a, &zero, &zero, &intx_gsi]))
        .collect();
    let prt = Package::new(entries.iter().map(|e| e as &dyn Aml).collect());
    let hid = EISAName::new("PNP0A03");
    let zero32 = 0u32;
    let names = [
        Name::new("_HID".into(), &hid),
        Name::new("_ADR".into(), &zero32),
        Name::new("_SEG".into(), &zero32),
        Name::new("_UID".into(), &zero32),
        Name::new("_BBN".into(), &zero32),
        Name::new("_CRS".into(), &crs),
        Name::new("_PRT".into(), &prt),
    ];
    let dev = Device::new(
        Path::new("_SB_.PCI0"),
        names.iter().map(|n| n as &dyn Aml).collect(),
    );
    bytes(&dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }
    fn table_at(t: &AcpiTables, gpa: u64) -> &[u8] {
        &t.blobs
            .iter()
            .find(|(g, _)| *g == gpa)
            .expect("a table there")
            .1
    }

    #[test]
    fn rsdp_xsdt_fadt_madt_dsdt_chain_with_checksums() {
        let t = build(3, &[]).unwrap();
        let rsdp = table_at(&t, t.rsdp_gpa);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(rsdp.len(), 36);
        assert_eq!(sum(&rsdp[0..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(rsdp), 0, "extended checksum");
        assert_eq!(rsdp[15], 2, "revision 2 (XSDT)");
        assert_eq!(u32_at(rsdp, 20), 36, "length");
        let xsdt = table_at(&t, u64_at(rsdp, 24));
        assert_eq!(&xsdt[0..4], b"XSDT");
        assert_eq!(u32_at(xsdt, 4) as usize, xsdt.len());
        assert_eq!(xsdt.len(), 36 + 16);
        assert_eq!(sum(xsdt), 0);
        let fadt = table_at(&t, u64_at(xsdt, 36));
        let madt = table_at(&t, u64_at(xsdt, 44));
        assert_eq!(&fadt[0..4], b"FACP");
        assert_eq!(u32_at(fadt, 4) as usize, fadt.len());
        assert_eq!(fadt.len(), 276, "ACPI 6 FADT length");
        assert_eq!(sum(fadt), 0);
        assert_ne!(u32_at(fadt, 112) & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_eq!(
            u16::from_le_bytes([fadt[109], fadt[110]]) & (1 << 3),
            0,
            "IAPC_BOOT_ARCH does not say MSI is unsupported"
        );
        let dsdt = table_at(&t, u64_at(fadt, 140));
        assert_eq!(&dsdt[0..4], b"DSDT");
        assert_eq!(u32_at(dsdt, 4) as usize, dsdt.len());
        assert_eq!(sum(dsdt), 0);
        assert_eq!(&madt[0..4], b"APIC");
        assert_eq!(sum(madt), 0);
        // Every table fits the reserved BIOS area and none overlaps the next.
        let mut spans: Vec<(u64, u64)> = t
            .blobs
            .iter()
            .map(|(g, b)| (*g, *g + b.len() as u64))
            .collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{spans:x?}");
        }
        assert!(spans[0].0 >= ACPI_START && spans.last().unwrap().1 <= ACPI_END);
    }

    #[test]
    fn madt_has_one_local_apic_per_vcpu_and_the_ioapic() {
        for vcpus in [1u32, 2, 7] {
            let m = madt(vcpus).unwrap();
            assert_eq!(u32_at(&m, 4) as usize, m.len());
            assert_eq!(m.len(), 44 + 8 * vcpus as usize + 12);
            assert_eq!(sum(&m), 0);
            assert_eq!(u32_at(&m, 36), LAPIC_ADDR);
            assert_eq!(u32_at(&m, 40) & MADT_PCAT_COMPAT, MADT_PCAT_COMPAT);
            let mut off = 44;
            let mut lapics = Vec::new();
            let mut ioapics = 0;
            while off < m.len() {
                let (kind, len) = (m[off], m[off + 1] as usize);
                match kind {
                    0 => {
                        assert_eq!(len, 8);
                        assert_eq!(u32_at(&m, off + 4) & 1, 1, "enabled");
                        lapics.push((m[off + 2], m[off + 3]));
                    }
                    1 => {
                        assert_eq!(len, 12);
                        assert_eq!(u32_at(&m, off + 4), IOAPIC_ADDR);
                        assert_eq!(u32_at(&m, off + 8), 0, "GSI base");
                        ioapics += 1;
                    }
                    k => panic!("unexpected MADT entry type {k}"),
                }
                off += len;
            }
            let want: Vec<(u8, u8)> = (0..vcpus as u8).map(|i| (i, i)).collect();
            assert_eq!(lapics, want, "uid and APIC id per vCPU");
            assert_eq!(ioapics, 1);
        }
        assert_eq!(madt(0), Err(AcpiError::TooManyVcpus(0)));
        assert_eq!(madt(255), Err(AcpiError::TooManyVcpus(255)));
    }

    #[test]
    fn pci_host_bridge_aml_names_pnp0a03_with_its_windows() {
        let aml = pci_host_bridge_aml(0xe000_0000, 0x1000_0000, &[1], 10);
        // DeviceOp (ExtOpPrefix 0x5B, 0x82) with the path _SB_.PCI0.
        assert_eq!(&aml[..2], &[0x5b, 0x82]);
        let find = |needle: &[u8]| aml.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"_SB_PCI0"));
        // EISA id PNP0A03 compressed: 0x41D0 0x0A03 -> bytes 41 d0 0a 03.
        assert!(
            find(&[0x0c, 0x41, 0xd0, 0x0a, 0x03]),
            "_HID EisaId(PNP0A03)"
        );
        for name in [b"_CRS", b"_PRT", b"_BBN", b"_SEG"] {
            assert!(find(name));
        }
        // DWordMemory descriptor (0x87) with min 0xE0000000 and max 0xEFFFFFFF.
        let mut min_max = 0xe000_0000u32.to_le_bytes().to_vec();
        min_max.extend_from_slice(&0xefff_ffffu32.to_le_bytes());
        assert!(find(&min_max), "memory window");
        assert!(
            find(&[0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]),
            "IO 0xCF8-0xCFF"
        );
        // _PRT entry address for slot 1: 0x0001FFFF (DWordConst 0x0C).
        assert!(find(&[0x0c, 0xff, 0xff, 0x01, 0x00]));
        let t = build(2, &aml).unwrap();
        let dsdt = &t.blobs[4].1;
        assert_eq!(&dsdt[36..], &aml[..]);
        assert_eq!(sum(dsdt), 0);
    }

    #[test]
    fn com1_is_a_pnp0501_device_with_its_ports_and_irq() {
        let aml = com1_aml(0x3f8, 4);
        let find = |needle: &[u8]| aml.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"COM1"), "device name");
        // EISAName("PNP0501") = DWordConst 0x0105D041.
        assert!(find(&[0x0c, 0x41, 0xd0, 0x05, 0x01]), "_HID PNP0501");
        assert!(
            find(&[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]),
            "IO 0x3F8-0x3FF"
        );
        // Extended IRQ descriptor: consumer, edge, active high, exclusive; one interrupt, 4.
        assert!(
            find(&[0x89, 0x06, 0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0x00]),
            "Interrupt 4"
        );
    }

    #[test]
    fn dsdt_carries_device_aml() {
        let aml = [0x10, 0x05, b'_', b'S', b'B', b'_'];
        let d = dsdt(&aml);
        assert_eq!(d.len(), 36 + aml.len());
        assert_eq!(&d[36..], &aml);
        assert_eq!(sum(&d), 0);
        assert!(matches!(
            build(1, &vec![0u8; 200_000]),
            Err(AcpiError::TooLarge(_))
        ));
    }
}
