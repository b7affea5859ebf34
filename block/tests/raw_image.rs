//! The raw image backend on a real file: bytes that read back through the device, holes that
//! discards punch (the file's allocated blocks drop), locks, O_DIRECT and the errors a user sees.

mod common;

use std::os::unix::fs::MetadataExt;

use block::{Block, DeviceModel, DiskBackend, ImageError, RawImage};
use common::*;
use nix::unistd::{lseek, Whence};
use virtio_bindings::virtio_blk::*;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + i / 4096) as u8 | 1).collect()
}

#[test]
fn reads_and_writes_reach_the_file() {
    let img = Scratch::new("rw", &pattern(MIB as usize));
    let mem = guest_mem();
    let disk = RawImage::open(&img.0, false, false).unwrap();
    assert_eq!((disk.size(), disk.block_size()), (MIB, 512));
    let mut dev = Block::new(disk, rw());
    dev.ack_features(dev.avail_features());
    let mut drv = driver(&mem, 256);
    dev.activate(vec![drv.queue()]).unwrap();
    let r = drv.request(VIRTIO_BLK_T_IN, 7, &[], 4096);
    let data = vec![0x42u8; 1536];
    let w = drv.request(VIRTIO_BLK_T_OUT, 1000, &data, 0);
    let f = drv.request(VIRTIO_BLK_T_FLUSH, 0, &[], 0);
    dev.process_queue(0, &mem, &()).unwrap();
    assert_eq!([drv.status(&r), drv.status(&w), drv.status(&f)], [OK; 3]);
    assert!(drv.read_back(r.data_in, 4096) == pattern(MIB as usize)[7 * 512..7 * 512 + 4096]);
    let file = std::fs::read(&img.0).unwrap();
    assert_eq!(&file[1000 * 512..1003 * 512], &data[..]);
    assert!(
        file[..1000 * 512] == pattern(MIB as usize)[..1000 * 512],
        "the rest is untouched"
    );
    assert_eq!(file.len() as u64, MIB);
}

#[test]
fn discard_punches_a_hole_the_host_gets_back() {
    let img = Scratch::new("discard", &vec![0x55u8; MIB as usize]);
    let mut disk = RawImage::open(&img.0, false, false).unwrap();
    disk.flush().unwrap();
    let before = std::fs::metadata(&img.0).unwrap().blocks();
    assert!(
        before * 512 >= MIB,
        "the file is allocated ({before} blocks)"
    );
    // Through the device: discard 256 KiB at 256 KiB.
    let mem = guest_mem();
    let mut dev = Block::new(disk, rw());
    dev.ack_features(dev.avail_features());
    let mut drv = driver(&mem, 256);
    dev.activate(vec![drv.queue()]).unwrap();
    let d = drv.request(VIRTIO_BLK_T_DISCARD, 0, &discard_seg(512, 512, 0), 0);
    let z = drv.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &discard_seg(1536, 8, 0), 0);
    let zu = drv.request(
        VIRTIO_BLK_T_WRITE_ZEROES,
        0,
        &discard_seg(1800, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
        0,
    );
    dev.process_queue(0, &mem, &()).unwrap();
    assert_eq!([drv.status(&d), drv.status(&z), drv.status(&zu)], [OK; 3]);
    if dev.counters().discards_not_supported_by_host > 0 {
        skip(
            "discard_punches_a_hole_the_host_gets_back",
            "the temporary directory's file system cannot punch holes",
        );
        return;
    }
    let meta = std::fs::metadata(&img.0).unwrap();
    assert_eq!(meta.len(), MIB, "KEEP_SIZE: the image keeps its size");
    assert!(
        meta.blocks() * 512 <= before * 512 - 256 * 1024,
        "blocks {before} -> {}: the hole's 256 KiB went back",
        meta.blocks()
    );
    let f = std::fs::File::open(&img.0).unwrap();
    assert_eq!(
        lseek(&f, 0, Whence::SeekHole).unwrap(),
        256 * 1024,
        "first hole"
    );
    let file = std::fs::read(&img.0).unwrap();
    assert!(file[256 * 1024..512 * 1024].iter().all(|&b| b == 0));
    assert!(file[1536 * 512..1544 * 512].iter().all(|&b| b == 0));
    assert!(file[1800 * 512..1808 * 512].iter().all(|&b| b == 0));
    assert!(file[..256 * 1024].iter().all(|&b| b == 0x55));
    assert!(file[1544 * 512..1800 * 512].iter().all(|&b| b == 0x55));
}

