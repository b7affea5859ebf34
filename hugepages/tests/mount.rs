//! hugetlbfs mount tests on temporary directories (need root).

mod common;

use common::{not_root, temp_dir_path};
use hugepages::{mount, mount_info, mounts, unmount, HugePageError, HugePageSize};
use nix::mount::{umount2, MntFlags};

#[test]
fn mount_creates_a_hugetlbfs_mount_and_umount_removes_it() {
    if let Some(why) = not_root() {
        skip!("{why}");
    }
    let dir = temp_dir_path("mount");
    let (m, changed) = mount(&dir.join("nested"), HugePageSize::Size2M).unwrap();
    let dir = dir.join("nested");
    assert!(changed);
    assert_eq!(m.page_size, HugePageSize::Size2M);
    assert_eq!(mount_info(&dir).unwrap().page_size, HugePageSize::Size2M);
    assert!(mounts()
        .unwrap()
        .iter()
        .any(|m| m.path == dir && m.page_size == HugePageSize::Size2M));

    // Mounting again changes nothing; another size is refused.
    let (again, changed) = mount(&dir, HugePageSize::Size2M).unwrap();
    assert!(!changed);
    assert_eq!(again, m);
    let err = mount(&dir, HugePageSize::Size1G).unwrap_err();
    assert!(
        matches!(err, HugePageError::MountedOtherSize { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("already a hugetlbfs mount with 2M pages, not 1G"),
        "{err}"
    );

    umount2(&dir, MntFlags::empty()).unwrap();
    let err = mount_info(&dir).unwrap_err();
    assert!(matches!(err, HugePageError::NotHugetlbfs { .. }), "{err}");
    assert!(!mounts().unwrap().iter().any(|m| m.path == dir));
    std::fs::remove_dir(&dir).unwrap();
    std::fs::remove_dir(dir.parent().unwrap()).unwrap();
}

#[test]
fn mount_1g_and_unmount_with_the_crate() {
    if let Some(why) = not_root() {
        skip!("{why}");
    }
    if !hugepages::supported_sizes().contains(&HugePageSize::Size1G) {
        skip!("this kernel has no 1G huge page pool");
    }
    let dir = temp_dir_path("mount1g");
    let (m, changed) = mount(&dir, HugePageSize::Size1G).unwrap();
    assert!(changed);
    assert_eq!(mount_info(&dir).unwrap(), m);
    assert!(mounts()
        .unwrap()
        .iter()
        .any(|m| m.path == dir && m.page_size == HugePageSize::Size1G));

    // A subdirectory is on the mount but is not its mount point.
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    assert_eq!(mount_info(&sub).unwrap().page_size, HugePageSize::Size1G);
    assert!(unmount(&sub).is_err());
    std::fs::remove_dir(&sub).unwrap();

    unmount(&dir).unwrap();
    assert!(matches!(
        mount_info(&dir),
        Err(HugePageError::NotHugetlbfs { .. })
    ));
    std::fs::remove_dir(&dir).unwrap();
}

/// A scratch mount that is still busy when it is dropped is not left behind: unmounted once the
/// last file is closed (retried for 2 s), or detached if it stays busy longer. Before the
/// retry, a busy scratch mount stayed mounted for good (seen in CI).
#[test]
fn a_busy_scratch_mount_is_unmounted_or_detached_on_drop() {
    if let Some(why) = not_root() {
        skip!("{why}");
    }
    let mounted = |dir: &std::path::Path| mounts().unwrap().iter().any(|m| m.path == dir);
    for hold_ms in [300u64, 2600] {
        let scratch = match hugepages::HugetlbfsScratch::new(HugePageSize::Size2M, 2 << 20) {
            Ok(s) => s,
            Err(e) => skip!("no 2M scratch hugetlbfs here: {e}"),
        };
        let dir = scratch.path().to_path_buf();
        assert!(mounted(&dir));
        // An open file keeps the mount busy until the thread closes it.
        let file = std::fs::File::create(dir.join("busy")).unwrap();
        let holder = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(hold_ms));
            drop(file);
        });
        drop(scratch);
        assert!(
            !mounted(&dir),
            "held {hold_ms} ms: the scratch mount is still mounted at {}",
            dir.display()
        );
        assert!(
            !dir.exists(),
            "held {hold_ms} ms: {} is left",
            dir.display()
        );
        holder.join().unwrap();
    }
}
