//! userfaultfd page serving for guest RAM regions: an in-process handler thread (zero pages or bytes
//! from a source image) and the hand-over to an external handler (Firecracker's handshake).
#![deny(missing_docs)]
