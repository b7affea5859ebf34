//! memvisor's built-in guest.
//!
//! A tiny `no_std` x86-64 program the VMM enters directly in 64-bit mode, with paging set up
//! and all guest RAM identity-mapped. Its ring-0 part is a dozen instructions: drop to ring 3
//! (IOPL 3, so it can reach its hypercall port) and, if an exception ever arrives, report it.
//! Everything else runs in ring 3, because on a host without hardware virtualisation KVM
//! emulates guest ring-0 code one instruction at a time while ring-3 code runs natively.
//!
//! The VMM tells it what to do through the boot-info page (see `abi.rs`) and it reports each
//! operation's begin, end and results through port-I/O hypercalls.
//!
//! Built by the memvisor package's `build.rs` for the host target with `-nostdlib` and the
//! linker script `link.ld`; never run on the host.
#![no_std]
#![no_main]

#[allow(dead_code)]
#[path = "abi.rs"]
mod abi;
mod balloon;
mod virtio;

use abi::*;
use core::arch::{asm, global_asm};
use core::panic::PanicInfo;

// Entry: rdi = vCPU index, rsi = boot-info GPA, rdx = ring-3 stack top, rcx = boot flags.
// The header right after the jump is read by the VMM (see `abi::ImageHeader`).
global_asm!(
    r#"
    .section .text.entry, "ax"
    .global _start
_start:
    jmp 10f
    .balign 8
    .quad {magic}
    .quad exception_stubs
10:
    test rcx, {triple}
    jnz 20f
    push {user_ss}
    push rdx
    push 0x3002
    push {user_cs}
    lea rax, [rip + user_entry]
    push rax
    iretq
20:
    lidt [rip + null_idt]
    ud2
    .balign 8
null_idt:
    .word 0
    .quad 0

    .balign 16
exception_stubs:
    .set vec, 0
    .rept 32
    .balign 16
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    push vec
    .else
    push 0
    push vec
    .endif
    jmp exception_common
    .set vec, vec + 1
    .endr

exception_common:
    mov rax, cr2
    sub rsp, 64
    mov qword ptr [rsp], {hc_exception}
    mov qword ptr [rsp + 8], -1
    mov rbx, [rsp + 64]
    mov [rsp + 16], rbx
    mov rbx, [rsp + 72]
    mov [rsp + 24], rbx
    mov rbx, [rsp + 80]
    mov [rsp + 32], rbx
    mov [rsp + 40], rax
    mov rbx, [rsp + 88]
    mov [rsp + 48], rbx
    mov rbx, [rsp + 96]
    mov [rsp + 56], rbx
    mov eax, esp
    mov dx, {port}
    out dx, eax
30:
    hlt
    jmp 30b

    .text
user_entry:
    call user_main
    ud2
"#,
    magic = const IMAGE_MAGIC,
    triple = const BOOT_FLAG_TRIPLE_FAULT,
    user_ss = const (SEL_USER_DATA | 3) as u64,
    user_cs = const (SEL_USER_CODE | 3) as u64,
    hc_exception = const HC_EXCEPTION,
    port = const HYPERCALL_PORT,
);

// The compiler may call these; with -nostdlib nobody else provides them. Written in assembly so
// the compiler cannot turn their loops back into calls to themselves.
global_asm!(
    r#"
    .text
    .global memcpy
memcpy:
    mov rax, rdi
    mov rcx, rdx
    rep movsb
    ret
    .global memmove
memmove:
    mov rax, rdi
    cmp rdi, rsi
    jbe 40f
    lea rsi, [rsi + rdx - 1]
    lea rdi, [rdi + rdx - 1]
    mov rcx, rdx
    std
    rep movsb
    cld
    ret
40:
    mov rcx, rdx
    rep movsb
    ret
    .global memset
memset:
    mov r8, rdi
    mov eax, esi
    mov rcx, rdx
    rep stosb
    mov rax, r8
    ret
    .global memcmp
memcmp:
    xor eax, eax
    test rdx, rdx
    jz 52f
50:
    movzx eax, byte ptr [rdi]
    movzx ecx, byte ptr [rsi]
    sub eax, ecx
    jnz 52f
    inc rdi
    inc rsi
    dec rdx
    jnz 50b
52:
    ret
    .global bcmp
bcmp:
    jmp memcmp
"#
);

