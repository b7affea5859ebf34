//! Pool tests against the real host pools (need root; they restore what they change and hold
//! the pool lock so they do not disturb each other).

mod common;

use common::{not_root, nr_hugepages};
use hugepages::{
    check_pool, lock_pools, pool_status, set_pool_size, supported_sizes, HugePageError,
    HugePageSize, PoolReservation,
};

const MIB2: u64 = 2 << 20;

#[test]
fn reservation_grows_2m_pool_and_drop_restores_it() {
    if let Some(why) = not_root() {
        skip!("{why}");
    }
    let _lock = lock_pools().unwrap();
    let size = HugePageSize::Size2M;
    let before = nr_hugepages(size);
    let avail_before = pool_status(size).unwrap().available();
    {
        let r = PoolReservation::reserve_additional(size, 8).unwrap();
        let after = nr_hugepages(size);
        println!("{}", r.change());
        assert_eq!(r.change().before, before);
        assert_eq!(r.change().after, after);
        assert!(after >= before + 8);
        assert!(pool_status(size).unwrap().available() >= avail_before + 8);
    }
    assert_eq!(nr_hugepages(size), before, "drop restored nr_hugepages");

    let r = PoolReservation::reserve_additional(size, 2).unwrap();
    assert!(nr_hugepages(size) >= before + 2);
    let back = r.restore().unwrap();
    assert_eq!((back.after, nr_hugepages(size)), (before, before));
}

#[test]
fn set_pool_size_reports_the_change() {
    if let Some(why) = not_root() {
        skip!("{why}");
    }
    let _lock = lock_pools().unwrap();
    let size = HugePageSize::Size2M;
    let before = nr_hugepages(size);
    let change = set_pool_size(size, before + 3).unwrap();
    assert_eq!(
        (change.before, change.after, change.requested),
        (before, before + 3, before + 3)
    );
    assert_eq!(
        change.to_string(),
        format!(
            "2M pool: {before} -> {} pages (requested {})",
            before + 3,
            before + 3
        )
    );
    assert_eq!(nr_hugepages(size), before + 3);
    let back = set_pool_size(size, before).unwrap();
    assert_eq!(back.after, before);
    assert_eq!(nr_hugepages(size), before);
}

#[test]
fn check_pool_fails_with_numbers_and_fix_then_passes() {
    if let Some(why) = not_root() {
        skip!("{why}");
    }
    let _lock = lock_pools().unwrap();
    let size = HugePageSize::Size2M;
    let _r = PoolReservation::reserve_additional(size, 4).unwrap();
    let st = pool_status(size).unwrap();
    let avail = st.available();
    assert!(avail >= 4);

    check_pool(size, avail * MIB2, "memory region 0").unwrap();
    check_pool(size, avail * MIB2 - 1, "memory region 0").unwrap();

    let err = check_pool(size, (avail + 5) * MIB2, "memory region 0").unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    match err {
        HugePageError::PoolTooSmall {
            needed,
            available,
            total,
            ..
        } => assert_eq!((needed, available, total), (avail + 5, avail, st.total)),
        other => panic!("unexpected error {other:?}"),
    }
    for part in [
        format!("memory region 0 needs {} 2M huge pages", avail + 5),
        format!("only {avail} are available"),
        "`memvisor hugepages reserve 5 --size 2M`".to_string(),
        format!(
            "`echo {} > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages`",
            st.total + 5
        ),
    ] {
        assert!(msg.contains(&part), "{part:?} not in {msg:?}");
    }
    // One byte more than the available pages still needs a whole extra page.
    assert!(check_pool(size, avail * MIB2 + 1, "region 1").is_err());
}

#[test]
fn reserve_one_1g_page_if_the_kernel_can() {
    if let Some(why) = not_root() {
        skip!("{why}");
    }
    let size = HugePageSize::Size1G;
    if !supported_sizes().contains(&size) {
        skip!("this kernel has no 1G huge page pool");
    }
    let _lock = lock_pools().unwrap();
    let before = nr_hugepages(size);
    match PoolReservation::reserve_additional(size, 1) {
        Ok(r) => {
            assert_eq!(nr_hugepages(size), before + 1);
            assert!(pool_status(size).unwrap().available() >= 1);
            check_pool(size, 1 << 30, "memory region 0").unwrap();
            drop(r);
        }
        Err(e @ HugePageError::PoolShort { .. }) => {
            assert_eq!(
                nr_hugepages(size),
                before,
                "restored after a short allocation"
            );
            skip!("the kernel cannot allocate a 1G page now: {e}");
        }
        Err(e) => panic!("{e}"),
    }
    assert_eq!(nr_hugepages(size), before);
}
