//! hugetlbfs mounts: owns listing them (`/proc/self/mounts`), checking that a path is on one
//! (statfs), and mounting/unmounting them for `memvisor hugepages mount`.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::statfs::{statfs, HUGETLBFS_MAGIC};
use serde::Serialize;

use crate::error::HugePageError;
use crate::pool::require_pool;
use crate::size::{default_size, parse_bytes, HugePageSize};

/// A directory on a hugetlbfs mount and the page size of that mount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HugetlbfsMount {
    /// The directory (the mount point for [`mounts`], the path asked about for [`mount_info`]).
    pub path: PathBuf,
    /// The mount's page size.
    pub page_size: HugePageSize,
}

/// Undoes the octal escapes (`\040` for a space, ...) the kernel uses in `/proc/mounts` fields.
pub fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/mounts` (or `/proc/self/mounts`) text into its hugetlbfs mounts.
///
/// The page size comes from the `pagesize=` option, or is `default` (the kernel's default huge
/// page size) when the option is absent. Mounts with sizes this crate does not know are skipped.
pub fn parse_mounts(text: &str, default: Option<HugePageSize>) -> Vec<HugetlbfsMount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 4 || fields[2] != "hugetlbfs" {
                return None;
            }
            let path = PathBuf::from(unescape_mount_field(fields[1]));
            let option = fields[3]
                .split(',')
                .find_map(|o| o.strip_prefix("pagesize="));
            let page_size = match option {
                Some(value) => parse_bytes(value).and_then(HugePageSize::from_bytes),
                None => default,
            };
            if page_size.is_none() {
                log::debug!("skipping hugetlbfs mount with unknown page size: {line}");
            }
            Some(HugetlbfsMount {
                path,
                page_size: page_size?,
            })
        })
        .collect()
}

/// The host's hugetlbfs mounts, from `/proc/self/mounts`.
pub fn mounts() -> Result<Vec<HugetlbfsMount>, HugePageError> {
    let path = "/proc/self/mounts";
    let text = std::fs::read_to_string(path).map_err(|e| HugePageError::read(path, e))?;
    Ok(parse_mounts(&text, default_size()))
}

fn fs_error(op: impl Into<String>, path: &Path, errno: Errno, hint: &'static str) -> HugePageError {
    HugePageError::Fs {
        op: op.into(),
        path: path.to_path_buf(),
        errno,
        hint,
    }
}

/// Checks that `path` is on a hugetlbfs mount (statfs `f_type == HUGETLBFS_MAGIC`) and returns
/// it with the mount's page size (statfs `f_bsize`).
pub fn mount_info(path: &Path) -> Result<HugetlbfsMount, HugePageError> {
    let st = statfs(path).map_err(|e| {
        fs_error(
            "statfs",
            path,
            e,
            "create and mount it with `memvisor hugepages mount <dir> --size 2M`",
        )
    })?;
    if st.filesystem_type() != HUGETLBFS_MAGIC {
        return Err(HugePageError::NotHugetlbfs {
            path: path.to_path_buf(),
        });
    }
    let bytes = st.block_size() as u64;
    let page_size = HugePageSize::from_bytes(bytes).ok_or(HugePageError::UnknownMountPageSize {
        path: path.to_path_buf(),
        bytes,
    })?;
    Ok(HugetlbfsMount {
        path: path.to_path_buf(),
        page_size,
    })
}

/// Creates `dir` (like `mkdir -p`) and mounts hugetlbfs with `size` pages on it (like
/// `mount -t hugetlbfs -o pagesize=2M nodev <dir>`).
///
/// If `dir` already is on a hugetlbfs mount of that size, nothing changes and the returned flag
/// is `false`; on a mount of another size it fails with [`HugePageError::MountedOtherSize`].
pub fn mount(dir: &Path, size: HugePageSize) -> Result<(HugetlbfsMount, bool), HugePageError> {
    require_pool(size)?;
    if dir.exists() {
        match mount_info(dir) {
            Ok(m) if m.page_size == size => return Ok((m, false)),
            Ok(m) => {
                return Err(HugePageError::MountedOtherSize {
                    path: dir.to_path_buf(),
                    existing: m.page_size,
                    wanted: size,
                })
            }
            Err(HugePageError::NotHugetlbfs { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
        fs_error(
            "mkdir -p",
            dir,
            errno,
            "choose a directory you can create (as root)",
        )
    })?;
    let options = format!("pagesize={}K", size.kib());
    nix::mount::mount(
        Some("nodev"),
        dir,
        Some("hugetlbfs"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| {
        let hint = match e {
            Errno::EPERM => "mounting needs root (CAP_SYS_ADMIN); run it with sudo",
            Errno::ENODEV => "this kernel has no hugetlbfs (CONFIG_HUGETLBFS)",
            _ => "check `ls /sys/kernel/mm/hugepages` for the page sizes this kernel supports",
        };
        fs_error(
            format!("mount -t hugetlbfs -o {options} nodev"),
            dir,
            e,
            hint,
        )
    })?;
    let mounted = mount_info(dir)?;
    log::info!("mounted hugetlbfs ({size} pages) on {}", dir.display());
    Ok((mounted, true))
}

/// Unmounts the hugetlbfs mount at `dir` (which must be its mount point); the directory stays.
pub fn unmount(dir: &Path) -> Result<(), HugePageError> {
    mount_info(dir)?;
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    if !mounts()?.iter().any(|m| m.path == canonical) {
        return Err(fs_error(
            "umount",
            dir,
            Errno::EINVAL,
            "it is inside a hugetlbfs mount but not its mount point; `memvisor hugepages status` \
             lists the mount points",
        ));
    }
    nix::mount::umount2(dir, MntFlags::empty()).map_err(|e| {
        let hint = match e {
            Errno::EBUSY => "it is still in use (a running VM or open files); stop them first",
            Errno::EPERM => "unmounting needs root; run it with sudo",
            _ => "see umount(8)",
        };
        fs_error("umount", dir, e, hint)
    })
}

/// [`unmount`] for a mount memvisor made for itself and must not leave behind (the scratch
/// mount, test mounts). While it is busy (`EBUSY`: some process still has a file of it open or
/// mapped — seen in CI, where a scratch mount was left behind after its test passed and could
/// be unmounted by hand minutes later) it retries for two seconds, then detaches it
/// (`MNT_DETACH`: gone from the file system tree at once, released by the kernel when its last
/// user goes) rather than leave a mount behind on the host.
pub fn unmount_or_detach(dir: &Path) -> Result<(), HugePageError> {
    for _ in 0..100 {
        match unmount(dir) {
            Err(HugePageError::Fs {
                errno: Errno::EBUSY,
                ..
            }) => std::thread::sleep(std::time::Duration::from_millis(20)),
            done => return done,
        }
    }
    log::warn!(
        "the scratch hugetlbfs at {} stayed busy for 2 s; detaching it (MNT_DETACH)",
        dir.display()
    );
    nix::mount::umount2(dir, MntFlags::MNT_DETACH)
        .map_err(|e| fs_error("umount (MNT_DETACH)", dir, e, "see umount(8)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
hugetlbfs /dev/hugepages hugetlbfs rw,nosuid,nodev,relatime,pagesize=2M 0 0
nodev /mnt/huge\\0401g hugetlbfs rw,relatime,pagesize=1024M 0 0
none /mnt/default hugetlbfs rw,relatime 0 0
none /mnt/odd hugetlbfs rw,relatime,pagesize=16M 0 0
tmpfs /tmp tmpfs rw 0 0
";

    #[test]
    fn parses_proc_mounts() {
        let m = parse_mounts(MOUNTS, Some(HugePageSize::Size2M));
        let got: Vec<(&str, HugePageSize)> = m
            .iter()
            .map(|m| (m.path.to_str().unwrap(), m.page_size))
            .collect();
        assert_eq!(
            got,
            [
                ("/dev/hugepages", HugePageSize::Size2M),
                ("/mnt/huge 1g", HugePageSize::Size1G),
                ("/mnt/default", HugePageSize::Size2M),
            ]
        );
        assert_eq!(parse_mounts(MOUNTS, None).len(), 2);
        assert!(parse_mounts("", None).is_empty());
        assert!(parse_mounts("garbage\n\n", None).is_empty());
    }

    #[test]
    fn unescapes_fields() {
        assert_eq!(unescape_mount_field("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape_mount_field("/plain"), "/plain");
        assert_eq!(unescape_mount_field("/trailing\\04"), "/trailing\\04");
    }

    #[test]
    fn mount_info_rejects_other_filesystems() {
        let err = mount_info(Path::new("/proc")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/proc is not on a hugetlbfs mount; mount one with \
             `memvisor hugepages mount /dev/hugepages --size 2M`"
        );
        let err = mount_info(Path::new("/nonexistent/dir")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("statfs /nonexistent/dir failed: ENOENT"),
            "{err}"
        );
    }

    #[test]
    fn host_mounts_are_listed() {
        // Every listed mount really is a hugetlbfs of the listed size.
        for m in mounts().unwrap() {
            assert_eq!(mount_info(&m.path).unwrap().page_size, m.page_size, "{m:?}");
        }
    }
}
