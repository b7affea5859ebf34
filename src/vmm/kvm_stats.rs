//! KVM's own counters for a VM and its vCPUs, read through the binary statistics interface
//! (`KVM_GET_STATS_FD`, Linux 5.14+): exits handled inside the kernel (which the VMM never sees),
//! page faults the KVM MMU fixed, and how many 4K/2M/1G leaf mappings the MMU holds (shadow
//! page tables on hosts without EPT/NPT, the TDP tables otherwise).
//!
//! This module owns parsing the stats file format (pure, tested on synthetic buffers) and reading
//! it; the runner opens the files when it creates the VM and its vCPUs.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::FileExt;

mod ioctl {
    // `KVM_GET_STATS_FD` = `_IO(KVMIO, 0xce)`, on VM and vCPU descriptors.
    nix::ioctl_none!(kvm_get_stats_fd, 0xAE, 0xce);
}
use ioctl::kvm_get_stats_fd;

/// Size of `struct kvm_stats_header`.
const HEADER_BYTES: usize = 24;
/// Size of `struct kvm_stats_desc` without its name.
const DESC_BYTES: usize = 16;

/// One counter's place in the data block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatDesc {
    /// The counter's name (`exits`, `pf_fixed`, `pages_2m`, ...).
    pub name: String,
    /// Byte offset of its first value from the start of the data block.
    pub offset: u32,
    /// Number of u64 values (1 for plain counters, more for histograms).
    pub size: u16,
}

/// Errors while reading KVM statistics.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// `KVM_GET_STATS_FD` failed (kernels before 5.14 lack it).
    #[error("KVM_GET_STATS_FD: {0}; KVM binary statistics need Linux 5.14 or later")]
    Open(nix::Error),
    /// Reading the stats file failed.
    #[error("reading KVM statistics: {0}")]
    Read(std::io::Error),
    /// The file does not have the documented layout.
    #[error("KVM statistics: {0}")]
    Format(String),
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The header fields used here: `(name_size, num_desc, desc_offset, data_offset)`.
pub fn parse_header(b: &[u8]) -> Result<(u32, u32, u32, u32), StatsError> {
    let f = |at| u32_at(b, at).ok_or_else(|| StatsError::Format("short header".into()));
    Ok((f(4)?, f(8)?, f(16)?, f(20)?))
}

/// Parses `num_desc` descriptors of `DESC_BYTES + name_size` bytes each.
pub fn parse_descs(b: &[u8], name_size: u32, num_desc: u32) -> Result<Vec<StatDesc>, StatsError> {
    let step = DESC_BYTES + name_size as usize;
    (0..num_desc as usize)
        .map(|i| {
            let d = b
                .get(i * step..(i + 1) * step)
                .ok_or_else(|| StatsError::Format(format!("descriptor {i} is cut short")))?;
            let name = &d[DESC_BYTES..];
            let end = name.iter().position(|c| *c == 0).unwrap_or(name.len());
            Ok(StatDesc {
                name: String::from_utf8_lossy(&name[..end]).into_owned(),
                size: u16_at(d, 6).unwrap_or(0),
                offset: u32_at(d, 8).unwrap_or(0),
            })
        })
        .collect()
}

/// The plain counters (one value each) of a data block; histograms are left out.
pub fn parse_values(descs: &[StatDesc], data: &[u8]) -> BTreeMap<String, u64> {
    descs
        .iter()
        .filter(|d| d.size == 1)
        .filter_map(|d| {
            let at = d.offset as usize;
            let v = u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?);
            Some((d.name.clone(), v))
        })
        .collect()
}

/// An open statistics file of one VM or vCPU.
#[derive(Debug)]
pub struct StatsFile {
    file: File,
    descs: Vec<StatDesc>,
    data_offset: u64,
    data_len: usize,
}

impl StatsFile {
    /// Opens the statistics of the KVM VM or vCPU behind descriptor `fd` (a VM or vCPU fd).
    pub fn open(fd: RawFd) -> Result<StatsFile, StatsError> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new descriptor or an error;
        // `fd` is a KVM VM or vCPU descriptor the caller owns (anything else fails with ENOTTY).
        let stats = unsafe { kvm_get_stats_fd(fd) }.map_err(StatsError::Open)?;
        // SAFETY: `stats` is a descriptor the kernel just created for us and nobody else owns.
        let file = unsafe { File::from_raw_fd(stats) };
        let mut header = [0u8; HEADER_BYTES];
        file.read_exact_at(&mut header, 0)
            .map_err(StatsError::Read)?;
        let (name_size, num_desc, desc_offset, data_offset) = parse_header(&header)?;
        if num_desc > 10_000 || name_size > 4096 {
            return Err(StatsError::Format(format!(
                "implausible header: {num_desc} descriptors, names of {name_size} bytes"
            )));
        }
        let mut descs = vec![0u8; num_desc as usize * (DESC_BYTES + name_size as usize)];
        file.read_exact_at(&mut descs, desc_offset.into())
            .map_err(StatsError::Read)?;
        let descs = parse_descs(&descs, name_size, num_desc)?;
        let data_len = descs
            .iter()
            .map(|d| d.offset as usize + 8 * d.size as usize)
            .max()
            .unwrap_or(0);
        Ok(StatsFile {
            file,
            descs,
            data_offset: data_offset.into(),
            data_len,
        })
    }

    /// The current value of every plain counter.
    pub fn read(&self) -> Result<BTreeMap<String, u64>, StatsError> {
        let mut data = vec![0u8; self.data_len];
        self.file
            .read_exact_at(&mut data, self.data_offset)
            .map_err(StatsError::Read)?;
        Ok(parse_values(&self.descs, &data))
    }
}

