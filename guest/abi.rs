//! The contract between memvisor and its built-in guest: guest-physical layout, the boot-info
//! page the VMM writes, the port-I/O hypercall interface the guest reports through, and the data
//! pattern both sides can compute.
//!
//! This one file is compiled into both programs (the VMM includes it as a module, the guest
//! includes it with `include!`), so the two can never disagree. It must stay `no_std`-clean:
//! constants, `#[repr(C)]` plain-data types and `const fn`s only.

/// Guest-physical address of the GDT the VMM builds.
pub const GDT_GPA: u64 = 0x1000;
/// Guest-physical address of the IDT the VMM builds.
pub const IDT_GPA: u64 = 0x2000;
/// Guest-physical address of the per-vCPU TSS array.
pub const TSS_GPA: u64 = 0x3000;
/// Size of one 64-bit TSS (without its I/O permission bitmap).
pub const TSS_SIZE: u64 = 104;
/// Bytes of I/O permission bitmap after each TSS (ports 0..0x800), plus the 0xff terminator
/// byte the CPU requires. IOPL 3 alone is not enough: KVM without hardware virtualisation
/// (`kvm_pvm`) drops IOPL when the guest enters ring 3, but honours the TSS bitmap.
pub const IO_BITMAP_BYTES: u64 = 0x100;
/// Distance between two vCPUs' TSSs (TSS + bitmap + terminator, rounded up).
pub const TSS_STRIDE: u64 = 0x180;
/// Guest-physical address of the boot-info page.
pub const BOOT_INFO_GPA: u64 = 0x9000;
/// Guest-physical address of the first page-table page (PML4); PDPT and PDs follow.
pub const PAGE_TABLE_GPA: u64 = 0x10_0000;
/// Bytes reserved for page tables (256 pages: 1 PML4, 1 PDPT, up to 254 PDs of 1 GiB each).
pub const PAGE_TABLE_BYTES: u64 = 0x10_0000;
/// Where the guest image is linked and loaded.
pub const IMAGE_GPA: u64 = 0x20_0000;
/// Largest guest image the layout has room for.
pub const IMAGE_MAX_BYTES: u64 = 0x20_0000;
/// First per-vCPU stack area.
pub const STACKS_GPA: u64 = 0x40_0000;
/// Bytes of stack area per vCPU: a ring-0 stack followed by a ring-3 stack.
pub const STACK_BYTES_PER_VCPU: u64 = 0x2_0000;
/// Of which the ring-0 stack (used only by exception handlers).
pub const KERNEL_STACK_BYTES: u64 = 0x4000;
/// Start of the workload area: everything from here to the end of RAM belongs to workloads.
pub const WORK_AREA_GPA: u64 = 0x100_0000;
/// Smallest guest RAM the built-in guest can run in.
pub const MIN_RAM_BYTES: u64 = 0x200_0000;
/// Most vCPUs the layout has room for (stacks and TSSs).
pub const MAX_VCPUS: usize = 64;

/// GDT selectors (the VMM lays the GDT out in this order).
pub const SEL_KERNEL_CODE: u16 = 0x08;
/// Kernel data selector.
pub const SEL_KERNEL_DATA: u16 = 0x10;
/// User code selector (RPL 3 added by whoever loads it).
pub const SEL_USER_CODE: u16 = 0x18;
/// User data selector.
pub const SEL_USER_DATA: u16 = 0x20;
/// First TSS selector; vCPU `n` uses `SEL_TSS_BASE + 16 * n`.
pub const SEL_TSS_BASE: u16 = 0x28;

/// Number of exception stubs in the guest image (vectors 0..32).
pub const EXCEPTION_VECTORS: usize = 32;
/// Bytes between two exception stubs in the guest image.
pub const EXCEPTION_STUB_STRIDE: u64 = 16;

/// Magic at the start of the image header (`IMAGE_GPA`), right after the entry jump.
pub const IMAGE_MAGIC: u64 = u64::from_le_bytes(*b"MVGUEST1");

/// The image header: the first bytes of the guest image.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ImageHeader {
    /// A short jump over the header (the entry point is `IMAGE_GPA`).
    pub jump: u64,
    /// [`IMAGE_MAGIC`].
    pub magic: u64,
    /// Address of exception stub 0; stub `n` is at `+ n * EXCEPTION_STUB_STRIDE`.
    pub exception_stubs: u64,
}

/// The boot-info magic, so the guest can tell a VMM that speaks this ABI.
pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"MVBOOT02");
/// Most RAM ranges in the boot info.
pub const MAX_RANGES: usize = 8;
/// Most workload operations in the boot info.
pub const MAX_OPS: usize = 16;

/// Boot flag: triple-fault deliberately at entry (tests the VMM's failure path).
pub const BOOT_FLAG_TRIPLE_FAULT: u64 = 1;

/// A guest-physical range `[start, end)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpaRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// One workload operation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Op {
    /// One of the `OP_*` constants.
    pub kind: u64,
    /// Meaning depends on `kind` (see each `OP_*`).
    pub args: [u64; 4],
}

