//! Hostile and broken drivers: every bad chain is refused, goes back to the driver (receive
//! chains with nothing written), is counted under its cause, and never reaches the backend;
//! guest memory outside a receive chain is never written.

mod common;

use common::*;
use net::{NetError, MAX_FRAME_BYTES, RX_QUEUE, TX_QUEUE};

const INDIRECT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;

#[test]
fn transmit_frames_of_bad_sizes_or_headers_are_refused() {
    let mem = guest_mem();
    let (mut dev, _rx, mut tx) = activated(&mem);
    let max = frame(0, MAX_FRAME_BYTES - 12, 0);
    let over = frame(0, MAX_FRAME_BYTES - 11, 0);
    post_tx(&mut tx, &over, &[12, 40000]);
    post_tx(&mut tx, &max, &[12, 40000]); // the largest frame is fine
    post_tx(&mut tx, &frame(0, 13, 0), &[]); // one byte short of an Ethernet header
    post_tx(&mut tx, &frame(1, 60, 0), &[]); // NEEDS_CSUM: no offload negotiated
    let mut gso = frame(0, 60, 0);
    gso[1] = 1; // GSO_TCPV4
    post_tx(&mut tx, &gso, &[]);
    post_tx(&mut tx, &frame(0, 14, 0), &[]); // the smallest frame is fine
    assert!(dev.process_queue(TX_QUEUE, &mem, &()).unwrap());
    assert_eq!(tx.used_idx(), 6, "every chain goes back");
    let sent: Vec<usize> = dev.backend().sent.iter().map(Vec::len).collect();
    assert_eq!(sent, vec![MAX_FRAME_BYTES, 26]);
    let c = dev.counters();
    assert_eq!(
        (
            c.tx_oversized,
            c.tx_short,
            c.tx_offload_not_negotiated,
            c.tx_bad_frames
        ),
        (1, 1, 2, 4)
    );
    assert_eq!(c.tx_frames, 2);
}

#[test]
fn malformed_transmit_chains_are_refused() {
    let mem = guest_mem();
    let (mut dev, _rx, mut tx) = activated(&mem);
    let f = frame(0, 60, 0);
    let a = tx.buf(&f);
    let w = tx.alloc(64);
    tx.add_chain(&[(a, 72, 0), (w, 64, WRITE)]); // a device-writable buffer
    tx.add_chain(&[(a, 12, 0), (OUTSIDE_MEM, 60, 0)]); // data outside memory
    tx.add_chain(&[(a, 12, 0), (16 * MIB - 30, 60, 0)]); // straddles the end of RAM
    tx.add_chain(&[(u64::MAX - 10, 72, 0)]); // address + length overflows
    let s = tx.add_raw(&[(a, 72, NEXT, 0)]); // loops onto itself
    tx.vq
        .desc_table()
        .store(s, descriptor(a, 72, NEXT, s))
        .unwrap();
    tx.add_raw(&[(a, 72, NEXT, 300)]); // next outside the table
    tx.add_raw(&[(a, 16, INDIRECT, 0)]);
    tx.add_raw(&[(a, 12, WRITE, 0)]);
    let r = tx.add_raw(&[(a, 12, WRITE | NEXT, 0), (a, 60, 0, 0)]);
    tx.vq
        .desc_table()
        .store(r, descriptor(a, 12, WRITE | NEXT, r + 1))
        .unwrap(); // readable after writable
    assert!(dev.process_queue(TX_QUEUE, &mem, &()).unwrap());
    assert!(dev.backend().sent.is_empty(), "nothing reached the tap");
    assert_eq!(tx.used_idx(), 9);
    let c = dev.counters();
    assert_eq!(c.tx_bad_frames, 9);
    assert_eq!(c.wrong_direction, 2, "writable buffer; writable-only chain");
    assert_eq!(c.buffers_outside_memory, 3);
    assert_eq!(
        (
            c.looping_chains,
            c.next_out_of_range,
            c.indirect_not_negotiated,
            c.readable_after_writable
        ),
        (1, 1, 1, 1)
    );
}

fn descriptor(addr: u64, len: u32, flags: u16, next: u16) -> virtio_queue::desc::RawDescriptor {
    virtio_queue::desc::split::Descriptor::new(addr, len, flags, next).into()
}