/// The statistics files of one VM and all its vCPUs.
#[derive(Debug)]
pub struct KvmStats {
    vm: StatsFile,
    vcpus: Vec<StatsFile>,
}

/// Counters at one moment: the VM's, and the vCPUs' summed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KvmSnapshot {
    /// VM counters (`pages_4k`, `pages_2m`, `pages_1g`, `mmu_shadow_zapped`, ...).
    pub vm: BTreeMap<String, u64>,
    /// vCPU counters summed over vCPUs (`exits`, `pf_fixed`, `pf_guest`, `io_exits`, ...).
    pub vcpus: BTreeMap<String, u64>,
}

impl KvmSnapshot {
    /// A VM counter, 0 when the kernel does not have it.
    pub fn vm(&self, name: &str) -> u64 {
        self.vm.get(name).copied().unwrap_or(0)
    }

    /// A vCPU counter summed over vCPUs, 0 when the kernel does not have it.
    pub fn vcpu(&self, name: &str) -> u64 {
        self.vcpus.get(name).copied().unwrap_or(0)
    }
}

impl KvmStats {
    /// The statistics of VM descriptor `vm` and vCPU descriptors `vcpus`.
    pub fn open(vm: RawFd, vcpus: &[RawFd]) -> Result<KvmStats, StatsError> {
        Ok(KvmStats {
            vm: StatsFile::open(vm)?,
            vcpus: vcpus
                .iter()
                .map(|fd| StatsFile::open(*fd))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Reads every counter now.
    pub fn snapshot(&self) -> Result<KvmSnapshot, StatsError> {
        let mut vcpus: BTreeMap<String, u64> = BTreeMap::new();
        for v in &self.vcpus {
            for (k, n) in v.read()? {
                *vcpus.entry(k).or_default() += n;
            }
        }
        Ok(KvmSnapshot {
            vm: self.vm.read()?,
            vcpus,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stats file image as the kernel lays it out: header, id, descriptors, data.
    fn image(stats: &[(&str, u16, &[u64])]) -> Vec<u8> {
        let name_size = 48u32;
        let desc_offset = (HEADER_BYTES + 48) as u32;
        let data_offset = desc_offset + stats.len() as u32 * (DESC_BYTES as u32 + name_size);
        let mut b = Vec::new();
        for v in [
            0,
            name_size,
            stats.len() as u32,
            HEADER_BYTES as u32,
            desc_offset,
            data_offset,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.resize(desc_offset as usize, b'i');
        let mut offset = 0u32;
        for (name, size, _) in stats {
            b.extend_from_slice(&0u32.to_le_bytes()); // flags
            b.extend_from_slice(&0i16.to_le_bytes()); // exponent
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes()); // bucket size
            let mut n = name.as_bytes().to_vec();
            n.resize(name_size as usize, 0);
            b.extend_from_slice(&n);
            offset += 8 * *size as u32;
        }
        for (_, _, values) in stats {
            for v in *values {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        b
    }

    #[test]
    fn parses_the_kernel_layout() {
        let b = image(&[
            ("exits", 1, &[42]),
            ("halt_wait_hist", 3, &[1, 2, 3]),
            ("pages_2m", 1, &[512]),
        ]);
        let (name_size, num, desc_offset, data_offset) = parse_header(&b).unwrap();
        assert_eq!((name_size, num), (48, 3));
        let descs = parse_descs(&b[desc_offset as usize..], name_size, num).unwrap();
        assert_eq!(descs[1].name, "halt_wait_hist");
        assert_eq!((descs[2].offset, descs[2].size), (32, 1));
        let values = parse_values(&descs, &b[data_offset as usize..]);
        assert_eq!(values.len(), 2, "histograms are left out: {values:?}");
        assert_eq!(values["exits"], 42);
        assert_eq!(values["pages_2m"], 512);
        assert!(parse_header(&b[..10]).is_err());
        assert!(parse_descs(&b[desc_offset as usize..][..20], name_size, num).is_err());
    }

    #[test]
    fn snapshot_getters_default_to_zero() {
        let mut s = KvmSnapshot::default();
        s.vcpus.insert("exits".into(), 7);
        assert_eq!(
            (s.vcpu("exits"), s.vcpu("pf_fixed"), s.vm("pages_4k")),
            (7, 0, 0)
        );
    }

    #[test]
    fn reads_a_real_vm_when_kvm_is_there() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            println!("skip: reads_a_real_vm_when_kvm_is_there: /dev/kvm is not usable here");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        use std::os::fd::AsRawFd;
        match KvmStats::open(vm.as_raw_fd(), &[vcpu.as_raw_fd()]) {
            Ok(stats) => {
                let s = stats.snapshot().unwrap();
                assert!(s.vcpus.contains_key("exits"), "{s:?}");
                assert!(s.vm.contains_key("pages_4k"), "{s:?}");
            }
            Err(StatsError::Open(e)) => {
                println!("skip: reads_a_real_vm_when_kvm_is_there: KVM_GET_STATS_FD: {e}")
            }
            Err(e) => panic!("{e}"),
        }
    }
}