#[test]
fn images_are_locked_against_a_second_writer() {
    let img = Scratch::new("lock", &[0u8; 4096]);
    let a = RawImage::open(&img.0, false, false).unwrap();
    let e = RawImage::open(&img.0, false, false).unwrap_err();
    assert!(matches!(e, ImageError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("another process"), "{e}");
    let e = RawImage::open(&img.0, true, false).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::Locked {
                read_only: true,
                ..
            }
        ),
        "{e}"
    );
    drop(a);
    // Readers share.
    let _r1 = RawImage::open(&img.0, true, false).unwrap();
    let _r2 = RawImage::open(&img.0, true, false).unwrap();
    assert!(RawImage::open(&img.0, false, false).is_err());
}

#[test]
fn unusable_images_are_refused_with_what_to_do() {
    let dir = std::env::temp_dir();
    let missing = dir.join(format!("memvisor-block-missing-{}", std::process::id()));
    let e = RawImage::open(&missing, false, false).unwrap_err();
    assert!(
        matches!(e, ImageError::Open { .. }) && e.to_string().contains("check the path"),
        "{e}"
    );
    let e = RawImage::open(&dir, true, false).unwrap_err();
    assert!(
        matches!(e, ImageError::NotAFile { .. }) && e.to_string().contains("raw image"),
        "{e}"
    );
    let small = Scratch::new("small", &[0u8; 100]);
    let e = RawImage::open(&small.0, false, false).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::TooSmall {
                size: 100,
                block: 512,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("truncate -s"), "{e}");
}

#[test]
fn direct_io_reads_and_writes_whole_blocks() {
    let test = "direct_io_reads_and_writes_whole_blocks";
    let img = Scratch::new("direct", &pattern(MIB as usize));
    let disk = match RawImage::open(&img.0, false, true) {
        Ok(d) => d,
        Err(ImageError::Direct { .. }) => {
            return skip(
                test,
                "the temporary directory's file system refuses O_DIRECT",
            );
        }
        Err(e) => panic!("{e}"),
    };
    assert!(disk.direct());
    assert_eq!(disk.block_size(), 4096);
    let mem = guest_mem();
    let mut dev = Block::new(disk, rw());
    dev.ack_features(dev.avail_features());
    let mut drv = driver(&mem, 256);
    dev.activate(vec![drv.queue()]).unwrap();
    // Guest buffers need no alignment: the device's bounce buffer is aligned.
    let h = drv.buf(&header(VIRTIO_BLK_T_OUT, 16));
    let odd = drv.alloc(8192 + 3) + 3;
    let data = vec![0x77u8; 8192];
    vm_memory::Bytes::write_slice(&mem, &data, vm_memory::GuestAddress(odd)).unwrap();
    let s = drv.alloc(1);
    drv.add_chain(&[(h, 16, 0), (odd, 8192, 0), (s, 1, WRITE)]);
    let r = drv.request(VIRTIO_BLK_T_IN, 8, &[], 4096);
    let bad = drv.request(VIRTIO_BLK_T_IN, 1, &[], 4096);
    dev.process_queue(0, &mem, &()).unwrap();
    assert_eq!(
        [drv.read_back(s, 1)[0], drv.status(&r), drv.status(&bad)],
        [OK, OK, IOERR]
    );
    assert!(drv.read_back(r.data_in, 4096) == pattern(MIB as usize)[4096..8192]);
    let file = std::fs::read(&img.0).unwrap();
    assert!(file[8192..16384] == data[..]);
    // A file that is not a whole number of 4 KiB blocks shows only the whole ones.
    let short = Scratch::new("direct-short", &[0u8; 4000]);
    let e = RawImage::open(&short.0, false, true).unwrap_err();
    assert!(matches!(e, ImageError::TooSmall { block: 4096, .. }), "{e}");
}
