//! Feature bits and the configuration space.
//!
//! This module owns which virtio-net features the device offers (virtio 1.2 §5.1.3) and the
//! layout of `struct virtio_net_config` (§5.1.4) it exposes.
//!
//! Offered: `VIRTIO_F_VERSION_1` (so the header is always the 12-byte `virtio_net_hdr_v1`) and
//! `VIRTIO_NET_F_MAC` (the guest takes the MAC address from the configuration space). Not
//! offered, so never negotiated: every checksum and segmentation offload (`CSUM`,
//! `GUEST_CSUM`, `GUEST_TSO*`, `HOST_TSO*`, `*_UFO`, `*_USO`: frames cross the tap whole and
//! checksummed, and a transmit header asking for an offload is refused), `MRG_RXBUF` (each
//! received frame fills one chain; Linux then posts chains of a full frame), `STATUS` (the link
//! is always up), `CTRL_VQ` and `MQ` (one queue pair, no control queue), `MTU`,
//! `VIRTIO_F_INDIRECT_DESC` and `VIRTIO_F_EVENT_IDX` (a chain flagged indirect is refused and
//! counted).

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_S_LINK_UP};

/// The mask of feature bit `bit`.
pub const fn feature_mask(bit: u32) -> u64 {
    1 << bit
}

/// Features the device offers.
pub fn avail_features() -> u64 {
    feature_mask(VIRTIO_F_VERSION_1) | feature_mask(VIRTIO_NET_F_MAC)
}

/// Names of the feature bits this device knows (as the virtio specification spells them).
const FEATURE_NAMES: &[(u32, &str)] =
    &[(VIRTIO_NET_F_MAC, "MAC"), (VIRTIO_F_VERSION_1, "VERSION_1")];

/// The names of the bits set in `features` (`bit N` for bits without a name here).
pub fn feature_names(features: u64) -> Vec<String> {
    virtio_chain::feature_names(features, FEATURE_NAMES)
}

/// Size of the configuration space the device exposes: `mac`, `status` and
/// `max_virtqueue_pairs` of `struct virtio_net_config` (the later fields belong to features
/// not offered).
pub const CONFIG_SPACE_SIZE: u64 = 10;

/// The configuration space as the driver reads it (little-endian): the MAC address, the link
/// up, one queue pair.
pub fn config_bytes(mac: [u8; 6]) -> [u8; CONFIG_SPACE_SIZE as usize] {
    let mut b = [0u8; CONFIG_SPACE_SIZE as usize];
    b[0..6].copy_from_slice(&mac);
    b[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    b[8..10].copy_from_slice(&1u16.to_le_bytes());
    b
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offered_bits_have_names_and_the_config_holds_the_mac() {
        assert_eq!(feature_names(avail_features()), ["MAC", "VERSION_1"]);
        let c = config_bytes([0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(&c[..6], &[0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(c[6..10], [1, 0, 1, 0]);
        assert_eq!(mac_text([0x52, 0x54, 0, 1, 2, 0xab]), "52:54:00:01:02:ab");
    }
}
