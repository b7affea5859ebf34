//! Linux guests: Debian's cloud kernel from `scripts/guest-assets.sh` booted by memvisor.
//!
//! - `debian_kernel_prints_its_version_and_the_configured_e820_map` runs everywhere KVM is: the
//!   kernel's own `BIOS-e820` lines must be exactly the RAM memvisor configured (two regions with
//!   the MMIO hole between them) plus the reserved BIOS ranges, and the kernel must find the ACPI
//!   tables with one local APIC per vCPU. About a minute where KVM emulates ring 0 (the VM is
//!   stopped as soon as the lines are there).
//! - `bzimage_and_vmlinux_are_loaded_per_the_boot_protocol` checks what memvisor put in guest
//!   memory for both kernel formats, without running them (seconds).
//! - `guest_reboot_by_i8042_or_triple_fault_ends_the_run_cleanly` boots two tiny ELF "kernels"
//!   (a dozen instructions) to check the console and the clean end of a guest reboot (seconds).
//! - `full_boot_to_init_with_the_balloon` needs hardware virtualisation (or
//!   `MEMVISOR_FULL_LINUX=1`): boot to `/init`, the stock `virtio_balloon` driver binds to the
//!   virtio-pci balloon, inflate by 256 MiB through the API and see the guest's MemTotal/MemFree
//!   and the host's RSS follow, then deflate.
//! - `int3_in_ring_0_reaches_the_guests_handler`: a tiny kernel's `int3` reaches its own `#BP`
//!   handler (memvisor's emulation assist where KVM has no VMX/SVM; seconds).
//! - `linux_guest_with_a_balloon_has_it_on_pci` checks with a tiny kernel that `--balloon` puts
//!   the balloon on the Linux guest's PCI bus (conf1), where that driver looks.
//! - `test_kernel_balloon_and_console_end_to_end` runs here too, with the test kernel
//!   (`scripts/guest/test-kernel.sh`): one boot to its `/init` (~3-4 min where KVM emulates ring
//!   0), then the serial console for userspace, the kernel's own `virtio_balloon` driver, its
//!   statistics, inflate/deflate with host residency and the guest's MemTotal following.
//!   `test_kernel_free_page_reporting_and_deflate_on_oom` boots it once more, beside it, for
//!   free page reporting and deflate-on-oom.
//! - `test_kernel_hugetlbfs_ksm_and_balance` (`tests/linux/overcommit.rs`) boots two more test
//!   guests beside them: one on hugetlbfs whose balloon returns whole huge pages to the pool,
//!   one mergeable whose identical pages KSM merges, then `memvisor balance` over both.
//! - `test_kernel_balloon_over_intx_with_pci_nomsi` (`tests/linux/intx.rs`) boots it with
//!   `pci=nomsi`: the kernel's `virtio_balloon` works over INTx (memvisor's resampling irqfd on
//!   GSI 10), a 16 MiB inflate completes, the interrupts are counted on `IO-APIC 10-fasteoi`.
//!
//! The assets are built by `.ci/run` (through `scripts/guest-assets.sh`) before the tests; a
//! test builds them itself when they are missing, and prints a skip line naming what is missing
//! only when they cannot be built here.

mod common;
#[path = "linux/overcommit.rs"]
mod overcommit;

use common::{kvm_or_skip, skip, Running, TempDir};
use memvisor::config::RegionConfig;
use memvisor::linux::{cpu, irq::IrqChip, Devices, LinuxConfig, LinuxMachine};
use memvisor::memory::GuestRam;
use memvisor::vmm::vm::Vm;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

/// The kernel and initramfs built by `scripts/guest-assets.sh`.
struct Assets {
    vmlinuz: PathBuf,
    vmlinux: PathBuf,
    initramfs: PathBuf,
}

/// Finds (or builds, through the script and its cache) the guest assets; prints a skip line
/// naming what is missing when they cannot be had.
fn assets_or_skip(test: &str) -> Option<Assets> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/guest-assets.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print-dir")
        .stdin(Stdio::null())
        .output();
    let dir = match out {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            skip(
                test,
                format!(
                    "guest assets (vmlinuz, vmlinux, initramfs.cpio.gz) missing and scripts/guest-assets.sh could not build them: {}",
                    err.lines().last().unwrap_or("no output")
                ),
            );
            return None;
        }
        Err(e) => {
            skip(
                test,
                format!("guest assets missing: cannot run scripts/guest-assets.sh ({e})"),
            );
            return None;
        }
    };
    let a = Assets {
        vmlinuz: dir.join("vmlinuz"),
        vmlinux: dir.join("vmlinux"),
        initramfs: dir.join("initramfs.cpio.gz"),
    };
    for p in [&a.vmlinuz, &a.vmlinux, &a.initramfs] {
        if !p.is_file() {
            skip(test, format!("guest asset {} is missing", p.display()));
            return None;
        }
    }
    Some(a)
}

/// The console's complete lines with the kernel's `[    0.000000] ` timestamps removed. A
/// last line without its newline yet is left out: the guest may still be writing it (the
/// serial console is slow here), and a reader polling the file took `md5 1eda2bd777dc` for
/// the whole `md5 1eda2bd777dc21cd85cece591df78b03` once.
fn console_lines(path: &Path) -> Vec<String> {
    let mut text = std::fs::read(path).unwrap_or_default();
    text.truncate(text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1));
    String::from_utf8_lossy(&text)
        .lines()
        .map(
            |l| match l.strip_prefix('[').and_then(|r| r.split_once("] ")) {
                Some((_, rest)) => rest.to_string(),
                None => l.to_string(),
            },
        )
        .collect()
}

fn hardware_virtualisation() -> bool {
    memvisor::vmm::vm::HostVirt::detect().hardware
        && (Path::new("/sys/module/kvm_intel").exists()
            || Path::new("/sys/module/kvm_amd").exists())
}

