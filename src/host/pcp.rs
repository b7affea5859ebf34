//! The kernel's per-CPU free page lists ("pagesets" in `/proc/zoneinfo`), read-only: a page
//! freed on a CPU goes onto that CPU's list while the list holds fewer than its `high` pages,
//! and only past that to the buddy allocator (under the zone lock, merging buddies), which
//! costs several times more per page. Since Linux 6.7 `high` is tuned on the fly between
//! `high_min` and `high_max`: raised while the CPU allocates, lowered by an eighth every
//! second while it does not. So how fast a CPU frees memory depends on what it allocated in
//! the last seconds — `memvisor bench balloon` reports it beside its figures.

/// One CPU's lists, summed over the zones of every node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PcpLists {
    /// Pages on the lists.
    pub count: u64,
    /// Pages the lists may hold before frees go to the buddy allocator.
    pub high: u64,
}

impl PcpLists {
    /// Pages a free can still put on the lists.
    pub fn room(&self) -> u64 {
        self.high.saturating_sub(self.count)
    }
}

/// CPU `cpu`'s lists now; `None` when `/proc/zoneinfo` cannot be read or does not list the CPU.
pub fn of_cpu(cpu: usize) -> Option<PcpLists> {
    parse(&std::fs::read_to_string("/proc/zoneinfo").ok()?, cpu)
}

/// The lists of the CPU the calling thread runs on now.
pub fn of_this_cpu() -> Option<PcpLists> {
    // SAFETY: sched_getcpu takes no arguments and touches no memory of ours.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok().and_then(of_cpu)
}

fn parse(zoneinfo: &str, cpu: usize) -> Option<PcpLists> {
    let mut ours = false;
    let mut seen = false;
    let mut out = PcpLists::default();
    for line in zoneinfo.lines() {
        let line = line.trim();
        if line.starts_with("Node ") {
            ours = false;
        } else if let Some(n) = line.strip_prefix("cpu:") {
            ours = n.trim().parse::<usize>().ok() == Some(cpu);
            seen |= ours;
        } else if ours {
            let value = |key: &str| line.strip_prefix(key)?.trim().parse::<u64>().ok();
            if let Some(v) = value("count:") {
                out.count += v;
            } else if let Some(v) = value("high:") {
                out.high += v;
            } else if line.starts_with("vm stats threshold") {
                ours = false;
            }
        }
    }
    seen.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONEINFO: &str = "Node 0, zone      DMA
  pages free     3840
  pagesets
    cpu: 0
              count:    0
              high:     0
              batch:    1
  vm stats threshold: 8
    cpu: 1
              count:    3
              high:     6
              batch:    1
              high_min: 6
              high_max: 240
  vm stats threshold: 8
  node_unreclaimable:  0
Node 0, zone   Normal
  pages free     5000000
        high     70000
  pagesets
    cpu: 0
              count:    500
              high:     10081
              batch:    63
  vm stats threshold: 72
    cpu: 1
              count:    104434
              high:     104584
              batch:    63
              high_min: 10081
              high_max: 337141
  vm stats threshold: 72
  node_unreclaimable:  0
";

    #[test]
    fn one_cpus_lists_are_summed_over_zones() {
        let one = parse(ZONEINFO, 1).unwrap();
        assert_eq!(
            one,
            PcpLists {
                count: 104437,
                high: 104590
            }
        );
        assert_eq!(one.room(), 153);
        // The zone's own "high" watermark line is not a CPU's.
        assert_eq!(parse(ZONEINFO, 0).unwrap().high, 10081);
        assert_eq!(parse(ZONEINFO, 2), None);
    }

    #[test]
    fn the_cpu_this_runs_on_is_listed() {
        if std::fs::read_to_string("/proc/zoneinfo").is_err() {
            test_support::skip("host::pcp", "/proc/zoneinfo is not readable here");
            return;
        }
        let lists = of_this_cpu().expect("the CPU this runs on is in /proc/zoneinfo");
        assert!(lists.high > 0, "{lists:?}");
    }
}