/// The hypercall channel of one vCPU, counting the calls it makes.
struct Channel {
    vcpu: u64,
    calls: u64,
}

impl Channel {
    /// Makes hypercall `nr`; returns the arguments as the VMM left them (some calls answer
    /// there).
    fn call(&mut self, nr: u64, args: [u64; 6]) -> [u64; 6] {
        let mut block = Hypercall {
            nr,
            vcpu: self.vcpu,
            args,
        };
        self.calls += 1;
        let addr = &mut block as *mut Hypercall as u64 as u32;
        // SAFETY: a 32-bit `out` to the hypercall port; IOPL 3 allows it in ring 3. The VMM reads
        // (and may write) the block during the exit, so the asm is not marked `nomem`.
        unsafe { asm!("out dx, eax", in("dx") HYPERCALL_PORT, in("eax") addr, options(nostack)) };
        core::hint::black_box(&mut block);
        // SAFETY: reading back the block the VMM may have written during the exit.
        unsafe { core::ptr::read_volatile(&block.args) }
    }

    fn log(&mut self, msg: &str) {
        self.call(HC_LOG, [msg.as_ptr() as u64, msg.len() as u64, 0, 0, 0, 0]);
    }

    fn done(&mut self, status: u64) -> ! {
        let calls = self.calls + 1;
        self.call(HC_DONE, [status, calls, 0, 0, 0, 0]);
        loop {
            core::hint::spin_loop();
        }
    }
}

/// A vCPU's share of a list of ranges: the `index`-th of `parts` contiguous slices of their
/// concatenation, cut at 4 KiB boundaries.
struct Share {
    ranges: [GpaRange; MAX_RANGES],
    len: usize,
}

impl Share {
    fn new(all: &[GpaRange], parts: u64, index: u64) -> Share {
        let total: u64 = all.iter().map(|r| r.end - r.start).sum();
        let per = (total / parts.max(1)) & !0xfff;
        let from = per * index;
        let to = if index + 1 >= parts {
            total
        } else {
            from + per
        };
        let mut share = Share {
            ranges: [GpaRange::default(); MAX_RANGES],
            len: 0,
        };
        let mut offset = 0;
        for r in all {
            let len = r.end - r.start;
            let lo = from.max(offset);
            let hi = to.min(offset + len);
            if lo < hi {
                share.ranges[share.len] = GpaRange {
                    start: r.start + (lo - offset),
                    end: r.start + (hi - offset),
                };
                share.len += 1;
            }
            offset += len;
        }
        share
    }

    fn ranges(&self) -> &[GpaRange] {
        &self.ranges[..self.len]
    }

    /// The first `bytes` of the share (all of it when `bytes` is 0 or larger), cut at 8 bytes.
    fn prefix(mut self, bytes: u64) -> Share {
        if bytes == 0 {
            return self;
        }
        let mut left = bytes & !7;
        let mut n = 0;
        while n < self.len && left > 0 {
            let r = &mut self.ranges[n];
            let len = r.end - r.start;
            if len > left {
                r.end = r.start + left;
            }
            left -= r.end - r.start;
            n += 1;
        }
        self.len = n;
        self
    }
}

fn words(r: &GpaRange) -> &'static mut [u64] {
    // SAFETY: all guest RAM is identity-mapped and writable from ring 3, and shares of different
    // vCPUs are disjoint, so this vCPU is the only one using these words.
    unsafe {
        core::slice::from_raw_parts_mut(r.start as *mut u64, ((r.end - r.start) / 8) as usize)
    }
}

