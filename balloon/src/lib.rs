//! virtio-balloon device model (virtio 1.2, section 5.5). No KVM inside: the VMM wires it to a
//! transport, eventfds and the memory module.
#![deny(missing_docs)]
