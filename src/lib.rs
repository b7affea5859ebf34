//! memvisor: a KVM virtual machine monitor built around guest memory and memory overcommit.
