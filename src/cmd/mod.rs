//! The subcommands of the `memvisor` binary, one module each.

pub mod bench;
pub mod client;
pub mod hugepages;
pub mod ksm;
pub mod run;