#[test]
fn debian_kernel_prints_its_version_and_the_configured_e820_map() {
    let test = "debian_kernel_prints_its_version_and_the_configured_e820_map";
    if !kvm_or_skip(test) {
        return;
    }
    let Some(assets) = assets_or_skip(test) else {
        return;
    };
    let tmp = TempDir::new("linux-e820");
    let console = tmp.path().join("console.txt");
    let report = tmp.path().join("report.json");
    let t0 = Instant::now();
    // The ELF vmlinux: the bzImage's own decompressor takes minutes where ring 0 is emulated.
    let child = Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .arg("run")
        .arg("--kernel")
        .arg(&assets.vmlinux)
        .args(["--cmdline", "earlyprintk=serial console=ttyS0"])
        .args(["--vcpus", "2", "-m", "3G", "-m", "1G", "--timeout", "600"])
        .arg("--console")
        .arg(&console)
        .arg("--report-file")
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut vm = Running(Some(child));
    // Exactly the configured RAM: region 0 (3 GiB) from 0 with the BIOS areas reserved, region 1
    // (1 GiB) above the 3-4 GiB hole.
    let want_e820 = [
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
        "BIOS-e820: [mem 0x000000000009fc00-0x000000000009ffff] reserved",
        "BIOS-e820: [mem 0x00000000000e0000-0x00000000000fffff] reserved",
        "BIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] usable",
        "BIOS-e820: [mem 0x0000000100000000-0x000000013fffffff] usable",
    ];
    // The MADT with two local APICs and the I/O APIC is 44 + 2*8 + 12 = 0x48 bytes.
    let madt_found = |l: &String| l.starts_with("ACPI: APIC ") && l.contains(" 000048 (v05 MEMVSR");
    let deadline = Duration::from_secs(420);
    let lines = loop {
        let lines = console_lines(&console);
        if lines.iter().any(madt_found) {
            break lines;
        }
        if let Some(status) = vm.child().try_wait().unwrap() {
            panic!(
                "memvisor ended ({status}) before the kernel printed its ACPI tables; console:\n{}",
                lines.join("\n")
            );
        }
        assert!(
            t0.elapsed() < deadline,
            "no ACPI MADT line after {deadline:?}; console so far:\n{}",
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let seen = t0.elapsed();
    let out = vm.interrupt(Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!(
        "kernel version, e820 and ACPI lines seen after {:.1} s",
        seen.as_secs_f64()
    );
    let version = lines
        .iter()
        .find(|l| l.starts_with("Linux version "))
        .expect("the kernel's version line");
    assert!(version.contains("cloud-amd64"), "{version}");
    let cmdline = lines
        .iter()
        .find(|l| l.starts_with("Command line: "))
        .expect("the kernel's command line");
    assert!(
        cmdline.starts_with("Command line: earlyprintk=serial console=ttyS0"),
        "{cmdline}"
    );
    let e820: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("BIOS-e820:"))
        .map(|l| l.as_str())
        .collect();
    assert_eq!(e820, want_e820, "the kernel's e820 map");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ACPI: RSDP 0x00000000000E0000 000024 (v02 MEMVSR)")),
        "the kernel found the RSDP memvisor put at 0xE0000:\n{}",
        lines.join("\n")
    );
    // Stopped by Ctrl-C: exit 130, the report with both regions where they were configured.
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("outcome: interrupted"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let regions = r["regions"].as_array().unwrap();
    assert_eq!(
        regions[0]["gpa"],
        serde_json::json!([[0u64, 0xc000_0000u64]]),
        "{stdout}"
    );
    assert_eq!(
        regions[1]["gpa"],
        serde_json::json!([[0x1_0000_0000u64, 0x1_4000_0000u64]])
    );
    // The guest touched little of its 4 GiB: the memory is mapped, not used.
    let resident: u64 = regions
        .iter()
        .map(|x| x["resident"].as_u64().unwrap())
        .sum();
    assert!(resident < 1 << 30, "resident {resident}");
    let exits = r["vcpus"][0]["exits"]["io_out"].as_u64().unwrap_or(0);
    assert!(
        exits as usize >= lines.iter().map(|l| l.len()).sum::<usize>(),
        "every console byte is a port write"
    );
}

/// Zero page, command line, initrd and entry state as the boot protocol wants them, read back
/// from guest memory after setup, for the bzImage and for the ELF vmlinux. Nothing runs.
#[test]
fn bzimage_and_vmlinux_are_loaded_per_the_boot_protocol() {
    let test = "bzimage_and_vmlinux_are_loaded_per_the_boot_protocol";
    if !kvm_or_skip(test) {
        return;
    }
    let Some(assets) = assets_or_skip(test) else {
        return;
    };
    let tmp = TempDir::new("linux-load");
    let image = std::fs::read(&assets.vmlinuz).unwrap();
    let initrd = std::fs::read(&assets.initramfs).unwrap();
    let cmdline = "console=ttyS0 memvisor.fill=1M";
    let setup = |kernel: &Path| {
        let ram = GuestRam::new(&[RegionConfig::anon(1 << 30)]).unwrap();
        let vm = Vm::new(&ram).unwrap();
        let irq = IrqChip::create(vm.shared_fd()).unwrap();
        let cfg = LinuxConfig {
            kernel: kernel.to_path_buf(),
            initrd: Some(assets.initramfs.clone()),
            cmdline: Some(cmdline.into()),
            console: Some(tmp.path().join("console.txt")),
        };
        let m = LinuxMachine::setup(&ram, &cfg, 2, true, irq, Devices::default()).unwrap();
        (ram, vm, m)
    };

    // bzImage: its setup header is kept, its protected-mode code sits at 1 MiB.
    let (ram, vm, m) = setup(&assets.vmlinuz);
    let mem = ram.memory();
    let mut zp = vec![0u8; 4096];
    mem.read_slice(&mut zp, GuestAddress(cpu::ZERO_PAGE_GPA))
        .unwrap();
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    assert_eq!(&zp[0x202..0x206], b"HdrS");
    assert_eq!(u16_at(&zp, 0x1fe), 0xaa55);
    assert_eq!(
        u16_at(&zp, 0x206),
        u16_at(&image, 0x206),
        "protocol version"
    );
    assert_eq!(u16_at(&zp, 0x236), u16_at(&image, 0x236), "xloadflags kept");
    assert_eq!(zp[0x210], 0xff, "type_of_loader");
    assert_eq!(zp[0x211] & 0x81, 0x81, "LOADED_HIGH | CAN_USE_HEAP");
    assert_eq!(u32_at(&zp, 0x228) as u64, cpu::CMDLINE_GPA);
    let mut cl = vec![0u8; cmdline.len() + 1];
    mem.read_slice(&mut cl, GuestAddress(cpu::CMDLINE_GPA))
        .unwrap();
    assert_eq!(&cl[..cmdline.len()], cmdline.as_bytes());
    assert_eq!(cl[cmdline.len()], 0);
    let (rd, rd_len) = (u32_at(&zp, 0x218) as u64, u32_at(&zp, 0x21c) as u64);
    assert_eq!(rd_len, initrd.len() as u64);
    assert_eq!(rd % 4096, 0);
    let top = (1u64 << 30).min(u32_at(&image, 0x22c) as u64 + 1);
    assert!(
        rd + rd_len <= top && rd + rd_len + 4096 > top,
        "initrd at the top of low RAM"
    );
    let mut back = vec![0u8; initrd.len()];
    mem.read_slice(&mut back, GuestAddress(rd)).unwrap();
    assert!(back == initrd, "initrd bytes in guest memory");
    let setup_bytes = (image[0x1f1] as usize + 1) * 512;
    let mut k = vec![0u8; 4096];
    mem.read_slice(&mut k, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(&k[..], &image[setup_bytes..setup_bytes + 4096]);
    assert_eq!(m.layout.entry, 0x10_0200, "startup_64");
    // RSDP where the zero page says.
    let rsdp = u64::from_le_bytes(zp[0x70..0x78].try_into().unwrap());
    let mut sig = [0u8; 8];
    mem.read_slice(&mut sig, GuestAddress(rsdp)).unwrap();
    assert_eq!(&sig, b"RSD PTR ");
    assert_eq!(zp[0x1e8], 4, "four e820 entries for one 1 GiB region");
    // vCPU 0 at the 64-bit entry with RSI at the zero page; vCPU 1 waits for SIPI.
    let v0 = m.create_vcpu(&vm, 0).unwrap();
    let regs = v0.get_regs().unwrap();
    assert_eq!((regs.rip, regs.rsi), (0x10_0200, cpu::ZERO_PAGE_GPA));
    let sregs = v0.get_sregs().unwrap();
    assert_eq!(sregs.efer & 0x500, 0x500, "long mode active");
    assert_eq!((sregs.cs.selector, sregs.cs.l), (0x10, 1));
    m.create_vcpu(&vm, 1).unwrap();
    drop((v0, m, vm, ram));

    // ELF vmlinux: loaded at its physical addresses, entered at e_entry, no setup header.
    let elf = std::fs::read(&assets.vmlinux).unwrap();
    let entry = u64::from_le_bytes(elf[24..32].try_into().unwrap());
    let (ram, _vm, m) = setup(&assets.vmlinux);
    assert_eq!(m.layout.entry, entry);
    // The first program header's segment is at its p_paddr.
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let p_offset = u64::from_le_bytes(elf[phoff + 8..phoff + 16].try_into().unwrap()) as usize;
    let p_paddr = u64::from_le_bytes(elf[phoff + 24..phoff + 32].try_into().unwrap());
    let mut k = vec![0u8; 4096];
    ram.memory()
        .read_slice(&mut k, GuestAddress(p_paddr))
        .unwrap();
    assert_eq!(&k[..], &elf[p_offset..p_offset + 4096]);
    let mut zp = vec![0u8; 4096];
    ram.memory()
        .read_slice(&mut zp, GuestAddress(cpu::ZERO_PAGE_GPA))
        .unwrap();
    assert_eq!(&zp[0x202..0x206], b"HdrS");
    assert_eq!(u32_at(&zp, 0x21c) as usize, initrd.len());
}

fn run_tiny(code: &[u8], extra: &[&str]) -> (std::process::Output, Vec<u8>) {
    run_tiny_with(Command::new(env!("CARGO_BIN_EXE_memvisor")), code, extra)
}

/// A tiny kernel's code that, for each PCI slot in `slots`, reads the ID dword of function 0
/// through conf1 and writes its 4 bytes to COM1, then resets the machine.
fn pci_ids_code(slots: std::ops::RangeInclusive<u32>) -> Vec<u8> {
    let mut code = Vec::new();
    for slot in slots {
        let addr = 0x8000_0000u32 | (slot << 11);
        code.extend_from_slice(&[0x66, 0xba, 0xf8, 0x0c]); // mov dx, 0xcf8
        code.push(0xb8); // mov eax, imm32
        code.extend_from_slice(&addr.to_le_bytes());
        code.push(0xef); // out dx, eax
        code.extend_from_slice(&[0x66, 0xba, 0xfc, 0x0c, 0xed]); // mov dx, 0xcfc; in eax, dx
        code.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
        for _ in 0..3 {
            code.extend_from_slice(&[0xee, 0xc1, 0xe8, 0x08]); // out dx, al; shr eax, 8
        }
        code.push(0xee);
    }
    code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd]); // reset
    code
}

/// [`run_tiny`] through `cmd` (the memvisor binary, possibly behind `ip netns exec`).
fn run_tiny_with(mut cmd: Command, code: &[u8], extra: &[&str]) -> (std::process::Output, Vec<u8>) {
    let tmp = TempDir::new("linux-tiny");
    let kernel = tmp.path().join("tiny.elf");
    std::fs::write(&kernel, common::tiny_kernel(code)).unwrap();
    let console = tmp.path().join("console.txt");
    let out = cmd
        .arg("run")
        .arg("--kernel")
        .arg(&kernel)
        .arg("--console")
        .arg(&console)
        .args(["-m", "64M", "--vcpus", "2", "--timeout", "60"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out, std::fs::read(&console).unwrap_or_default())
}

/// A kernel that prints on COM1 and then resets the machine through the i8042 (what Linux does
/// with `reboot=k`), and one that triple-faults (Linux's last resort): both end the run cleanly.
#[test]
fn guest_reboot_by_i8042_or_triple_fault_ends_the_run_cleanly() {
    if !kvm_or_skip("guest_reboot_by_i8042_or_triple_fault_ends_the_run_cleanly") {
        return;
    }
    let print_and_reset = [
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'h', 0xee, // mov al, 'h'; out dx, al
        0xb0, b'i', 0xee, // 'i'
        0xb0, b'\n', 0xee, // '\n'
        0xb0, 0xfe, 0xe6, 0x64, // mov al, 0xfe; out 0x64, al (pulse reset)
        0xf4, 0xeb, 0xfd, // hlt; jmp back to hlt
    ];
    let (out, console) = run_tiny(&print_and_reset, &[]);
    let text = common::text(&out);
    assert_eq!(console, b"hi\n", "COM1 output in the console file");
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("outcome: guest stopped: the guest reset the machine through the i8042"),
        "{text}"
    );
    assert!(
        text.contains("io_out=4"),
        "three bytes and the reset: {text}"
    );
    // ud2 with an empty IDT: #UD, #DF, triple fault -> KVM_EXIT_SHUTDOWN.
    let (out, _) = run_tiny(&[0x0f, 0x0b], &[]);
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("outcome: guest stopped") && text.contains("KVM_EXIT_SHUTDOWN"),
        "{text}"
    );
    assert!(text.contains("shutdown=1"), "{text}");
}

