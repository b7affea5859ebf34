//! Host checks of a memory configuration, run before anything is mapped: is the mem-path on
//! hugetlbfs, is the hugepage pool large enough (summed over all regions of a page size), is
//! userfaultfd usable, is the uffd source readable, is KSM there for `mergeable=on`.

use super::MemoryError;
use crate::config::{Backend, RegionConfig, Size};
use hugepages::HugePageSize;
use std::collections::BTreeMap;

fn region_err(region: usize, option: &str, reason: String) -> MemoryError {
    MemoryError::Check {
        region,
        option: option.into(),
        reason,
    }
}

/// Checks every region against the host. The first problem found is returned.
pub fn check(configs: &[RegionConfig]) -> Result<(), MemoryError> {
    // Huge pages needed per size, and which regions need them.
    let mut need: BTreeMap<HugePageSize, (u64, Vec<usize>)> = BTreeMap::new();
    for (i, c) in configs.iter().enumerate() {
        match &c.backend {
            Backend::Hugetlbfs { mem_path } => {
                let mount = hugepages::mount_info(mem_path)
                    .map_err(|e| region_err(i, "mem-path", e.to_string()))?;
                let ps = mount.page_size.bytes();
                if c.size % ps != 0 {
                    return Err(region_err(
                        i,
                        "size",
                        format!(
                            "{} is not a multiple of the {} pages of {}; round it to a multiple of {}",
                            Size(c.size),
                            mount.page_size,
                            mem_path.display(),
                            Size(ps)
                        ),
                    ));
                }
                let e = need.entry(mount.page_size).or_default();
                e.0 += c.size;
                e.1.push(i);
            }
            Backend::Memfd {
                hugepage_size: Some(hp),
            } => {
                let size = HugePageSize::from_bytes(*hp)
                    .ok_or_else(|| region_err(i, "hugepage-size", "use 2M or 1G".into()))?;
                if !hugepages::supported_sizes().contains(&size) {
                    return Err(region_err(
                        i,
                        "hugepage-size",
                        format!("this host has no {size} huge pages"),
                    ));
                }
                let e = need.entry(size).or_default();
                e.0 += c.size;
                e.1.push(i);
            }
            Backend::Uffd {
                source,
                external_socket,
                ..
            } => {
                uffd::available().map_err(|e| {
                    region_err(i, "backend", format!("userfaultfd is not usable here: {e}"))
                })?;
                if let Some(src) = source {
                    std::fs::File::open(src).map_err(|e| {
                        region_err(i, "source", format!("cannot read {}: {e}", src.display()))
                    })?;
                }
                if let Some(sock) = external_socket {
                    use std::os::unix::fs::FileTypeExt;
                    let reason = match std::fs::metadata(sock) {
                        Ok(m) if m.file_type().is_socket() => None,
                        Ok(_) => Some(format!(
                            "{} is not a Unix socket; name the socket the page-fault handler listens on",
                            sock.display()
                        )),
                        Err(e) => Some(format!(
                            "{}: {e}; start the page-fault handler (listening on that path) first",
                            sock.display()
                        )),
                    };
                    if let Some(reason) = reason {
                        return Err(region_err(i, "socket", reason));
                    }
                }
            }
            Backend::Anon {
                thp: Some(true), ..
            } => {
                if matches!(hugepages::thp_mode(), Ok(hugepages::ThpMode::Never)) {
                    log::warn!(
                        "memory region {i}: thp=on but transparent huge pages are disabled host-wide (/sys/kernel/mm/transparent_hugepage/enabled is [never]); the region gets 4 KiB pages"
                    );
                }
            }
            Backend::Anon { .. }
            | Backend::Memfd {
                hugepage_size: None,
            } => {}
        }
        if c.mergeable && !ksm::Ksm::system().available() {
            return Err(region_err(
                i,
                "mergeable",
                "KSM is not available on this host (/sys/kernel/mm/ksm is missing); remove mergeable=on".into(),
            ));
        }
    }
    for (size, (bytes, regions)) in need {
        let names: Vec<String> = regions.iter().map(|r| r.to_string()).collect();
        let what = if regions.len() == 1 {
            format!("memory region {}", names[0])
        } else {
            format!("memory regions {}", names.join(", "))
        };
        hugepages::check_pool(size, bytes, &what).map_err(|e| MemoryError::Pool(e.to_string()))?;
    }
    Ok(())
}
