//! virtio-blk disks (`--disk`) with Linux guests.
//!
//! - `linux_guest_disks_are_pci_functions_after_the_balloon` (seconds): a tiny kernel reads the
//!   PCI IDs of slots 1-3: the balloon, then the two disks in `--disk` order (virtio-pci
//!   device 0x1042). A `--disk` without `--kernel`, or with an image that is missing or
//!   already in use by a writer, stops memvisor before the guest starts, with the reason.
//! - `test_kernel_disk_read_write_flush_discard` boots the test kernel with a 4 MiB image and a
//!   read-only one: the kernel's own `virtio_blk` binds both with the features memvisor offers
//!   (flush, discard and write-zeroes on the writable one; read-only on the other), the guest
//!   reads back what the host wrote (an MD5 of the first MiB on both sides), copies 64 KiB
//!   within the disk with `fsync` (the host then finds it in the image, and the device counted
//!   the writes and a flush), `blkdiscard`s 1 MiB (the image has a hole there afterwards: its
//!   allocated blocks drop by that much and `SEEK_HOLE` finds it), reads the serial (the disk's
//!   id, through `GET_ID`), and cannot write the read-only disk.
//!
//! Guest work is slow where KVM emulates guest ring 0 (kernel copies ~1 MiB/s, each fork+exec
//! seconds): the images are small and the commands few. Throughput figures come from
//! `memvisor bench disk`, not from here.

use super::{pci_ids_code, run_tiny, test_kernel_or_skip, vm_device, TestGuest};
use crate::common::{self, kvm_or_skip, TempDir};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

#[test]
fn linux_guest_disks_are_pci_functions_after_the_balloon() {
    if !kvm_or_skip("linux_guest_disks_are_pci_functions_after_the_balloon") {
        return;
    }
    let tmp = TempDir::new("linux-disk-pci");
    let (a, b) = (tmp.path().join("a.img"), tmp.path().join("b.img"));
    std::fs::write(&a, vec![0u8; MIB]).unwrap();
    std::fs::write(&b, vec![0u8; MIB]).unwrap();
    // For slots 1, 2, 3: read the ID dword through conf1 and write its 4 bytes to COM1.
    let code = pci_ids_code(1..=3);
    let disk_a = format!("path={}", a.display());
    let disk_b = format!("path={},readonly=on", b.display());
    let (out, console) = run_tiny(
        &code,
        &[
            "--balloon",
            "amount_mib=0",
            "--disk",
            &disk_a,
            "--disk",
            &disk_b,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", common::text(&out));
    assert_eq!(
        console,
        [0xf4, 0x1a, 0x45, 0x10, 0xf4, 0x1a, 0x42, 0x10, 0xf4, 0x1a, 0x42, 0x10],
        "balloon (0x1045), then two virtio-pci block devices (0x1042)"
    );

    // Refused before the guest starts, with the reason.
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_memvisor"))
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&["-m", "64M", "--disk", &disk_a]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::text(&out).contains("--disk needs a Linux guest (--kernel)"),
        "{}",
        common::text(&out)
    );
    let kernel = tmp.path().join("tiny.elf");
    std::fs::write(&kernel, common::tiny_kernel(&[0xf4, 0xeb, 0xfd])).unwrap();
    let missing = format!("path={}", tmp.path().join("nope.img").display());
    let k = kernel.to_str().unwrap();
    let out = run(&["--kernel", k, "-m", "64M", "--disk", &missing]);
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("--disk vda: disk image") && text.contains("nope.img"),
        "{text}"
    );
    // The same image twice: the second open finds the first one's lock.
    let out = run(&[
        "--kernel",
        k,
        "-m",
        "64M",
        "--disk",
        &disk_a,
        "--disk",
        &format!("{disk_a},id=again"),
    ]);
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("--disk again") && text.contains("another process"),
        "{text}"
    );
}

/// The image: the first MiB a pattern, [2, 3) MiB 0xAA (written, so allocated), the rest
/// zeros (written too).
fn image() -> Vec<u8> {
    let mut d = vec![0u8; 4 * MIB];
    for (i, b) in d[..MIB].iter_mut().enumerate() {
        *b = (i * 7 + i / 512) as u8;
    }
    d[2 * MIB..3 * MIB].fill(0xaa);
    d
}