/// `int3` in guest ring 0 reaches the guest's own `#BP` handler, and returns to the instruction
/// after it; a `fwait` with no x87 exception pending is a no-op; other instructions KVM cannot
/// emulate end the run with their bytes in the message. On hosts without VMX/SVM KVM
/// stops on both with an internal error and memvisor completes them (emulation assists, counted
/// in the report); elsewhere the CPU does it. A tiny kernel builds an IDT with a `#BP` gate whose
/// handler writes `B` to COM1, runs `int3; int3; fwait`, writes `ok` and resets:
///
/// ```text
///   lea idt(%rip), %rax;  lea handler(%rip), %rbx      # idt: 4 zeroed gates after the code
///   mov %bx, 0x30(%rax);  movw $0x10, 0x32(%rax);  movw $0x8e00, 0x34(%rax)
///   shr $16, %rbx;  mov %bx, 0x36(%rax);  shr $16, %rbx;  mov %ebx, 0x38(%rax)
///   sub $16, %rsp;  movw $63, (%rsp);  mov %rax, 2(%rsp);  lidt (%rsp);  add $16, %rsp
///   int3;  int3;  fwait
///   mov $0x3f8, %dx;  'o', 'k', '\n' out;  mov $0xfe, %al;  out %al, $0x64;  1: hlt; jmp 1b
/// handler: push %rax; push %rdx; mov $0x3f8, %dx; mov $'B', %al; out %al, %dx;
///   pop %rdx; pop %rax; iretq
/// ```
#[test]
fn int3_in_ring_0_reaches_the_guests_handler() {
    let test = "int3_in_ring_0_reaches_the_guests_handler";
    if !kvm_or_skip(test) {
        return;
    }
    let mut code = vec![
        0x48, 0x8d, 0x05, 0x69, 0x00, 0x00, 0x00, // lea idt(%rip), %rax (idt at 0x70)
        0x48, 0x8d, 0x1d, 0x4d, 0x00, 0x00, 0x00, // lea handler(%rip), %rbx
        0x66, 0x89, 0x58, 0x30, 0x66, 0xc7, 0x40, 0x32, 0x10, 0x00, 0x66, 0xc7, 0x40, 0x34, 0x00,
        0x8e, 0x48, 0xc1, 0xeb, 0x10, 0x66, 0x89, 0x58, 0x36, 0x48, 0xc1, 0xeb, 0x10, 0x89, 0x58,
        0x38, // gate 3
        0x48, 0x83, 0xec, 0x10, 0x66, 0xc7, 0x04, 0x24, 0x3f, 0x00, 0x48, 0x89, 0x44, 0x24, 0x02,
        0x0f, 0x01, 0x1c, 0x24, 0x48, 0x83, 0xc4, 0x10, // lidt
        0xcc, 0xcc, 0x9b, // int3; int3; fwait
        0x66, 0xba, 0xf8, 0x03, 0xb0, b'o', 0xee, 0xb0, b'k', 0xee, 0xb0, b'\n',
        0xee, // "ok\n"
        0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd, // reset
        0x50, 0x52, 0x66, 0xba, 0xf8, 0x03, 0xb0, b'B', 0xee, 0x5a, 0x58, 0x48,
        0xcf, // handler
    ];
    assert_eq!(code.len(), 0x68);
    code.resize(0x70 + 4 * 16, 0);
    let t0 = Instant::now();
    let (out, console) = run_tiny(&code, &[]);
    let text = common::text(&out);
    assert_eq!(
        String::from_utf8_lossy(&console),
        "BBok\n",
        "two #BP handler runs, each returning after its int3; {text}"
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    let hardware = memvisor::vmm::vm::HostVirt::detect().hardware;
    if !hardware {
        assert!(
            text.contains("emulation assists fwait=1 int3=2"),
            "assists counted per vCPU and kind: {text}"
        );
    }
    // Any other instruction KVM cannot emulate still ends the run, naming its bytes:
    // `popcnt eax, eax` (the kernel is told `clearcpuid=popcnt` for this), then reset.
    let (out, _) = run_tiny(
        &[
            0xf3, 0x0f, 0xb8, 0xc0, 0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd,
        ],
        &[],
    );
    let text = common::text(&out);
    if hardware {
        assert_eq!(out.status.code(), Some(0), "{text}");
    } else {
        assert_ne!(out.status.code(), Some(0), "{text}");
        assert!(
            text.contains("KVM internal error") && text.contains("(bytes f3 0f b8 c0 "),
            "{text}"
        );
    }
    println!("{test}: {:.1} s", t0.elapsed().as_secs_f64());
}

/// With `--balloon`, a Linux guest has a PCI bus on configuration mechanism #1 with the balloon
/// as a modern virtio-pci function (vendor 0x1AF4, device 0x1045) in slot 1: a tiny kernel reads
/// the ID dword of 00:01.0 and writes it to COM1.
#[test]
fn linux_guest_with_a_balloon_has_it_on_pci() {
    if !kvm_or_skip("linux_guest_with_a_balloon_has_it_on_pci") {
        return;
    }
    let read_id_of_slot_1 = [
        0x66, 0xba, 0xf8, 0x0c, // mov dx, 0xcf8
        0xb8, 0x00, 0x08, 0x00, 0x80, // mov eax, 0x80000800 (bus 0, device 1, register 0)
        0xef, // out dx, eax
        0x66, 0xba, 0xfc, 0x0c, // mov dx, 0xcfc
        0xed, // in eax, dx
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, 0xc1, 0xe8, 0x08, // out dx, al; shr eax, 8
        0xee, 0xc1, 0xe8, 0x08, 0xee, 0xc1, 0xe8, 0x08, 0xee, // three more bytes
        0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd, // reset
    ];
    let (out, console) = run_tiny(&read_id_of_slot_1, &["--balloon", "amount_mib=0"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::text(&out));
    assert_eq!(console, [0xf4, 0x1a, 0x45, 0x10], "virtio-pci balloon ID");
    // Without --balloon there is no PCI bus: the read is unclaimed (all ones).
    let (_, console) = run_tiny(&read_id_of_slot_1, &[]);
    assert_eq!(console, [0xff; 4]);
}

/// The MemTotal/MemFree line /init prints: `memvisor-init: MemTotal: N kB MemFree: N kB`.
fn last_meminfo(lines: &[String]) -> Option<(u64, u64)> {
    lines.iter().rev().find_map(|l| {
        let rest = l.strip_prefix("memvisor-init: MemTotal: ")?;
        let mut w = rest.split_whitespace();
        let total = w.next()?.parse().ok()?;
        let free = w.nth(2)?.parse().ok()?;
        Some((total, free))
    })
}

fn rss_kib(pid: u32) -> u64 {
    common::proc_status_kib(pid, "VmRSS:").unwrap_or(0)
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn full_boot_to_init_with_the_balloon() {
    let test = "full_boot_to_init_with_the_balloon";
    let forced = std::env::var("MEMVISOR_FULL_LINUX").is_ok_and(|v| v == "1");
    if !forced && !hardware_virtualisation() {
        skip(test, "needs hardware virtualisation (vmx/svm in /proc/cpuinfo and kvm_intel/kvm_amd loaded): without it KVM emulates guest ring 0 and leaves the system calls of Debian's userspace half done (the patched test kernel's test covers the balloon here); MEMVISOR_FULL_LINUX=1 forces it");
        return;
    }
    if !kvm_or_skip(test) {
        return;
    }
    let Some(assets) = assets_or_skip(test) else {
        return;
    };
    let tmp = TempDir::new("linux-full");
    let console = tmp.path().join("console.txt");
    let sock = tmp.path().join("api.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .arg("run")
        .arg("--kernel")
        .arg(&assets.vmlinuz)
        .arg("--initrd")
        .arg(&assets.initramfs)
        .args([
            "--cmdline",
            "console=ttyS0 reboot=k panic=1 memvisor.fill=256M memvisor.release=1 memvisor.report=1",
        ])
        .args(["--vcpus", "2", "-m", "1G", "--timeout", "600"])
        .args(["--balloon", "amount_mib=0,stats_polling_interval_s=1"])
        .arg("--api-sock")
        .arg(&sock)
        .arg("--console")
        .arg(&console)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut vm = Running(Some(child));
    let t0 = Instant::now();
    let lines = wait_for("/init to report", Duration::from_secs(300), || {
        let l = console_lines(&console);
        assert!(
            vm.child().try_wait().unwrap().is_none(),
            "memvisor ended early; console:\n{}",
            l.join("\n")
        );
        l.iter().any(|x| x == "memvisor-init: ready").then_some(l)
    });
    println!("booted to /init in {:.1} s", t0.elapsed().as_secs_f64());
    let (total0, _) = last_meminfo(&lines).expect("/init printed MemTotal");
    assert!(
        total0 > 700 * 1024 && total0 <= 1024 * 1024,
        "MemTotal {total0} kB for 1 GiB of RAM"
    );
    assert!(lines
        .iter()
        .any(|l| l == "memvisor-init: loaded virtio_balloon.ko"));
    let bound = lines.iter().any(|l| {
        l.starts_with("memvisor-init: virtio device") && l.ends_with("driver virtio_balloon")
    });
    assert!(
        bound,
        "virtio_balloon did not bind to the virtio-pci balloon; console:\n{}",
        lines.join("\n")
    );
    // Inflate by 256 MiB: the guest gives the pages (MemTotal or, with deflate-on-oom, MemFree
    // drops) and the host gets the memory back.
    let rss0 = rss_kib(pid);
    let set = |mib: u32| {
        let out = Command::new(env!("CARGO_BIN_EXE_memvisor"))
            .args(["balloon", "set", &format!("{mib}M"), "--api-sock"])
            .arg(&sock)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::text(&out));
    };
    set(256);
    let (total1, free1) = wait_for("the guest to inflate", Duration::from_secs(120), || {
        let (t, f) = last_meminfo(&console_lines(&console))?;
        (total0 - t >= 250 * 1024 || total0.saturating_sub(f) >= 250 * 1024).then_some((t, f))
    });
    println!("inflated: MemTotal {total1} kB MemFree {free1} kB (was MemTotal {total0} kB)");
    let rss1 = wait_for("host RSS to drop", Duration::from_secs(60), || {
        let r = rss_kib(pid);
        (rss0.saturating_sub(r) >= 200 * 1024).then_some(r)
    });
    println!("host RSS {rss0} kB -> {rss1} kB");
    set(0);
    wait_for("the guest to deflate", Duration::from_secs(120), || {
        let (t, f) = last_meminfo(&console_lines(&console))?;
        // MemTotal comes back (or, with deflate-on-oom, MemFree grows by what was given).
        let restored = if total0 - total1 >= 250 * 1024 {
            t + 16 * 1024 >= total0
        } else {
            f >= free1 + 200 * 1024
        };
        restored.then_some(())
    });
    let out = vm.interrupt(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", common::text(&out));
}

/// The test kernel's directory (`scripts/guest-assets.sh --test-dir`: cached builds only; the
/// build takes minutes, so a test never starts it), or a skip line saying how to build it.
fn test_kernel_or_skip(test: &str) -> Option<(PathBuf, PathBuf)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/guest-assets.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--test-dir")
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            Some((dir.join("vmlinux"), dir.join("initramfs.cpio")))
        }
        _ => {
            skip(
                test,
                "the Linux test kernel is not built: run scripts/guest-assets.sh (once, ~5 min; .ci/run does)",
            );
            None
        }
    }
}

/// The kernel command line of the test guests.
const TEST_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 printk.devkmsg=on";

/// The test guest (`scripts/guest/test-init.sh`) behind memvisor's console: commands go in
/// through memvisor's stdin, answers come back as `memvisor-guest: ` lines in the console file.
struct TestGuest {
    vm: Running,
    stdin: std::process::ChildStdin,
    console: PathBuf,
    /// Guest lines already consumed.
    seen: usize,
}

impl TestGuest {
    /// Boots the test kernel with 1 vCPU, the API socket `api.sock` and the console in `tmp`,
    /// plus `extra` arguments (memory, balloon).
    fn start(vmlinux: &Path, initramfs: &Path, tmp: &TempDir, extra: &[&str]) -> TestGuest {
        let cmd = Command::new(env!("CARGO_BIN_EXE_memvisor"));
        Self::start_with(cmd, vmlinux, initramfs, tmp, extra)
    }

    /// [`TestGuest::start`] through `cmd` (the memvisor binary, possibly behind `ip netns
    /// exec`, which execs it: the child is memvisor itself).
    fn start_with(
        cmd: Command,
        vmlinux: &Path,
        initramfs: &Path,
        tmp: &TempDir,
        extra: &[&str],
    ) -> TestGuest {
        Self::start_cmdline(cmd, TEST_CMDLINE, vmlinux, initramfs, tmp, extra)
    }

    /// [`TestGuest::start_with`] with the kernel command line `cmdline`.
    fn start_cmdline(
        mut cmd: Command,
        cmdline: &str,
        vmlinux: &Path,
        initramfs: &Path,
        tmp: &TempDir,
        extra: &[&str],
    ) -> TestGuest {
        let console = tmp.path().join("console.txt");
        let mut child = cmd
            .arg("run")
            .arg("--kernel")
            .arg(vmlinux)
            .arg("--initrd")
            .arg(initramfs)
            .args(["--cmdline", cmdline])
            .args(["--vcpus", "1", "--timeout", "1800"])
            .args(extra)
            .arg("--api-sock")
            .arg(tmp.path().join("api.sock"))
            .arg("--console")
            .arg(&console)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        TestGuest {
            vm: Running(Some(child)),
            stdin,
            console,
            seen: 0,
        }
    }

    fn pid(&mut self) -> u32 {
        self.vm.child().id()
    }

    /// The guest's own lines (`memvisor-guest: ` removed), in order.
    fn lines(&self) -> Vec<String> {
        console_lines(&self.console)
            .into_iter()
            .filter_map(|l| {
                l.find("memvisor-guest: ")
                    .map(|at| l[at + "memvisor-guest: ".len()..].to_string())
            })
            .collect()
    }

    /// Waits for the next guest line starting with `prefix` (lines before it are consumed).
    fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let lines = self.lines();
            if let Some(i) = lines[self.seen.min(lines.len())..]
                .iter()
                .position(|l| l.starts_with(prefix))
            {
                self.seen += i + 1;
                return lines[self.seen - 1].clone();
            }
            let alive = self.vm.child().try_wait().unwrap().is_none();
            if !alive || t0.elapsed() > timeout {
                panic!(
                    "no guest line `{prefix}` after {:.0} s (memvisor {}); console:\n{}",
                    t0.elapsed().as_secs_f64(),
                    if alive { "running" } else { "ended" },
                    String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default())
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn send(&mut self, line: &str) {
        use std::io::Write;
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        self.stdin.flush().unwrap();
    }

    /// The guest's `/proc/interrupts` now, one `irq <line>` per line.
    fn interrupts(&mut self) -> Vec<String> {
        let from = self.lines().len();
        self.send("interrupts");
        self.send("echo interrupts listed");
        self.expect("echo interrupts listed", Duration::from_secs(60));
        self.lines()[from..].to_vec()
    }

    /// `meminfo`: (MemTotal, MemFree) in kB.
    fn meminfo(&mut self) -> (u64, u64) {
        self.send("meminfo");
        let l = self.expect("meminfo ", Duration::from_secs(60));
        let field = |k: &str| -> u64 {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w
                .iter()
                .position(|x| *x == k)
                .unwrap_or_else(|| panic!("{k} in {l}"));
            w[i + 1].parse().unwrap()
        };
        (field("MemTotal:"), field("MemFree:"))
    }
}

/// The count (of the first CPU) in an `irq <line>` of the guest's `/proc/interrupts`.
fn irq_count(line: &str) -> u64 {
    line.split_whitespace()
        .nth(2)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("a count in {line}"))
}

/// The `field` part (`disk`, `net`) of the device with id `id` in `GET /vm`.
fn vm_device(sock: &Path, id: &str, field: &str) -> serde_json::Value {
    let (status, v) = api(sock, "GET", "/vm", None);
    assert_eq!(status, 200, "{v}");
    v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("device {id} in {v}"))[field]
        .clone()
}

