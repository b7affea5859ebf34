//! The virtio-mmio transport (version 2, virtio 1.2 §4.2.2): the register window a driver uses
//! to negotiate features, set up queues and notify the device, over any [`VirtioDevice`].
//!
//! Queue notifications are handled synchronously on the vCPU thread that wrote `QueueNotify`.
//! Interrupt status is kept for drivers that poll it; [`MmioTransport::wait_event`] lets a
//! polling driver block (through the wait hypercall) until the status becomes non-zero.

use super::virtio::VirtioDevice;
use std::sync::{Condvar, Mutex};
use std::time::Duration;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// Size of the register window.
pub const MMIO_WINDOW: u64 = 0x1000;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4d56_4d56; // "MVMV"

/// Device status bits.
const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;

/// Interrupt status bits.
pub const INT_USED_BUFFER: u32 = 1;
/// The configuration changed.
pub const INT_CONFIG: u32 = 2;

struct State {
    status: u32,
    dev_features_sel: u32,
    drv_features_sel: u32,
    queue_sel: u32,
    queues: Vec<Queue>,
    config_generation: u32,
    activated: bool,
    bad_accesses: u64,
}

/// A device behind a virtio-mmio register window at `base`.
pub struct MmioTransport<D: VirtioDevice> {
    base: u64,
    device: Mutex<D>,
    state: Mutex<State>,
    interrupt: Mutex<u32>,
    wake: Condvar,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Wraps `device` at guest-physical `base`.
    pub fn new(base: u64, device: D) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&m| Queue::new(m).expect("device queue sizes are valid"))
            .collect();
        MmioTransport {
            base,
            device: Mutex::new(device),
            state: Mutex::new(State {
                status: 0,
                dev_features_sel: 0,
                drv_features_sel: 0,
                queue_sel: 0,
                queues,
                config_generation: 0,
                activated: false,
                bad_accesses: 0,
            }),
            interrupt: Mutex::new(0),
            wake: Condvar::new(),
        }
    }

    /// Guest-physical base of the window.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Whether `addr` falls in this window.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr < self.base + MMIO_WINDOW
    }

    /// Runs `f` on the device (e.g. the API setting a balloon target). When it returns true the
    /// device configuration changed: the generation is bumped and a config interrupt raised.
    pub fn with_device<R>(&self, f: impl FnOnce(&mut D) -> (R, bool)) -> R {
        let (r, changed) = f(&mut self.device.lock().unwrap());
        if changed {
            self.state.lock().unwrap().config_generation += 1;
            self.raise(INT_CONFIG);
        }
        r
    }

    /// Runs `f` on the device with guest memory; when it returns true the used ring changed.
    pub fn with_device_mem<R>(&self, f: impl FnOnce(&mut D) -> (R, bool)) -> R {
        let (r, used) = f(&mut self.device.lock().unwrap());
        if used {
            self.raise(INT_USED_BUFFER);
        }
        r
    }

    fn raise(&self, bits: u32) {
        *self.interrupt.lock().unwrap() |= bits;
        self.wake.notify_all();
    }

    /// Blocks until an interrupt is pending or `timeout` passes; returns the pending bits.
    pub fn wait_event(&self, timeout: Duration) -> u32 {
        let guard = self.interrupt.lock().unwrap();
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, timeout, |s| *s == 0)
            .unwrap();
        *guard
    }

    /// Register and config-space accesses the driver got wrong.
    pub fn bad_accesses(&self) -> u64 {
        self.state.lock().unwrap().bad_accesses
    }

    /// An MMIO read at `addr` (inside the window).
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        let off = addr - self.base;
        if off >= 0x100 {
            self.device.lock().unwrap().read_config(off - 0x100, data);
            return;
        }
        let mut st = self.state.lock().unwrap();
        if data.len() != 4 {
            st.bad_accesses += 1;
            data.fill(0);
            return;
        }
        let dev = self.device.lock().unwrap();
        let v: u32 = match off {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => dev.device_type(),
            0x00c => VENDOR,
            0x010 => match st.dev_features_sel {
                0 => dev.avail_features() as u32,
                1 => (dev.avail_features() >> 32) as u32,
                _ => 0,
            },
            0x034 => st
                .queues
                .get(st.queue_sel as usize)
                .map(|q| q.max_size() as u32)
                .unwrap_or(0),
            0x044 => st
                .queues
                .get(st.queue_sel as usize)
                .map(|q| q.ready() as u32)
                .unwrap_or(0),
            0x060 => *self.interrupt.lock().unwrap(),
            0x070 => st.status,
            0x0fc => st.config_generation,
            _ => {
                st.bad_accesses += 1;
                0
            }
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// An MMIO write at `addr` (inside the window). Queue notifications are processed here,
    /// with `mem` as guest memory.
    pub fn write(&self, addr: u64, data: &[u8], mem: &GuestMemoryMmap) {
        let off = addr - self.base;
        if off >= 0x100 {
            self.device.lock().unwrap().write_config(off - 0x100, data);
            return;
        }
        if data.len() != 4 {
            self.state.lock().unwrap().bad_accesses += 1;
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        if off == 0x050 {
            self.notify(v as u16, mem);
            return;
        }
        if off == 0x064 {
            *self.interrupt.lock().unwrap() &= !v;
            return;
        }
        let mut st = self.state.lock().unwrap();
        let sel = st.queue_sel as usize;
        let queue_setup_allowed = st.status & STATUS_DRIVER_OK == 0;
        match off {
            0x014 => st.dev_features_sel = v,
            0x020 => {
                if st.status & STATUS_FEATURES_OK == 0 {
                    let shift = if st.drv_features_sel == 1 { 32 } else { 0 };
                    if st.drv_features_sel <= 1 {
                        self.device
                            .lock()
                            .unwrap()
                            .ack_features((v as u64) << shift);
                    }
                } else {
                    st.bad_accesses += 1;
                }
            }
            0x024 => st.drv_features_sel = v,
            0x030 => st.queue_sel = v,
            0x038 | 0x044 | 0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4
                if queue_setup_allowed =>
            {
                let Some(q) = st.queues.get_mut(sel) else {
                    st.bad_accesses += 1;
                    return;
                };
                match off {
                    0x038 => q.set_size(v as u16),
                    0x044 => q.set_ready(v == 1),
                    0x080 => q.set_desc_table_address(Some(v), None),
                    0x084 => q.set_desc_table_address(None, Some(v)),
                    0x090 => q.set_avail_ring_address(Some(v), None),
                    0x094 => q.set_avail_ring_address(None, Some(v)),
                    0x0a0 => q.set_used_ring_address(Some(v), None),
                    _ => q.set_used_ring_address(None, Some(v)),
                }
            }
            0x070 => self.set_status(&mut st, v),
            _ => st.bad_accesses += 1,
        }
    }

    fn set_status(&self, st: &mut State, v: u32) {
        if v == 0 {
            st.status = 0;
            st.activated = false;
            st.dev_features_sel = 0;
            st.drv_features_sel = 0;
            st.queue_sel = 0;
            for q in st.queues.iter_mut() {
                q.reset();
            }
            self.device.lock().unwrap().reset();
            *self.interrupt.lock().unwrap() = 0;
            return;
        }
        // Status only gains bits (except by reset); FAILED is accepted at any time.
        if v & st.status != st.status && v & STATUS_FAILED == 0 {
            st.bad_accesses += 1;
            return;
        }
        let newly = v & !st.status;
        st.status = v;
        if newly & STATUS_DRIVER_OK != 0 && !st.activated {
            let expect = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
            let result = if v & expect != expect {
                Err("driver set DRIVER_OK before FEATURES_OK".to_string())
            } else {
                self.device
                    .lock()
                    .unwrap()
                    .activate(st.queues.iter().map(copy_queue).collect())
            };
            match result {
                Ok(()) => st.activated = true,
                Err(e) => {
                    log::warn!("virtio-mmio at {:#x}: activation failed: {e}", self.base);
                    st.status |= STATUS_NEEDS_RESET;
                    self.raise(INT_CONFIG);
                }
            }
        }
    }

    fn notify(&self, queue: u16, mem: &GuestMemoryMmap) {
        {
            let mut st = self.state.lock().unwrap();
            if !st.activated {
                st.bad_accesses += 1;
                return;
            }
        }
        let mut dev = self.device.lock().unwrap();
        match dev.process_queue(queue, mem) {
            Ok(true) => {
                drop(dev);
                self.raise(INT_USED_BUFFER);
            }
            Ok(false) => {}
            Err(e) => {
                let needs_reset = dev.needs_reset();
                drop(dev);
                log::warn!("virtio-mmio at {:#x}: queue {queue}: {e}", self.base);
                if needs_reset {
                    self.state.lock().unwrap().status |= STATUS_NEEDS_RESET;
                    self.raise(INT_CONFIG);
                }
            }
        }
    }
}

/// A copy of a queue's driver-set configuration (virtio-queue's `Queue` is not `Clone`).
fn copy_queue(q: &Queue) -> Queue {
    let mut c = Queue::new(q.max_size()).expect("same max size is valid");
    c.set_size(q.size());
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(q.desc_table());
    c.set_desc_table_address(lo, hi);
    let (lo, hi) = split(q.avail_ring());
    c.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(q.used_ring());
    c.set_used_ring_address(lo, hi);
    c.set_ready(q.ready());
    c
}
