//! memvisor's test agent: runs inside the Linux test guest (`/init` execs it once the system
//! is up; `scripts/guest/test-kernel.sh` builds it static and puts it in the initramfs) and
//! answers one command per line on stdin (the serial console) with `memvisor-guest: ` lines:
//!
//! | command | answer |
//! |---|---|
//! | `meminfo` | `meminfo MemTotal: N MemFree: N MemAvailable: N` (kB, from `/proc/meminfo`) |
//! | `fill MIB` | a new allocation of MIB MiB, every word written with a pattern: `filled MIB held H` |
//! | `fill MIB same` | the same, but every 4 KiB page holds the same bytes (for KSM): `filled MIB held H` |
//! | `verify` | every allocation read back: `verified BYTES mismatches N` |
//! | `free` | every allocation returned to the guest kernel (`munmap`): `freed MIB` |
//! | `balloon` | what the guest's virtio devices show: `balloon DEVICE driver D features F` |
//! | `interrupts` | `/proc/interrupts`, each line as `irq LINE` |
//! | `echo TEXT` | `echo TEXT` |
//! | `run CMD` | runs `sh -c CMD`: `ran STATUS` |
//! | `poweroff` | `reboot -f` (memvisor ends the run cleanly) |
//!
//! The work is done in user mode on purpose: where KVM emulates guest ring 0, user code runs
//! natively and only the page faults and system calls are slow.

use std::io::{self, BufRead, Write};

/// One allocation: its pattern seed, how often the pattern repeats (in words) and its words.
struct Block {
    seed: u64,
    period: usize,
    words: Vec<u64>,
}

/// 8-byte words per 4 KiB page: a block filled `same` repeats its pattern every page.
const PAGE_WORDS: usize = 512;

fn pattern(seed: u64, i: usize) -> u64 {
    (seed << 48) ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl Block {
    fn expected(&self, i: usize) -> u64 {
        pattern(self.seed, i % self.period)
    }
}

fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "memvisor-guest: {line}");
    let _ = out.flush();
}

fn meminfo() -> String {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mut out = String::from("meminfo");
    for l in text.lines() {
        let mut w = l.split_whitespace();
        if let (Some(k @ ("MemTotal:" | "MemFree:" | "MemAvailable:")), Some(v)) =
            (w.next(), w.next())
        {
            out.push_str(&format!(" {k} {v}"));
        }
    }
    out
}

fn balloon() {
    let Ok(dir) = std::fs::read_dir("/sys/bus/virtio/devices") else {
        say("balloon no virtio bus");
        return;
    };
    for d in dir.flatten() {
        let p = d.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        let driver = std::fs::read_link(p.join("driver"))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "none".into());
        say(&format!(
            "balloon {} device {} driver {driver} features {}",
            d.file_name().to_string_lossy(),
            read("device").trim(),
            read("features").trim()
        ));
    }
}

/// A new allocation of `mib` MiB written with its pattern; with `same_pages` every page holds
/// the same bytes.
fn fill(blocks: &mut Vec<Block>, mib: usize, same_pages: bool) {
    let seed = blocks.len() as u64 + 1;
    let period = if same_pages { PAGE_WORDS } else { usize::MAX };
    let n = mib << 17; // 8-byte words per MiB: 2^17.
    let mut words = Vec::with_capacity(n);
    words.extend((0..n).map(|i| pattern(seed, i % period)));
    blocks.push(Block {
        seed,
        period,
        words,
    });
    let held: usize = blocks.iter().map(|b| b.words.len() >> 17).sum();
    say(&format!("filled {mib} held {held}"));
}

/// Bytes checked and words that did not match their pattern.
fn verify(blocks: &[Block]) -> (u64, u64) {
    let mut bytes = 0u64;
    let mut bad = 0u64;
    for b in blocks {
        bad += b
            .words
            .iter()
            .enumerate()
            .filter(|(i, w)| **w != b.expected(*i))
            .count() as u64;
        bytes += 8 * b.words.len() as u64;
    }
    (bytes, bad)
}

fn main() {
    // Allocations of 128 KiB and more always get their own mapping, so `free` unmaps them
    // (glibc otherwise raises its threshold after the first free and serves later
    // allocations from the heap, which it may keep).
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
    let mut blocks: Vec<Block> = Vec::new();
    say("ready (memvisor-agent)");
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (cmd, arg) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        match cmd {
            "meminfo" => say(&meminfo()),
            "fill" => {
                let (size, how) = arg.trim().split_once(' ').unwrap_or((arg.trim(), ""));
                match (size.parse::<usize>(), how.trim()) {
                    (Ok(mib), how @ ("" | "same")) if mib > 0 => {
                        fill(&mut blocks, mib, how == "same")
                    }
                    _ => say(&format!("bad fill `{arg}`: give MiB, optionally `same`")),
                }
            }
            "verify" => {
                let (bytes, bad) = verify(&blocks);
                say(&format!("verified {bytes} mismatches {bad}"));
            }
            "free" => {
                let mib: usize = blocks.iter().map(|b| b.words.len() >> 17).sum();
                blocks.clear();
                say(&format!("freed {mib}"));
            }
            "balloon" => balloon(),
            "interrupts" => {
                for l in std::fs::read_to_string("/proc/interrupts")
                    .unwrap_or_default()
                    .lines()
                {
                    say(&format!("irq {}", l.trim()));
                }
            }
            "echo" => say(&format!("echo {arg}")),
            "run" => {
                let status = std::process::Command::new("sh").arg("-c").arg(arg).status();
                match status {
                    Ok(s) => say(&format!("ran {}", s.code().unwrap_or(-1))),
                    Err(e) => say(&format!("ran failed: {e}")),
                }
            }
            "poweroff" => {
                say("poweroff");
                let _ = std::process::Command::new("reboot").arg("-f").status();
            }
            "" => {}
            other => say(&format!("unknown command {other}")),
        }
    }
    say("console input ended");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_verifies_and_a_changed_word_is_found() {
        let mut blocks = Vec::new();
        fill(&mut blocks, 1, false);
        fill(&mut blocks, 2, false);
        assert_eq!(verify(&blocks), (3 << 20, 0));
        blocks[1].words[12345] ^= 1;
        assert_eq!(verify(&blocks), (3 << 20, 1));
        // Each block has its own pattern, and no two of its pages are alike.
        assert_ne!(blocks[0].words[7], blocks[1].words[7]);
        assert_ne!(
            blocks[0].words[..PAGE_WORDS],
            blocks[0].words[PAGE_WORDS..][..PAGE_WORDS]
        );
    }

    #[test]
    fn same_fill_repeats_one_nonzero_page() {
        let mut blocks = Vec::new();
        fill(&mut blocks, 1, true);
        let w = &blocks[0].words;
        let first = &w[..PAGE_WORDS];
        assert!(w.chunks_exact(PAGE_WORDS).all(|p| p == first));
        assert!(first.iter().any(|x| *x != 0), "not the zero page");
        assert_eq!(verify(&blocks), (1 << 20, 0));
        blocks[0].words[PAGE_WORDS * 3 + 5] ^= 1;
        assert_eq!(verify(&blocks), (1 << 20, 1));
    }
}