fn api(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let (status, text) = memvisor::control::api::client::request(sock, method, path, body).unwrap();
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, v)
}

/// The balloon's line in `/init`'s virtio listing (`virtio ... device 0x0005 ... driver ...
/// FEATURES`) and its negotiated features as sysfs prints them: one `0`/`1` character per bit.
fn balloon_line(lines: &[String]) -> (String, Vec<u8>) {
    let line = lines
        .iter()
        .find(|l| l.starts_with("virtio ") && l.contains("device 0x0005"))
        .unwrap_or_else(|| panic!("a virtio balloon: {lines:#?}"))
        .clone();
    let features = line.rsplit(' ').next().unwrap().as_bytes().to_vec();
    (line, features)
}

/// `actual_mib` from `GET /balloon/statistics` (Firecracker's field), once statistics exist.
fn balloon_actual_mib(sock: &Path) -> Option<u64> {
    let (status, v) = api(sock, "GET", "/balloon/statistics", None);
    (status == 200).then(|| v["actual_mib"].as_u64()).flatten()
}

/// One boot of the test kernel (to `/init` in ~3-4 min where KVM emulates guest ring 0) for
/// everything the Linux driver and userspace can show here:
/// - the serial console works for userspace: `/proc/interrupts` has IRQ 4 for ttyS0, a write
///   to `/dev/ttyS0` succeeds, and commands typed on memvisor's stdin reach the guest's shell;
/// - the kernel's `virtio_balloon` binds to memvisor's virtio-pci balloon with the statistics
///   feature, and its statistics reach `GET /balloon/statistics` (they never did before
///   buffers made available before DRIVER_OK were processed at activation);
/// - `PATCH /balloon` 32 MiB: `actual_mib` reaches 32, the VMM's resident memory drops by about
///   that much (guest RAM is preallocated), the guest's MemTotal drops by exactly 32 MiB;
///   deflating restores MemTotal;
/// - the driver's interrupts are MSI-X: its inflate vector (a GSI route with an irqfd in
///   memvisor) counted interrupts in the guest's `/proc/interrupts`.
#[test]
fn test_kernel_balloon_and_console_end_to_end() {
    let test = "test_kernel_balloon_and_console_end_to_end";
    if !kvm_or_skip(test) {
        return;
    }
    let Some((vmlinux, initramfs)) = test_kernel_or_skip(test) else {
        return;
    };
    let tmp = TempDir::new("linux-test-guest");
    let sock = tmp.path().join("api.sock");
    let t0 = Instant::now();
    let mut g = TestGuest::start(
        &vmlinux,
        &initramfs,
        &tmp,
        &[
            "-m",
            "size=256M,prealloc=on",
            "--balloon",
            "amount_mib=0,stats_polling_interval_s=1",
        ],
    );
    let pid = g.pid();
    // ~80-120 s here on a quiet machine; 500 s was seen with two boots and a kernel build
    // sharing 2 busy cores.
    g.expect("ready", Duration::from_secs(900));
    println!(
        "{test}: booted to /init and its first lines in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    let lines = g.lines();
    let has = |p: &str| lines.iter().any(|l| l.starts_with(p));
    assert!(has("console ok"), "userspace writes to the console");
    assert!(has("write to /dev/ttyS0 ok"), "{lines:#?}");
    // ttyS0 has its interrupt: ISA IRQ 4, I/O APIC pin 4 (edge).
    let irq4 = lines
        .iter()
        .find(|l| l.starts_with("irq ") && l.contains("ttyS0"))
        .unwrap_or_else(|| panic!("ttyS0 in /proc/interrupts: {lines:#?}"));
    assert!(irq4.contains(" 4-edge"), "{irq4}");
    println!("{test}: {irq4}");
    let (virtio, features) = balloon_line(&lines);
    assert!(virtio.contains("driver virtio_balloon"), "{virtio}");
    // Negotiated features: VERSION_1 and STATS_VQ.
    assert_eq!(features.get(32), Some(&b'1'), "VERSION_1: {virtio}");
    assert_eq!(features.get(1), Some(&b'1'), "STATS_VQ: {virtio}");
    // Console input reaches the guest (memvisor's test agent, or /init's shell without it).
    g.send("echo over the serial console");
    g.expect("echo over the serial console", Duration::from_secs(60));
    let agent = g.lines().iter().any(|l| l == "ready (memvisor-agent)");
    assert!(
        agent,
        "the test agent runs (rebuild with scripts/guest-assets.sh)"
    );
    // 4 MiB of guest data written with a pattern, to check after inflating and deflating
    // (each new guest page costs ~12 ms of emulated kernel work here: 16 MiB took 51 s).
    let t_fill = Instant::now();
    g.send("fill 4");
    g.expect("filled 4", Duration::from_secs(120));
    println!(
        "{test}: agent filled 4 MiB in {:.1} s",
        t_fill.elapsed().as_secs_f64()
    );
    let verified = |g: &mut TestGuest| {
        g.send("verify");
        let l = g.expect("verified ", Duration::from_secs(60));
        assert_eq!(l, "verified 4194304 mismatches 0");
    };
    verified(&mut g);
    let t_cmd = Instant::now();
    let (total0, _) = g.meminfo();
    println!(
        "{test}: meminfo round trip {:.1} s; MemTotal {total0} kB",
        t_cmd.elapsed().as_secs_f64()
    );
    // The driver's statistics arrive (a fresh buffer every polling interval).
    let stats = wait_for("balloon statistics", Duration::from_secs(120), || {
        let (status, v) = api(&sock, "GET", "/balloon/statistics", None);
        (status == 200).then_some(v)
    });
    // They agree with the guest's own /proc/meminfo (same counters, read a moment apart; the
    // tags a tinyconfig kernel sends: free, total, available memory and disk caches).
    let (_, free_now) = g.meminfo();
    let stat = |k: &str| {
        stats[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in the statistics: {stats}"))
    };
    let (total_stat, free_stat) = (stat("total_memory"), stat("free_memory"));
    let (avail_stat, caches_stat) = (stat("available_memory"), stat("disk_caches"));
    assert_eq!(total_stat, total0 * 1024, "total_memory: {stats}");
    assert!(
        free_stat.abs_diff(free_now * 1024) <= 8 << 20,
        "free_memory {free_stat} vs MemFree {free_now} kB"
    );
    assert!(
        avail_stat <= total_stat && caches_stat < total_stat,
        "{stats}"
    );
    println!("{test}: statistics {stats}");
    // Inflate by 32 MiB.
    let rss0 = rss_kib(pid);
    let t_inflate = Instant::now();
    let (status, v) = api(&sock, "PATCH", "/balloon", Some(r#"{"amount_mib": 32}"#));
    assert_eq!(status, 204, "{v}");
    wait_for("actual_mib 32", Duration::from_secs(300), || {
        (balloon_actual_mib(&sock)? == 32).then_some(())
    });
    println!(
        "{test}: inflated 32 MiB in {:.0} s",
        t_inflate.elapsed().as_secs_f64()
    );
    let rss1 = wait_for("host residency to drop", Duration::from_secs(30), || {
        let r = rss_kib(pid);
        (rss0.saturating_sub(r) >= 28 * 1024).then_some(r)
    });
    let (total1, _) = g.meminfo();
    assert_eq!(
        total0 - total1,
        32 * 1024,
        "MemTotal {total0} -> {total1} kB"
    );
    verified(&mut g);
    println!("{test}: host RSS {rss0} -> {rss1} kB, MemTotal {total0} -> {total1} kB");
    // Deflate.
    let t_deflate = Instant::now();
    let (status, v) = api(&sock, "PATCH", "/balloon", Some(r#"{"amount_mib": 0}"#));
    assert_eq!(status, 204, "{v}");
    wait_for("actual_mib 0", Duration::from_secs(300), || {
        (balloon_actual_mib(&sock)? == 0).then_some(())
    });
    let (total2, _) = g.meminfo();
    assert_eq!(total2, total0, "MemTotal restored");
    verified(&mut g);
    // The balloon's interrupts were MSI-X messages, i.e. irqfd writes on memvisor's GSI routes:
    // the guest counted them on the inflate queue's vector.
    let listed = g.interrupts();
    let inflate = listed
        .iter()
        .find(|l| l.starts_with("irq ") && l.contains("virtio") && l.contains("inflate"))
        .unwrap_or_else(|| panic!("the inflate queue's vector in /proc/interrupts: {listed:#?}"));
    assert!(inflate.contains("MSI"), "an MSI-X vector: {inflate}");
    let count = irq_count(inflate);
    assert!(count > 0, "inflate interrupts taken: {inflate}");
    println!("{test}: {inflate}");
    g.send("free");
    g.expect("freed 4", Duration::from_secs(60));
    println!(
        "{test}: deflated in {:.0} s; whole test {:.0} s",
        t_deflate.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    let out = g.vm.interrupt(Duration::from_secs(30));
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(130), "{text}");
    if !memvisor::vmm::vm::HostVirt::detect().hardware {
        assert!(text.contains("emulation assists"), "{text}");
    }
}

/// Free page reporting and deflate-on-oom with the kernel's own driver (a second boot, run
/// beside the first):
/// - the guest's test agent touches 24 MiB (the VMM's resident memory grows), frees it, and the
///   driver reports the freed pages, so the host's residency drops again with no balloon
///   target;
/// - the balloon is inflated until the guest has ~8 MiB free, then the agent allocates 16 MiB:
///   the guest runs out of memory, the driver gives balloon pages back (`actual` drops below
///   the target), the allocation succeeds and its data verifies; MemTotal does not move
///   (with deflate-on-oom the driver leaves it alone).
#[test]
fn test_kernel_free_page_reporting_and_deflate_on_oom() {
    let test = "test_kernel_free_page_reporting_and_deflate_on_oom";
    if !kvm_or_skip(test) {
        return;
    }
    let Some((vmlinux, initramfs)) = test_kernel_or_skip(test) else {
        return;
    };
    let tmp = TempDir::new("linux-test-fpr");
    let sock = tmp.path().join("api.sock");
    let t0 = Instant::now();
    let mut g = TestGuest::start(
        &vmlinux,
        &initramfs,
        &tmp,
        &[
            "-m",
            "160M",
            "--balloon",
            "amount_mib=0,free_page_reporting=on,deflate_on_oom=on,stats_polling_interval_s=1",
        ],
    );
    let pid = g.pid();
    let ready = g.expect("ready", Duration::from_secs(900));
    assert_eq!(ready, "ready (memvisor-agent)");
    let (virtio, features) = balloon_line(&g.lines());
    // VIRTIO_BALLOON_F_DEFLATE_ON_OOM is bit 2, VIRTIO_BALLOON_F_REPORTING bit 5.
    assert_eq!(features.get(2), Some(&b'1'), "DEFLATE_ON_OOM: {virtio}");
    assert_eq!(features.get(5), Some(&b'1'), "REPORTING: {virtio}");
    // Let the reporting of what was free at boot settle, then touch 24 MiB.
    std::thread::sleep(Duration::from_secs(5));
    let rss0 = rss_kib(pid);
    g.send("fill 24");
    g.expect("filled 24", Duration::from_secs(300));
    // Growth is less than 24 MiB: the guest also reuses pages it touched at boot (freed
    // pieces smaller than the 2 MiB the driver reports stay resident).
    let rss1 = rss_kib(pid);
    let grown = rss1.saturating_sub(rss0);
    assert!(
        grown >= 12 * 1024,
        "touching 24 MiB grew residency {rss0} -> {rss1} kB"
    );
    let t_free = Instant::now();
    g.send("free");
    g.expect("freed 24", Duration::from_secs(60));
    let rss2 = wait_for("freed pages reported", Duration::from_secs(120), || {
        let r = rss_kib(pid);
        (rss1.saturating_sub(r) >= (grown / 2).max(8 * 1024)).then_some(r)
    });
    println!(
        "{test}: residency {rss0} -> {rss1} (24 MiB touched) -> {rss2} kB {:.0} s after the free; whole test {:.0} s",
        t_free.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    let (status, v) = api(&sock, "GET", "/balloon", None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["amount_mib"].as_u64(), Some(0), "no balloon target: {v}");

    // Deflate-on-oom: leave the guest ~8 MiB, then allocate 16 MiB.
    let (total0, free0) = g.meminfo();
    let target = (free0 / 1024).saturating_sub(8);
    let t_inflate = Instant::now();
    let body = format!(r#"{{"amount_mib": {target}}}"#);
    let (status, v) = api(&sock, "PATCH", "/balloon", Some(&body));
    assert_eq!(status, 204, "{v}");
    wait_for(
        "the balloon to reach its target",
        Duration::from_secs(300),
        || (balloon_actual_mib(&sock)? == target).then_some(()),
    );
    let (total1, free1) = g.meminfo();
    println!(
        "{test}: inflated {target} MiB in {:.0} s: MemTotal {total0} -> {total1} kB, MemFree {free0} -> {free1} kB",
        t_inflate.elapsed().as_secs_f64()
    );
    assert_eq!(total1, total0, "deflate-on-oom leaves MemTotal alone");
    let t_fill = Instant::now();
    g.send("fill 16");
    g.expect("filled 16", Duration::from_secs(400));
    g.send("verify");
    assert_eq!(
        g.expect("verified ", Duration::from_secs(60)),
        "verified 16777216 mismatches 0"
    );
    let actual = wait_for("the driver to deflate", Duration::from_secs(60), || {
        balloon_actual_mib(&sock).filter(|a| *a < target)
    });
    println!(
        "{test}: 16 MiB allocated and verified in {:.0} s; the driver deflated {target} -> {actual} MiB; whole test {:.0} s",
        t_fill.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    let out = g.vm.interrupt(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", common::text(&out));
}

#[path = "linux/disk.rs"]
mod disk;
#[path = "linux/intx.rs"]
mod intx;
#[path = "linux/net.rs"]
mod net;
