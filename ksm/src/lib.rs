//! Kernel samepage merging (KSM): sysfs knobs, global and per-process counters, madvise/prctl.
#![deny(missing_docs)]
