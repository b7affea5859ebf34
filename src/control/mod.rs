//! Control of running VMs: the HTTP API a VM serves on its socket ([`api`]), the VMM's answers
//! to it ([`vmm_api`]; what it tells about devices: [`disks`], [`nets`]), and what works across every VM
//! on the host through that API: the balloon controller ([`balance`]); the thread that carries
//! out the in-VMM swap for the API ([`vmm_swap`]). Above the reports it serves, below the runner
//! that starts
//! it.

pub mod api;
pub mod balance;
pub mod disks;
pub mod host_report;
pub mod nets;
pub mod reclaim;
pub mod vmm_api;
pub mod vmm_swap;