fn touch(share: &Share, stride: u64, passes: u64) -> u64 {
    let stride = stride.max(8) & !7;
    let mut touches = 0;
    for _ in 0..passes.max(1) {
        for r in share.ranges() {
            let mut p = r.start;
            while p < r.end {
                // SAFETY: `p` is an aligned word of identity-mapped guest RAM. An atomic add of
                // zero dirties the page without changing it, even if another vCPU or the VMM
                // uses the same word (the guest's own stacks lie in the "all RAM" scope).
                unsafe { asm!("lock add qword ptr [{p}], 0", p = in(reg) p, options(nostack)) };
                touches += 1;
                p += stride;
            }
        }
    }
    touches
}

fn fill_pattern(share: &Share, seed: u64, sparse: u64) -> u64 {
    let mut bytes = 0;
    for r in share.ranges() {
        for (i, w) in words(r).iter_mut().enumerate() {
            *w = pattern_at(r.start + 8 * i as u64, seed, sparse);
        }
        bytes += r.end - r.start;
    }
    bytes
}

fn verify_pattern(share: &Share, seed: u64, sparse: u64) -> [u64; 3] {
    let (mut bytes, mut bad, mut first) = (0, 0, u64::MAX);
    for r in share.ranges() {
        for (i, w) in words(r).iter().enumerate() {
            let gpa = r.start + 8 * i as u64;
            if *w != pattern_at(gpa, seed, sparse) {
                bad += 1;
                first = first.min(gpa);
            }
        }
        bytes += r.end - r.start;
    }
    [bytes, bad, first]
}

fn fill_same(share: &Share, value: u64) -> u64 {
    let mut bytes = 0;
    for r in share.ranges() {
        for (i, w) in words(r).iter_mut().enumerate() {
            *w = same_word((8 * i as u64) & 0xfff, value);
        }
        bytes += r.end - r.start;
    }
    bytes
}

fn checksum(share: &Share) -> [u64; 3] {
    let (mut bytes, mut sum, mut zeros) = (0u64, 0u64, 0u64);
    for r in share.ranges() {
        for w in words(r).iter() {
            sum = sum.rotate_left(5) ^ *w;
            zeros += (*w == 0) as u64;
        }
        bytes += r.end - r.start;
    }
    [bytes, sum, zeros]
}

fn read(share: &Share, stride: u64, passes: u64) -> [u64; 3] {
    let stride = stride.max(8) & !7;
    let (mut reads, mut sum) = (0u64, 0u64);
    for _ in 0..passes.max(1) {
        for r in share.ranges() {
            let mut p = r.start;
            while p < r.end {
                // SAFETY: an aligned word of identity-mapped guest RAM.
                sum = sum.wrapping_add(unsafe { core::ptr::read_volatile(p as *const u64) });
                reads += 1;
                p += stride;
            }
        }
    }
    [reads, sum, 0]
}

fn random(share: &Share, working_set: u64, accesses: u64, seed: u64) -> [u64; 3] {
    // The working set is the first `working_set` bytes of the share (all of it if 0 or larger).
    let mut avail: u64 = share.ranges().iter().map(|r| r.end - r.start).sum();
    if working_set != 0 && working_set < avail {
        avail = working_set;
    }
    let nwords = avail / 8;
    if nwords == 0 {
        return [0, 0, 0];
    }
    let mut x = seed | 1;
    let mut sum = 0u64;
    for _ in 0..accesses {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut off = (x % nwords) * 8;
        for r in share.ranges() {
            let len = r.end - r.start;
            if off < len {
                let p = (r.start + off) as *mut u64;
                // SAFETY: an aligned word inside this vCPU's own share of guest RAM.
                unsafe {
                    let v = core::ptr::read_volatile(p);
                    core::ptr::write_volatile(p, v);
                    sum = sum.wrapping_add(v);
                }
                break;
            }
            off -= len;
        }
    }
    [accesses, sum, 0]
}

