//! What memvisor tells about memory: the report of a run ([`run`]), GPA→HPA maps
//! ([`mappings`]), per-VM and host-wide overcommit figures ([`overcommit`]) and the runtime
//! directory where running VMs register so host-wide tools find them ([`registry`]). These
//! modules read guest memory, the VM's counters and the host's; they change nothing.

pub mod mappings;
pub mod overcommit;
pub mod registry;
pub mod run;