/// Touch pages: `args = [stride, passes, scope, working_set]`. Each touch is an atomic add of zero
/// to one 8-byte word, so it dirties the page without changing any data. `working_set` limits the
/// touches to the first that many bytes of the vCPU's share (0: all of it). Results:
/// `[touches, 0, 0]`.
pub const OP_TOUCH: u64 = 1;
/// Fill the vCPU's share of the work area with the address-derived pattern:
/// `args = [seed, sparse, 0, 0]` (see [`pattern_at`]). Results: `[bytes, 0, 0]`.
pub const OP_FILL_PATTERN: u64 = 2;
/// Verify the pattern written by `OP_FILL_PATTERN`: `args = [seed, sparse, 0, 0]`.
/// Results: `[bytes checked, mismatched words, GPA of the first mismatch or u64::MAX]`.
pub const OP_VERIFY_PATTERN: u64 = 3;
/// Fill every page of the share with the same content: `args = [value, 0, 0, 0]`.
/// Results: `[bytes, 0, 0]`.
pub const OP_FILL_SAME: u64 = 4;
/// Checksum the share: `args = [0; 4]`. Results: `[bytes, checksum, zero words]`.
pub const OP_CHECKSUM: u64 = 5;
/// Random 8-byte read-modify-writes over the first `working_set` bytes of the share:
/// `args = [working_set, accesses, seed, 0]`. Results: `[accesses, checksum, 0]`.
pub const OP_RANDOM: u64 = 6;
/// Sequential 8-byte reads, one per `stride`, over the first `working_set` bytes of the share
/// (0: all of it): `args = [stride, passes, working_set, 0]`. Results: `[reads, checksum, 0]`.
pub const OP_READ: u64 = 7;
/// Execute `ud2` in ring 3 (tests exception reporting). Never returns.
pub const OP_FAULT: u64 = 8;
/// Stop at a sync point: the vCPU makes an `HC_SYNC` hypercall and continues when the VMM
/// returns from it (tests and tools act on guest memory meanwhile): `args = [tag, 0, 0, 0]`.
/// Results: `[tag, 0, 0]`.
pub const OP_SYNC: u64 = 9;

/// `OP_TOUCH` scope: the vCPU's share of all RAM (including the guest's own pages).
pub const SCOPE_ALL_RAM: u64 = 0;
/// `OP_TOUCH` scope: the vCPU's share of the work area only.
pub const SCOPE_WORK_AREA: u64 = 1;

/// What the VMM tells the guest. Lives at [`BOOT_INFO_GPA`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// [`BOOT_INFO_MAGIC`].
    pub magic: u64,
    /// `BOOT_FLAG_*` bits.
    pub flags: u64,
    /// Number of vCPUs running the workload.
    pub num_vcpus: u64,
    /// Valid entries in `ram`.
    pub num_ram: u64,
    /// Guest RAM, ascending, without holes.
    pub ram: [GpaRange; MAX_RANGES],
    /// Valid entries in `work`.
    pub num_work: u64,
    /// The work area (RAM from [`WORK_AREA_GPA`] on), ascending.
    pub work: [GpaRange; MAX_RANGES],
    /// Valid entries in `ops`.
    pub num_ops: u64,
    /// The workload, run in order by every vCPU on its own share.
    pub ops: [Op; MAX_OPS],
    /// Guest-physical address of the virtio-mmio balloon device, 0 if none.
    pub balloon_mmio: u64,
}

impl Default for BootInfo {
    fn default() -> Self {
        BootInfo {
            magic: BOOT_INFO_MAGIC,
            flags: 0,
            num_vcpus: 0,
            num_ram: 0,
            ram: [GpaRange::default(); MAX_RANGES],
            num_work: 0,
            work: [GpaRange::default(); MAX_RANGES],
            num_ops: 0,
            ops: [Op::default(); MAX_OPS],
            balloon_mmio: 0,
        }
    }
}

/// The I/O port of the hypercall interface. The guest writes (32-bit `out`) the guest-physical
/// address of a [`Hypercall`] block; the VMM handles it during that exit and may write answers
/// back into the block.
pub const HYPERCALL_PORT: u16 = 0x0510;

/// A hypercall block.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Hypercall {
    /// One of the `HC_*` constants.
    pub nr: u64,
    /// The calling vCPU's index.
    pub vcpu: u64,
    /// Arguments; see each `HC_*`.
    pub args: [u64; 6],
}

/// Print a UTF-8 string: `args = [gpa, len, ..]`.
pub const HC_LOG: u64 = 1;
/// An operation begins: `args = [op index, op kind, ..]`.
pub const HC_OP_BEGIN: u64 = 2;
/// An operation ended: `args = [op index, op kind, result0, result1, result2, ..]`.
pub const HC_OP_END: u64 = 3;
/// The workload finished: `args = [status (0 = ok), hypercalls made including this one, ..]`.
pub const HC_DONE: u64 = 4;
/// An exception reached the guest's handler:
/// `args = [vector, error code, rip, cr2, cs, rflags]`. The vCPU never continues.
pub const HC_EXCEPTION: u64 = 5;