#[test]
fn malformed_receive_chains_go_back_empty_and_the_frame_goes_to_the_next_good_one() {
    let mem = guest_mem();
    let (mut dev, mut rx, _tx) = activated(&mem);
    let readable = rx.alloc(2048);
    rx.add_chain(&[(readable, 2048, 0)]); // device-readable: wrong way
    rx.add_chain(&[(OUTSIDE_MEM, 2048, WRITE)]);
    rx.add_chain(&[(16 * MIB - 100, 2048, WRITE)]); // runs off the end of RAM
    let l = rx.add_raw(&[(readable, 2048, WRITE | NEXT, 0)]);
    rx.vq
        .desc_table()
        .store(l, descriptor(readable, 2048, WRITE | NEXT, l))
        .unwrap();
    rx.add_raw(&[(readable, 2048, WRITE | INDIRECT, 0)]);
    let (good, bufs) = post_rx(&mut rx, &[2048]);
    let before_end = rx.read_back(16 * MIB - 100, 100);
    let before_readable = rx.read_back(readable, 2048);
    let f = frame(0, 500, 5);
    dev.backend_mut().incoming.push_back(f.clone());
    assert!(dev.receive(&mem).unwrap());
    assert_eq!(rx.used_idx(), 6);
    for i in 0..5 {
        assert_eq!(
            rx.used(i).1,
            0,
            "bad chain {i} goes back with nothing written"
        );
    }
    assert_eq!(rx.used(5), (u32::from(good), f.len() as u32));
    assert_eq!(rx.read_back(bufs[0] + 12, 500), &f[12..]);
    assert_eq!(rx.read_back(16 * MIB - 100, 100), before_end);
    assert_eq!(rx.read_back(readable, 2048), before_readable);
    let c = dev.counters();
    assert_eq!(c.rx_bad_chains, 5);
    assert_eq!((c.wrong_direction, c.buffers_outside_memory), (1, 2));
    assert_eq!((c.looping_chains, c.indirect_not_negotiated), (1, 1));
    assert_eq!(c.rx_frames, 1);
}

#[test]
fn broken_rings_are_counted_and_a_jumping_index_needs_a_reset() {
    let mem = guest_mem();
    let (mut dev, _rx, mut tx) = activated(&mem);
    tx.push_avail(4000); // a head outside the queue
    post_tx(&mut tx, &frame(0, 60, 0), &[]);
    assert!(dev.process_queue(TX_QUEUE, &mem, &()).unwrap());
    assert_eq!(dev.backend().sent.len(), 1);
    assert_eq!(dev.counters().invalid_head_index, 1);
    tx.set_avail_idx(tx.avail_idx().wrapping_add(1000));
    assert!(matches!(
        dev.process_queue(TX_QUEUE, &mem, &()),
        Err(NetError::AvailIndexJump(1))
    ));
    assert!(dev.needs_reset());
    assert!(matches!(
        dev.process_queue(RX_QUEUE, &mem, &()),
        Err(NetError::NeedsReset)
    ));
    // Frames keep being drained (and counted) so a readable tap cannot spin the caller.
    dev.backend_mut().incoming.push_back(frame(0, 60, 0));
    assert!(!dev.receive(&mem).unwrap());
    assert_eq!(dev.counters().rx_dropped_not_activated, 1);
    dev.reset();
    assert!(!dev.needs_reset() && !dev.is_activated());
    assert_eq!(
        dev.counters().avail_index_jumps,
        1,
        "counters survive a reset"
    );
}

#[test]
fn host_errors_are_counted_and_the_chains_still_go_back() {
    let mem = guest_mem();
    let (mut dev, mut rx, mut tx) = activated(&mem);
    dev.backend_mut().fail = Some(std::io::ErrorKind::Other);
    post_tx(&mut tx, &frame(0, 60, 0), &[]);
    assert!(dev.process_queue(TX_QUEUE, &mem, &()).unwrap());
    assert_eq!(tx.used_idx(), 1);
    post_rx(&mut rx, &[2048]);
    dev.backend_mut().incoming.push_back(frame(0, 60, 0));
    assert!(!dev.receive(&mem).unwrap());
    let c = dev.counters();
    assert_eq!(
        (c.tx_host_errors, c.rx_host_errors, c.tx_frames, c.rx_frames),
        (1, 1, 0, 0)
    );
}
