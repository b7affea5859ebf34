//! The tap device: a network interface of the host whose frames memvisor reads and writes.
//!
//! This module owns opening `/dev/net/tun` as a tap ([`Tap::open`]): `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR` (Ethernet frames, no packet-information prefix, a `virtio_net_hdr` in front of
//! each frame), the header size set to the 12 bytes of `virtio_net_hdr_v1`
//! (`TUNSETVNETHDRSZ`), no offloads (`TUNSETOFFLOAD` 0: the kernel hands over whole,
//! checksummed frames) and non-blocking I/O, so the device event thread can poll it. A named
//! tap is attached to (or created, when no interface has that name); without a name the kernel
//! creates one (`tapN`) and [`Tap::name`] says which. Each failure is a [`TapError`] that says
//! what to do. [`Tap`] is the [`NetBackend`] the VMM uses: a frame goes out with one `writev`
//! straight from guest memory and comes in with one `read`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::backend::NetBackend;
use crate::HDR_BYTES;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};

/// The tun/tap clone device.
pub const TUN_DEVICE: &str = "/dev/net/tun";
/// Most bytes of an interface name (`IFNAMSIZ` less the terminating NUL).
pub const MAX_NAME_BYTES: usize = 15;

/// The tun/tap ioctl numbers (`linux/if_tun.h`).
#[allow(missing_docs)]
mod ioctls {
    use vmm_sys_util::ioctl_iow_nr;

    const TUNTAP: std::os::raw::c_uint = 0x54;
    ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, std::os::raw::c_int);
    ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, std::os::raw::c_uint);
    ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, std::os::raw::c_int);
}
use ioctls::{TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ};

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

/// `struct ifreq` as `TUNSETIFF` reads and writes it: the name and the flags (the rest of the
/// 40-byte union is unused here).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _rest: [u8; 22],
}

/// Why a tap could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The tun/tap clone device does not exist.
    #[error("{}: {source}: the kernel's tun/tap driver is not available here; load it (`modprobe tun`) or run where /dev/net/tun exists", path.display())]
    NoTunDevice {
        /// The device path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Not allowed to open the clone device or to attach the tap.
    #[error("{what}: {source}: a tap needs CAP_NET_ADMIN (run memvisor as root), or a tap made beforehand for this user (`ip tuntap add NAME mode tap user $USER`) given by name")]
    Permission {
        /// What was refused.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The name cannot be an interface name.
    #[error("tap name `{0}`: give 1 to 15 characters without `/`, `%`, `:` or white space")]
    BadName(String),
    /// Another process has the tap open.
    #[error("tap `{0}` is in use by another process (a tap has one reader): give another name, or `--net tap` to have a new tap created")]
    Busy(String),
    /// An interface of that name exists and is not a tap.
    #[error("`{0}` is an interface that is not a tap (a tun device, or another kind): give the name of a tap, a free name, or `--net tap` to have one created")]
    NotATap(String),
    /// Any other failure.
    #[error("{what}: {source}")]
    Other {
        /// What failed.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Whether `name` can be an interface name (what the kernel's `dev_valid_name` accepts).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b'%' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// An open tap device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens the tap `name` (created if no interface has that name) or, with `None`, a new tap
    /// the kernel names.
    pub fn open(name: Option<&str>) -> Result<Tap, TapError> {
        Self::open_at(Path::new(TUN_DEVICE), name)
    }

    /// [`Tap::open`] through the clone device at `dev` (tests give a missing one).
    pub fn open_at(dev: &Path, name: Option<&str>) -> Result<Tap, TapError> {
        if let Some(n) = name.filter(|n| !valid_name(n)) {
            return Err(TapError::BadName(n.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(dev)
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => TapError::NoTunDevice {
                    path: dev.to_path_buf(),
                    source,
                },
                io::ErrorKind::PermissionDenied => TapError::Permission {
                    what: format!("opening {}", dev.display()),
                    source,
                },
                _ => TapError::Other {
                    what: format!("opening {}", dev.display()),
                    source,
                },
            })?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _rest: [0; 22],
        };
        let shown = name.unwrap_or("(new)").to_string();
        if let Some(n) = name {
            req.name[..n.len()].copy_from_slice(n.as_bytes());
        }
        // SAFETY: `file` is an open tun clone device; TUNSETIFF reads and writes a `struct
        // ifreq`, which `IfReq` lays out in full (40 bytes), and `req` outlives the call.
        let r = unsafe { ioctl_with_mut_ref(&file, TUNSETIFF(), &mut req) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission {
                    what: format!("attaching tap {shown}"),
                    source: e,
                },
                Some(libc::EBUSY) => TapError::Busy(shown),
                Some(libc::EINVAL) if name.is_some() => TapError::NotATap(shown),
                _ => TapError::Other {
                    what: format!("attaching tap {shown} (TUNSETIFF)"),
                    source: e,
                },
            });
        }
        let len = req.name.iter().position(|&b| b == 0).unwrap_or(16);
        let name = String::from_utf8_lossy(&req.name[..len]).into_owned();
        let hdr = HDR_BYTES as std::os::raw::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which `hdr` provides.
        if unsafe { ioctl_with_ref(&file, TUNSETVNETHDRSZ(), &hdr) } < 0 {
            return Err(TapError::Other {
                what: format!(
                    "tap {name}: setting a {HDR_BYTES}-byte virtio-net header (TUNSETVNETHDRSZ)"
                ),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no memory of ours.
        if unsafe { vmm_sys_util::ioctl::ioctl_with_val(&file, TUNSETOFFLOAD(), 0) } < 0 {
            return Err(TapError::Other {
                what: format!("tap {name}: turning offloads off (TUNSETOFFLOAD)"),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tap { file, name })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn send<B: BitmapSlice>(&mut self, parts: &[VolatileSlice<'_, B>]) -> io::Result<usize> {
        // The guards keep the slices' pointers valid (and any dirty tracking honest) until
        // `writev` has returned.
        let guards: Vec<_> = parts.iter().map(|p| p.ptr_guard()).collect();
        let iov: Vec<libc::iovec> = guards
            .iter()
            .zip(parts)
            .map(|(g, p)| libc::iovec {
                iov_base: g.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        // SAFETY: every iovec points into a live guest memory mapping for its length (the
        // VolatileSlices were bounds-checked by vm-memory, and the guards are alive); writev
        // only reads through them. The guest may change those bytes meanwhile: the frame is
        // then what it wrote, which is its business.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_would_refuse_are_refused_first() {
        for bad in ["", "a/b", "sixteen-chars-xx", "a b", "x%d", ".."] {
            assert!(!valid_name(bad), "{bad}");
            let e = Tap::open_at(Path::new("/nonexistent"), Some(bad)).unwrap_err();
            assert!(matches!(e, TapError::BadName(_)), "{e}");
        }
        assert!(valid_name("tap0") && valid_name("mv-net_1.x"));
    }

    #[test]
    fn a_missing_clone_device_says_what_to_load() {
        let e = Tap::open_at(Path::new("/nonexistent/net/tun"), Some("tap0")).unwrap_err();
        assert!(matches!(e, TapError::NoTunDevice { .. }), "{e}");
        assert!(e.to_string().contains("modprobe tun"), "{e}");
    }
}
