//! memvisor: a KVM virtual machine monitor built around guest memory and memory overcommit.
//!
//! Where things live:
//! - [`config`], [`workload`]: what the user asked for, parsed and checked before anything runs;
//! - [`memory`]: owns guest RAM (every mmap/madvise/fallocate/userfaultfd call);
//! - [`vm`], [`cpuid`]: the KVM VM, memslots and what the guest CPU looks like;
//! - [`vcpu`]: vCPU threads, exit accounting, pause/resume/stop;
//! - [`boot`]: the embedded built-in guest and the 64-bit machine state it starts in;
//! - [`linux`]: booting a Linux kernel (boot protocol, ACPI, irqchip, console, its device bus);
//! - [`devices`]: the I/O bus and device models wired to it;
//! - [`runner`]: runs a VM to the end; [`report`]: what a run produced;
//! - [`mappings`]: GPA→HPA maps; [`overcommit`]: per-VM and host-wide overcommit figures;
//!   [`registry`]: the runtime directory where running VMs register; [`kvm_stats`]: KVM's
//!   own counters for a VM (in-kernel exits, MMU faults, 4K/2M/1G mappings);
//! - [`reclaim`]: per-VM reclaim to host swap and the standing resident limit;
//!   [`working_set`]: the per-VM working-set estimate that orders it;
//! - [`host`]: host-wide settings memvisor manages itself (swap devices, zram, swap files);
//! - [`seccomp`]: the per-thread seccomp filters (least privilege).
#![deny(missing_docs)]

/// The ABI shared with the built-in guest (`guest/abi.rs`, compiled into both).
#[path = "../guest/abi.rs"]
pub mod abi;
pub mod api;
pub mod assist;
pub mod balance;
pub mod bench;
pub mod boot;
pub mod config;
pub mod cpuid;
pub mod devices;
pub mod host;
pub mod kvm_stats;
pub mod linux;
pub mod mappings;
pub mod memory;
pub mod overcommit;
pub mod reclaim;
pub mod registry;
pub mod report;
pub mod runner;
pub mod seccomp;
pub mod vcpu;
pub mod vm;
pub mod vmm_api;
pub mod working_set;
pub mod workload;
