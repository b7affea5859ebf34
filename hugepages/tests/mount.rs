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
