//! memvisor: a KVM virtual machine monitor built around guest memory and memory overcommit.
//!
//! The modules form layers; each uses only the layers listed before it (checked by
//! `tests/layout.rs`, which fails on an import that points up a layer):
//! 1. [`abi`], [`config`]: what the user asked for (options, sizes, the built-in guest's
//!    [`config::workload`], the Linux boot request), parsed and checked before anything runs;
//! 2. [`seccomp`]: the per-thread seccomp filters (least privilege);
//!    [`host`]: host-wide settings memvisor manages itself (swap devices, zram, swap files);
//! 3. [`memory`]: owns guest RAM (every mmap/madvise/fallocate/userfaultfd call);
//! 4. [`devices`]: the I/O bus, the virtio transports (MMIO, PCI), the balloon and the disks,
//!    and the device event thread that serves them;
//! 5. [`vmm`]: the KVM VM and its memslots, its GSI routing table (MSI routes, irqfds), CPUID,
//!    vCPU threads and exit accounting, emulation assists, KVM's own statistics, the
//!    working-set estimate from KVM's dirty log, the built-in guest's boot;
//! 6. [`linux`]: booting a Linux kernel (boot protocol, ACPI, irqchip, console, its device bus);
//! 7. [`report`]: what a run produced ([`report::run`]), GPA→HPA maps ([`report::mappings`]),
//!    overcommit figures ([`report::overcommit`]) and the runtime directory where running VMs
//!    register ([`report::registry`]);
//! 8. [`control`]: the HTTP API ([`control::api`]), the VMM's answers to it
//!    ([`control::vmm_api`]), per-VM reclaim and the resident limit ([`control::reclaim`]),
//!    host-wide collection over it and the balloon controller ([`control::balance`]);
//! 9. [`runner`]: wires one VM together from all of the above and runs it to the end;
//! 10. [`bench`]: the benchmarks behind `memvisor bench` (the CLI itself is the binary's `cmd`).
#![deny(missing_docs)]

/// The ABI shared with the built-in guest (`guest/abi.rs`, compiled into both).
#[path = "../guest/abi.rs"]
pub mod abi;
pub mod bench;
pub mod config;
pub mod control;
pub mod devices;
pub mod host;
pub mod linux;
pub mod memory;
pub mod report;
pub mod runner;
pub mod seccomp;
pub mod vmm;