/// `OP_HOLD`: touch the first `ws` bytes of the share each round until finish or `seconds`.
fn hold(ch: &mut Channel, share: Share, seconds: u64, ws: u64, stride: u64) -> [u64; 3] {
    let (mut rounds, mut touches) = (0u64, 0u64);
    let part = share.prefix(ws);
    let mut started = None;
    loop {
        let r = ch.call(HC_POLL, [0; 6]);
        let t0 = *started.get_or_insert(r[4]);
        if r[5] != 0 || (seconds != 0 && r[4].saturating_sub(t0) >= seconds * 1000) {
            break;
        }
        if ws != 0 {
            touches += touch(&part, stride, 1);
        }
        rounds += 1;
        ch.call(HC_WAIT, [10_000, 0, 0, 0, 0, 0]);
    }
    [rounds, touches, 0]
}

fn run_op(op: &Op, info: &BootInfo, vcpu: u64) -> [u64; 3] {
    let work = Share::new(&info.work[..info.num_work as usize], info.num_vcpus, vcpu);
    let a = op.args;
    match op.kind {
        OP_TOUCH => {
            let share = if a[2] == SCOPE_ALL_RAM {
                Share::new(&info.ram[..info.num_ram as usize], info.num_vcpus, vcpu)
            } else {
                work
            };
            [touch(&share.prefix(a[3]), a[0], a[1]), 0, 0]
        }
        OP_FILL_PATTERN => [fill_pattern(&work, a[0], a[1]), 0, 0],
        OP_VERIFY_PATTERN => verify_pattern(&work, a[0], a[1]),
        OP_FILL_SAME => [fill_same(&work, a[0]), 0, 0],
        OP_CHECKSUM => checksum(&work),
        OP_READ => read(&work.prefix(a[2]), a[0], a[1]),
        OP_RANDOM => random(&work, a[0], a[1], a[2] ^ vcpu),
        OP_FAULT => {
            // SAFETY: deliberately raises #UD; the exception handler reports it to the VMM.
            unsafe { asm!("ud2", options(nostack, noreturn)) }
        }
        _ => [u64::MAX, 0, 0],
    }
}

/// Ring-3 main of every vCPU.
#[no_mangle]
extern "C" fn user_main(vcpu: u64, info: *const BootInfo) -> ! {
    let mut ch = Channel { vcpu, calls: 0 };
    // SAFETY: the VMM wrote the boot-info page at this identity-mapped address before entry
    // and does not change it while the guest runs.
    let info = unsafe { &*info };
    if info.magic != BOOT_INFO_MAGIC {
        ch.log("boot info has a wrong magic");
        ch.done(1);
    }
    let mut status = 0;
    for i in 0..(info.num_ops as usize).min(MAX_OPS) {
        let op = &info.ops[i];
        ch.call(HC_OP_BEGIN, [i as u64, op.kind, 0, 0, 0, 0]);
        let r = match op.kind {
            OP_SYNC => {
                ch.call(HC_SYNC, [op.args[0], 0, 0, 0, 0, 0]);
                [op.args[0], 0, 0]
            }
            // The balloon and its memory model belong to vCPU 0; the others skip these steps.
            OP_BALLOON | OP_GROW if vcpu != 0 => [0, 0, 0],
            OP_BALLOON | OP_GROW => {
                let (r, s) = if op.kind == OP_BALLOON {
                    balloon::run_balloon(&mut ch, info, op.args)
                } else {
                    balloon::run_grow(&mut ch, info, op.args)
                };
                if status == 0 {
                    status = s;
                }
                r
            }
            OP_HOLD => {
                let work = Share::new(&info.work[..info.num_work as usize], info.num_vcpus, vcpu);
                hold(&mut ch, work, op.args[0], op.args[1], op.args[2])
            }
            _ => run_op(op, info, vcpu),
        };
        ch.call(HC_OP_END, [i as u64, op.kind, r[0], r[1], r[2], 0]);
    }
    ch.done(status)
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    // SAFETY: reported to the VMM through the exception path.
    unsafe { asm!("ud2", options(nostack, noreturn)) }
}

/// The precompiled `core` for the host target refers to this symbol (it was built with
/// unwinding); with `panic=abort` nothing ever calls it.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
