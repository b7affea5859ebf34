//! The subcommands of the `memvisor` binary, one module each.

pub mod balance;
pub mod bench;
pub mod bench_hugepages;
pub mod bench_memory_paths;
pub mod client;
pub mod hugepages;
pub mod ksm;
pub mod memory;
pub mod run;