/// The word the pattern holds at guest-physical address `gpa` (8-byte aligned) for `seed`.
/// A cheap 64-bit mix (splitmix64 finaliser) so that every word differs and a misplaced page is
/// caught.
pub const fn pattern_word(gpa: u64, seed: u64) -> u64 {
    let mut z = gpa ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The pattern with `sparse`: every `sparse`-th word holds [`pattern_word`], the others zero
/// (0 or 1: every word), so the data compresses about `sparse`:1 while every word is still
/// checked (a lost page reads as zeros where the pattern was).
pub const fn pattern_at(gpa: u64, seed: u64, sparse: u64) -> u64 {
    if sparse > 1 && (gpa / 8) % sparse != 0 {
        0
    } else {
        pattern_word(gpa, seed)
    }
}

/// Wait for a device event: `args = [timeout µs, ..]`. The vCPU blocks in the VMM until a
/// device raises an interrupt or the timeout passes; the VMM writes the pending interrupt bits
/// of the balloon's virtio-mmio window into `args[1]` (0 on timeout). Lets a polling driver
/// sleep instead of spinning on MMIO reads (each a VM exit).
pub const HC_WAIT: u64 = 7;

/// A sync point: `args = [tag, ..]`. The VMM returns when whoever waits on it is done.
pub const HC_SYNC: u64 = 6;

/// The word `OP_FILL_SAME` writes at byte `offset_in_page` of every page.
pub const fn same_word(offset_in_page: u64, value: u64) -> u64 {
    value ^ (offset_in_page.wrapping_mul(0x0101_0101_0101_0101))
}

/// Guest-owned memory for device drivers (virtqueues and their buffers): from the end of the
/// last vCPU's stack area to the work area. The built-in guest's balloon driver keeps its queues
/// here (see `guest/balloon.rs`); the VMM never puts anything here.
pub const DRIVER_AREA_GPA: u64 = STACKS_GPA + MAX_VCPUS as u64 * STACK_BYTES_PER_VCPU;
/// Bytes of the driver area (4 MiB).
pub const DRIVER_AREA_BYTES: u64 = WORK_AREA_GPA - DRIVER_AREA_GPA;

/// Drive the virtio balloon (vCPU 0 only; other vCPUs skip it with results `[0, 0, 0]`). The
/// guest treats the whole work area as a pool of 4 KiB pages: a data set at the bottom (filled
/// with the pattern of `seed`), the balloon at the top, free pages between. It fills `data`
/// bytes (0: the whole work area), then until the VMM requests finish (see [`HC_PROGRESS`]) or
/// `seconds` pass (0: no limit): waits for a device event ([`HC_WAIT`]), inflates or deflates
/// to the target the device announces (inflating takes free pages first, then the top of the
/// data set; deflating lets the data set grow back toward `data`, re-filled with the pattern),
/// answers statistics requests, verifies a chunk of its data and reports progress.
/// `args = [data bytes, seconds, seed, 0]`. Results: `[data bytes owned, mismatched words,
/// balloon pages held]`.
pub const OP_BALLOON: u64 = 10;
/// Grow the data set of [`OP_BALLOON`] to `to` bytes (vCPU 0 only), filling the new pages with
/// the pattern and then verifying all of it. When free pages are not enough and
/// `VIRTIO_BALLOON_F_DEFLATE_ON_OOM` was negotiated, it deflates the balloon by what is missing
/// first (telling the device); without it the guest never touches ballooned pages: it grows
/// as far as free pages allow and the workload ends with [`STATUS_GROW_FAILED`].
/// `args = [to bytes, seed, 0, 0]`. Results: as [`OP_BALLOON`].
pub const OP_GROW: u64 = 11;

/// Hold until the VMM requests finish (see [`HC_POLL`]) or `seconds` pass (0: no limit),
/// touching the first `ws` bytes of the vCPU's share of the work area (one atomic add of zero
/// per `stride`) each round and waiting ~10 ms between rounds (`ws` 0: touch nothing).
/// `args = [seconds, ws, stride, 0]`. Results: `[rounds, touches, 0]`.
pub const OP_HOLD: u64 = 12;
/// Ask the VMM whether to finish: the VMM writes the host clock in ms into `args[4]` and 1 into
/// `args[5]` if finish was requested (consuming the request), else 0. Like [`HC_PROGRESS`]
/// without progress figures.
pub const HC_POLL: u64 = 9;

/// `HC_DONE` status: the balloon step found no usable balloon device (none configured, or the
/// driver could not initialise it).
pub const STATUS_BALLOON_FAILED: u64 = 2;
/// `HC_DONE` status: an [`OP_GROW`] could not reach its size.
pub const STATUS_GROW_FAILED: u64 = 3;

/// Progress of the balloon driver: `args = [data bytes owned, balloon pages held, mismatched
/// words so far, bytes verified so far, negotiated virtio features, ..]`. The VMM keeps the
/// latest per vCPU and answers in the block: `args[4]` = host monotonic clock in milliseconds,
/// `args[5]` = 1 if the VMM asked the guest to finish its current balloon step (the request is
/// consumed by this answer), else 0. The virtio statistics have no tag for the balloon's own
/// size, so it is reported here (and in the device's `actual`).
pub const HC_PROGRESS: u64 = 8;
