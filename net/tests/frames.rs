//! Frames both ways through a well-behaved driver: what reaches the backend, what lands in
//! guest memory, the used ring and the counters.

mod common;

use common::*;
use net::{NetCounters, NetError, RX_QUEUE, TX_QUEUE};

#[test]
fn a_transmit_chain_is_one_frame_header_included() {
    let mem = guest_mem();
    let (mut dev, _rx, mut tx) = activated(&mem);
    let f1 = frame(0, 100, 1);
    let f2 = frame(0, 1500, 7);
    let h1 = post_tx(&mut tx, &f1, &[12]); // header alone, then the frame
    let h2 = post_tx(&mut tx, &f2, &[5, 600]); // header split across descriptors
    assert!(dev.process_queue(TX_QUEUE, &mem, &()).unwrap());
    assert_eq!(dev.backend().sent, vec![f1, f2]);
    assert_eq!(tx.used_idx(), 2);
    assert_eq!(tx.used(0), (u32::from(h1), 0));
    assert_eq!(tx.used(1), (u32::from(h2), 0));
    let c = dev.counters();
    assert_eq!((c.tx_frames, c.tx_bytes, c.tx_bad_frames), (2, 1600, 0));
    // Nothing new: nothing used.
    assert!(!dev.process_queue(TX_QUEUE, &mem, &()).unwrap());
}

#[test]
fn a_received_frame_fills_one_chain_with_flags_cleared_and_one_buffer() {
    let mem = guest_mem();
    let (mut dev, mut rx, _tx) = activated(&mem);
    let (head, bufs) = post_rx(&mut rx, &[12, 1514]);
    let mut f = frame(2, 60, 3); // DATA_VALID set by the host: not negotiated, cleared
    f[10] = 0x77; // num_buffers as the tap leaves it
    dev.backend_mut().incoming.push_back(f.clone());
    assert!(dev.receive(&mem).unwrap());
    assert_eq!(rx.used_idx(), 1);
    assert_eq!(rx.used(0), (u32::from(head), f.len() as u32));
    let mut want_hdr = f[..12].to_vec();
    want_hdr[0] = 0;
    want_hdr[10..12].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(rx.read_back(bufs[0], 12), want_hdr);
    assert_eq!(rx.read_back(bufs[1], 60), &f[12..]);
    // Past the frame, the chain's buffer is untouched.
    assert_eq!(rx.read_back(bufs[1] + 60, 1454 + 16), vec![0xee; 1470]);
    let c = dev.counters();
    assert_eq!((c.rx_frames, c.rx_bytes), (1, 60));
}

#[test]
fn frames_without_a_buffer_or_before_activation_are_dropped_and_counted() {
    let mem = guest_mem();
    let mut dev = net::Net::new(net::MemBackend::default(), net::NetOptions { mac: MAC });
    dev.backend_mut().incoming.push_back(frame(0, 40, 0));
    // Before activation: read and dropped (a readable tap must not keep the loop spinning).
    assert!(!dev.receive(&mem).unwrap());
    assert!(dev.backend().incoming.is_empty());
    assert!(matches!(
        dev.process_queue(RX_QUEUE, &mem, &()),
        Err(NetError::NotActivated)
    ));
    let (mut dev2, mut rx, _tx) = activated(&mem);
    dev2.backend_mut().incoming.push_back(frame(0, 40, 0));
    dev2.backend_mut().incoming.push_back(frame(0, 41, 0));
    assert!(!dev2.receive(&mem).unwrap());
    // A buffer posted later gets the next frame, on the driver's notification.
    post_rx(&mut rx, &[2048]);
    dev2.backend_mut().incoming.push_back(frame(0, 42, 0));
    assert!(dev2.process_queue(RX_QUEUE, &mem, &()).unwrap());
    assert_eq!(rx.used(0).1, 54);
    let c = dev2.counters();
    assert_eq!((c.rx_dropped_no_buffers, c.rx_frames), (2, 1));
    assert_eq!(dev.counters().rx_dropped_not_activated, 1);
}

#[test]
fn a_frame_too_big_for_the_chain_is_dropped_and_the_chain_kept() {
    let mem = guest_mem();
    let (mut dev, mut rx, _tx) = activated(&mem);
    let (head, bufs) = post_rx(&mut rx, &[100]);
    dev.backend_mut().incoming.push_back(frame(0, 200, 0));
    assert!(!dev.receive(&mem).unwrap());
    assert_eq!(rx.used_idx(), 0);
    assert_eq!(
        rx.read_back(bufs[0], 116),
        vec![0xee; 116],
        "nothing written"
    );
    let small = frame(0, 88, 9); // exactly 100 bytes
    dev.backend_mut().incoming.push_back(small.clone());
    assert!(dev.receive(&mem).unwrap());
    assert_eq!(rx.used(0), (u32::from(head), 100));
    assert_eq!(rx.read_back(bufs[0] + 12, 88), &small[12..]);
    let c = dev.counters();
    assert_eq!((c.rx_frames_too_big, c.rx_frames), (1, 1));
}

#[test]
fn config_space_and_features() {
    let mem = guest_mem();
    let mut dev = net::Net::new(net::MemBackend::default(), net::NetOptions { mac: MAC });
    let mut b = [0u8; 10];
    dev.read_config(0, &mut b);
    assert_eq!(&b[..6], &MAC);
    assert_eq!(b[6..10], [1, 0, 1, 0], "link up, one queue pair");
    let mut past = [0xffu8; 4];
    dev.read_config(8, &mut past);
    assert_eq!(past, [0; 4]);
    dev.write_config(0, &[1, 2, 3]);
    assert_eq!(dev.read_config_mac(), MAC);
    // Offloads are not offered: acking them is dropped and counted.
    let csum = 1u64 << virtio_bindings::virtio_net::VIRTIO_NET_F_CSUM;
    dev.ack_features(dev.avail_features() | csum);
    assert_eq!(dev.acked_features(), dev.avail_features());
    let c = dev.counters();
    assert_eq!(
        (c.config_bad_accesses, c.unsupported_features_acked),
        (2, 1)
    );
    assert_eq!(
        c,
        NetCounters {
            config_bad_accesses: 2,
            unsupported_features_acked: 1,
            ..Default::default()
        }
    );
    // Both queues are needed.
    let rx = Driver::new(&mem, 0, 256, MIB..2 * MIB);
    assert!(matches!(
        dev.activate(vec![rx.queue()]),
        Err(NetError::QueuesNotReady)
    ));
    assert!(matches!(
        dev.process_queue(2, &mem, &()),
        Err(NetError::InvalidQueueIndex(2))
    ));
}

trait MacOf {
    fn read_config_mac(&self) -> [u8; 6];
}

impl MacOf for net::Net<net::MemBackend> {
    fn read_config_mac(&self) -> [u8; 6] {
        let mut m = [0u8; 6];
        self.read_config(0, &mut m);
        m
    }
}