fn md5(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum (coreutils) on the host");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The disk with id `id` in `GET /vm`.
fn disk(sock: &Path, id: &str) -> serde_json::Value {
    vm_device(sock, id, "disk")
}

/// The features Linux negotiated, from `/init`'s virtio line of the block device with the
/// given `VIRTIO_BLK_F_RO` bit: one `0`/`1` per bit.
fn block_lines(lines: &[String]) -> Vec<(String, Vec<u8>)> {
    lines
        .iter()
        .filter(|l| l.starts_with("virtio ") && l.contains("device 0x0002"))
        .map(|l| (l.clone(), l.rsplit(' ').next().unwrap().as_bytes().to_vec()))
        .collect()
}

#[test]
fn test_kernel_disk_read_write_flush_discard() {
    let test = "test_kernel_disk_read_write_flush_discard";
    if !kvm_or_skip(test) {
        return;
    }
    let Some((vmlinux, initramfs)) = test_kernel_or_skip(test) else {
        return;
    };
    let tmp = TempDir::new("linux-disk");
    let sock = tmp.path().join("api.sock");
    let (a, ro) = (tmp.path().join("a.img"), tmp.path().join("ro.img"));
    let data = image();
    std::fs::write(&a, &data).unwrap();
    std::fs::write(&ro, vec![0x55u8; MIB]).unwrap();
    std::fs::File::open(&a).unwrap().sync_all().unwrap();
    let t0 = Instant::now();
    let disk_a = format!("path={}", a.display());
    let disk_ro = format!("path={},readonly=on,id=ro", ro.display());
    let mut g = TestGuest::start(
        &vmlinux,
        &initramfs,
        &tmp,
        &["-m", "128M", "--disk", &disk_a, "--disk", &disk_ro],
    );
    // ~2-3 min on a quiet machine; over 15 min was seen with four other test-kernel guests and
    // builds sharing the 2 cores.
    g.expect("ready", Duration::from_secs(1800));
    println!(
        "{test}: booted to /init in {:.0} s",
        t0.elapsed().as_secs_f64()
    );

    // The kernel's virtio_blk drives both, with the features offered.
    let blocks = block_lines(&g.lines());
    assert_eq!(
        blocks.len(),
        2,
        "two virtio block devices: {:#?}",
        g.lines()
    );
    for (line, f) in &blocks {
        assert!(line.contains("driver virtio_blk"), "{line}");
        let bit = |b: usize| f.get(b) == Some(&b'1');
        assert!(
            bit(32) && bit(9) && bit(6) && bit(2),
            "VERSION_1, FLUSH, BLK_SIZE, SEG_MAX: {line}"
        );
    }
    let bit = |f: &[u8], b: usize| f.get(b) == Some(&b'1');
    let (rw, rof) = (&blocks[0].1, &blocks[1].1);
    assert!(
        bit(rw, 13) && bit(rw, 14) && !bit(rw, 5),
        "vda: DISCARD, WRITE_ZEROES: {}",
        blocks[0].0
    );
    assert!(bit(rof, 5) && !bit(rof, 13), "vdb: RO: {}", blocks[1].0);
    assert_eq!(disk(&sock, "vda")["activated"], true);

    // Serial (GET_ID), read-only flag and size as the guest's block layer sees them.
    // The console echoes what is sent: the prefix is built in the guest so the echo of the
    // command itself is not taken for its answer.
    g.send(r#"run m=memvisor-guest:; echo "$m disks $(cat /sys/block/vda/serial) $(cat /sys/block/vdb/serial) ro=$(cat /sys/block/vdb/ro) size=$(cat /sys/block/vda/size)""#);
    let l = g.expect("disks ", Duration::from_secs(120));
    // Each `run` ends with its own `ran STATUS` line: consumed here, so that the next command's
    // wait does not take this one's.
    assert_eq!(g.expect("ran ", Duration::from_secs(60)), "ran 0");
    assert_eq!(l, "disks vda ro ro=1 size=8192");

    // Read: the guest's MD5 of the first MiB is the host's.
    let t = Instant::now();
    g.send(r#"run m=memvisor-guest:; echo "$m md5 $(dd if=/dev/vda bs=65536 count=16 2>/dev/null | md5sum)""#);
    let l = g.expect("md5 ", Duration::from_secs(300));
    assert_eq!(g.expect("ran ", Duration::from_secs(60)), "ran 0");
    assert_eq!(
        l.split_whitespace().nth(1),
        Some(md5(&data[..MIB]).as_str()),
        "{l}"
    );
    println!(
        "{test}: read 1 MiB and hashed it in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Write and flush: the first 64 KiB copied to 1 MiB, with fsync.
    let before = disk(&sock, "vda")["counters"].clone();
    g.send("run dd if=/dev/vda of=/dev/vda bs=65536 count=1 seek=16 conv=fsync 2>/dev/null");
    assert_eq!(g.expect("ran ", Duration::from_secs(300)), "ran 0");
    let img = std::fs::read(&a).unwrap();
    if img[MIB..MIB + 65536] != data[..65536] {
        let c = disk(&sock, "vda")["counters"].clone();
        let changed: Vec<usize> = (0..img.len() / 4096)
            .filter(|p| img[p * 4096..(p + 1) * 4096] != data[p * 4096..(p + 1) * 4096])
            .collect();
        let found = img.windows(4096).position(|w| w == &data[..4096]);
        panic!(
            "the guest's write is not in the image at 1 MiB: pages that differ from the original {changed:?}, the first copied page found at {found:?}; before {before}, after {c}"
        );
    }
    assert!(
        img[MIB + 65536..2 * MIB].iter().all(|&b| b == 0),
        "nothing else written"
    );
    let after = disk(&sock, "vda")["counters"].clone();
    let grew = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert!(grew("written_bytes") >= 65536, "{after}");
    assert!(grew("flushes") >= 1, "fsync sends a flush: {after}");

    // Discard: the image gets a hole where the guest discarded.
    let blocks_before = std::fs::metadata(&a).unwrap().blocks();
    g.send("run blkdiscard -o 2097152 -l 1048576 /dev/vda");
    assert_eq!(g.expect("ran ", Duration::from_secs(300)), "ran 0");
    let meta = std::fs::metadata(&a).unwrap();
    assert_eq!(meta.len(), 4 * MIB as u64, "the image keeps its size");
    assert!(
        blocks_before - meta.blocks() >= (MIB / 512) as u64,
        "allocated 512-byte blocks {blocks_before} -> {}",
        meta.blocks()
    );
    let f = std::fs::File::open(&a).unwrap();
    use nix::unistd::{lseek, Whence};
    assert_eq!(
        lseek(&f, 0, Whence::SeekHole).unwrap(),
        2 * MIB as i64,
        "the hole starts at 2 MiB"
    );
    assert!(lseek(&f, 2 * MIB as i64, Whence::SeekData).unwrap() >= 3 * MIB as i64);
    let c = disk(&sock, "vda")["counters"].clone();
    assert!(
        c["discards"].as_u64() >= Some(1) && c["discarded_bytes"].as_u64() >= Some(MIB as u64),
        "{c}"
    );

    // The read-only disk: the guest cannot write it; the image is unchanged.
    g.send("run dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync 2>/dev/null");
    let l = g.expect("ran ", Duration::from_secs(300));
    assert_ne!(l, "ran 0", "writing the read-only disk must fail");
    assert!(std::fs::read(&ro).unwrap().iter().all(|&b| b == 0x55));
    let c = disk(&sock, "ro")["counters"].clone();
    assert_eq!(
        (c["writes"].as_u64(), c["written_bytes"].as_u64()),
        (Some(0), Some(0)),
        "{c}"
    );
    let c = disk(&sock, "vda")["counters"].clone();
    assert_eq!(c["ioerr_status"], 0, "every request to vda succeeded: {c}");
    println!("{test}: whole test {:.0} s", t0.elapsed().as_secs_f64());
    let out = g.vm.interrupt(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", common::text(&out));
}
