use super::*;

const G: u64 = 1 << 30;

fn guest(name: &str, target: u64, actual: u64, free: u64) -> GuestSample {
    GuestSample {
        name: name.into(),
        configured: 4 * G,
        target,
        actual,
        free: Some(free),
        // Statistics sent with the balloon where it is now.
        actual_at_stats: Some(actual),
        stats_age: Some(1.0),
        balloon: true,
        resident: None,
        ksm_merging: None,
    }
}

/// A guest without a balloon, `resident` bytes of its RAM resident.
fn no_balloon(name: &str, resident: u64) -> GuestSample {
    GuestSample::without_balloon(name.into(), 4 * G, Some(resident))
}

/// `(guest, to MiB, reason)` of the reclaim decisions.
fn reclaims(d: &[Decision]) -> Vec<(String, u64, String)> {
    d.iter()
        .filter_map(|d| match d {
            Decision::Reclaim { guest, to, .. } => Some((guest.clone(), *to / MIB, d.to_string())),
            _ => None,
        })
        .collect()
}

fn sample(t: f64, avail: u64, guests: Vec<GuestSample>) -> Sample {
    Sample {
        t,
        host: HostSample {
            mem_available: avail,
            mem_total: 24 * G,
            psi_some_avg10: Some(0.0),
            swap_active: false,
            ksm_sharing: None,
        },
        guests,
    }
}

fn with_swap(mut s: Sample) -> Sample {
    s.host.swap_active = true;
    s
}

fn targets(d: &[Decision]) -> Vec<(String, u64)> {
    d.iter()
        .filter_map(|d| match d {
            Decision::SetTarget { guest, to, .. } => Some((guest.clone(), *to / MIB)),
            _ => None,
        })
        .collect()
}

#[test]
fn takes_from_the_guest_with_most_free_first_in_steps() {
    let mut c = Controller::new(Policy::default());
    // 1.5 GiB available, floor 2 GiB, aim 2.5 GiB: 1 GiB missing.
    let d = c.decide(&sample(
        0.0,
        3 * G / 2,
        vec![
            guest("a", 0, 0, G),
            guest("b", 0, 0, 3 * G),
            guest("c", 0, 0, 2 * G),
        ],
    ));
    // 256 MiB steps: b, c, a, then ... only 3 guests: 768 MiB this tick.
    assert_eq!(
        targets(&d),
        vec![("b".into(), 256), ("c".into(), 256), ("a".into(), 256)]
    );
    assert!(d
        .iter()
        .any(|d| matches!(d, Decision::Note { guest, .. } if guest == "*")));
    assert!(
        d[0].to_string().contains("below the 2048 MiB floor"),
        "{}",
        d[0]
    );
}

#[test]
fn counts_what_guests_still_owe_and_holds_in_the_band() {
    let mut c = Controller::new(Policy::default());
    // 1 GiB missing, 1 GiB already owed by b (target 1 GiB, actual 0): nothing new.
    let d = c.decide(&sample(
        0.0,
        3 * G / 2,
        vec![guest("a", 0, 0, G), guest("b", G, 0, 3 * G)],
    ));
    assert_eq!(targets(&d), vec![]);
    // In the band (floor 2 GiB .. 3 GiB): hold.
    let d = c.decide(&sample(1.0, 5 * G / 2, vec![guest("a", G, G, G)]));
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn never_below_floor_or_into_headroom() {
    let p = Policy::default();
    let mut c = Controller::new(p.clone());
    let mut g = guest("a", 0, 0, 100 * MIB);
    let d = c.decide(&sample(0.0, G, vec![g.clone()]));
    // 100 MiB free - 64 MiB headroom = 36 MiB.
    assert_eq!(targets(&d), vec![("a".into(), 36)]);
    // A guest with lots free but little RAM above its floor.
    g.configured = p.guest_floor + 10 * MIB;
    g.free = Some(G);
    let d = c.decide(&sample(1.0, G, vec![g]));
    assert_eq!(targets(&d), vec![("a".into(), 10)]);
}

#[test]
fn free_memory_counts_what_the_balloon_moved_since_the_statistics() {
    let mut c = Controller::new(Policy::default());
    // The guest reported 300 MiB free with an empty balloon; the balloon has taken 100 MiB
    // since. It has 200 MiB free, so 136 MiB can go (64 MiB headroom), not 236.
    let mut g = guest("a", 100 * MIB, 100 * MIB, 300 * MIB);
    g.actual_at_stats = Some(0);
    assert_eq!(g.free_after_balloon(), Some(200 * MIB));
    let d = c.decide(&sample(0.0, G, vec![g.clone()]));
    assert_eq!(targets(&d), vec![("a".into(), 236)]);
    assert!(d[0].to_string().contains("200 MiB free"), "{}", d[0]);
    // What it still owes comes out of its free memory too: target 200, 50 given so far.
    g.target = 200 * MIB;
    g.actual = 50 * MIB;
    assert_eq!(g.free_after_balloon(), Some(100 * MIB));
    let d = c.decide(&sample(1.0, G, vec![g.clone()]));
    assert_eq!(targets(&d), vec![("a".into(), 236)]);
    // Deflated since: the pages it got back are free again (target 0, actual 20 of 50).
    g.target = 0;
    g.actual = 20 * MIB;
    g.actual_at_stats = Some(50 * MIB);
    assert_eq!(g.free_after_balloon(), Some(330 * MIB));
    // Without the balloon's size at the statistics (older records), actual is assumed.
    g.actual_at_stats = None;
    assert_eq!(g.free_after_balloon(), Some(300 * MIB));
}

/// A guest whose balloon moves 16 MiB per tick and whose statistics are one tick old, under
/// a host that stays short (its memory was never resident, so ballooning does not raise
/// `MemAvailable`): the controller takes until the guest is at its headroom, not beyond.
/// Taking `free - headroom` from the lagging statistics alone pressed it into its data.
#[test]
fn lagging_statistics_do_not_press_a_guest_into_its_data() {
    let p = Policy {
        max_step: 32 * MIB,
        ..Policy::default()
    };
    let mut c = Controller::new(p.clone());
    let used = 212 * MIB; // the guest's own data; 300 MiB free with an empty balloon
    let configured = 512 * MIB;
    let (mut target, mut actual) = (0u64, 0u64);
    let mut stats = (configured - used, 0u64); // (free, actual when sent)
    let mut lowest_free = u64::MAX;
    for tick in 0..60 {
        let g = GuestSample {
            name: "a".into(),
            configured,
            target,
            actual,
            free: Some(stats.0),
            actual_at_stats: Some(stats.1),
            stats_age: Some(1.0),
            balloon: true,
            resident: None,
            ksm_merging: None,
        };
        for d in c.decide(&sample(tick as f64, G, vec![g])) {
            if let Decision::SetTarget { to, .. } = d {
                target = to;
            }
        }
        // The statistics the guest sends now describe the balloon before this tick's move.
        stats = (configured - used - actual, actual);
        actual = if target > actual {
            (actual + 16 * MIB).min(target)
        } else {
            target
        };
        lowest_free = lowest_free.min(configured - used - actual);
    }
    assert_eq!(actual, target, "the balloon settled");
    assert_eq!(
        lowest_free,
        p.headroom,
        "the guest keeps exactly its headroom (balloon {} MiB)",
        target / MIB
    );
}

#[test]
fn gives_back_only_to_guests_short_of_memory_the_neediest_first() {
    let mut c = Controller::new(Policy::default());
    let mut unknown = guest("unknown", G, G, 0);
    unknown.free = None;
    // 4 GiB available: above floor + margin (3 GiB); surplus over aim 2.5 GiB = 1.5 GiB.
    // Only guests under their 64 MiB headroom get memory back, the least free first, one
    // step each; a guest with memory to spare (even 100 MiB) or of unknown free memory
    // keeps its balloon.
    let d = c.decide(&sample(
        0.0,
        4 * G,
        vec![
            guest("rich", G, G, 2 * G),
            guest("fine", G, G, 100 * MIB),
            guest("low", G, G, 40 * MIB),
            guest("lowest", G, G, 10 * MIB),
            unknown,
        ],
    ));
    assert_eq!(
        targets(&d),
        vec![("lowest".into(), 768), ("low".into(), 768)]
    );
    assert!(
        d[0].to_string().contains("under its 64 MiB headroom"),
        "{}",
        d[0]
    );
    // Plenty of surplus but nobody short: nothing moves.
    let d = c.decide(&sample(
        1.0,
        20 * G,
        vec![guest("rich", G, G, 2 * G), guest("fine", G, G, 100 * MIB)],
    ));
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn stuck_balloon_makes_a_guest_unresponsive_until_it_moves() {
    let mut c = Controller::new(Policy::default());
    let stuck = |t| {
        sample(
            t,
            3 * G / 2,
            vec![guest("a", G, 0, 3 * G), guest("b", 0, 0, G)],
        )
    };
    // At first a's 1 GiB owed covers the deficit.
    assert_eq!(targets(&c.decide(&stuck(0.0))), vec![]);
    assert_eq!(targets(&c.decide(&stuck(10.0))), vec![]);
    // After 15 s without movement a no longer counts: b is asked instead.
    let d = c.decide(&stuck(16.0));
    assert!(c.is_unresponsive("a"));
    assert!(
        d.iter().any(|d| d.to_string().contains("unresponsive")),
        "{d:?}"
    );
    assert_eq!(targets(&d), vec![("b".into(), 256)]);
    // It moves: counted on again.
    let d = c.decide(&sample(
        17.0,
        3 * G / 2,
        vec![guest("a", G, 512 * MIB, 3 * G)],
    ));
    assert!(!c.is_unresponsive("a"));
    assert!(d.iter().any(|d| d.to_string().contains("moves again")));
}

#[test]
fn stale_statistics_and_psi() {
    let mut c = Controller::new(Policy::default());
    let mut g = guest("a", 0, 0, 2 * G);
    g.stats_age = Some(60.0);
    let d = c.decide(&sample(0.0, G, vec![g.clone()]));
    assert_eq!(targets(&d), vec![]);
    assert!(d[0].to_string().contains("no fresh statistics"));
    // PSI pressure with plenty available: one step.
    g.stats_age = Some(1.0);
    let mut s = sample(1.0, 5 * G / 2, vec![g]);
    s.host.psi_some_avg10 = Some(25.0);
    let d = c.decide(&s);
    assert_eq!(targets(&d), vec![("a".into(), 256)]);
    assert!(d.iter().any(|d| d.to_string().contains("PSI")));
}

#[test]
fn balloon_first_then_the_swap_lever_for_a_balloonless_guest() {
    let mut c = Controller::new(Policy {
        max_step: G,
        ..Policy::default()
    });
    // 612 MiB missing (MemAvailable 1948 MiB, aim 2560): b's balloon covers it, nothing
    // is reclaimed.
    let d = c.decide(&with_swap(sample(
        0.0,
        1948 * MIB,
        vec![guest("b", 0, 0, 3 * G), no_balloon("n", 2 * G)],
    )));
    assert_eq!(targets(&d), vec![("b".into(), 612)]);
    assert!(reclaims(&d).is_empty(), "{d:?}");
    assert!(
        !d.iter().any(|d| d.to_string().contains("n:")),
        "a guest without a balloon has no statistics to note: {d:?}"
    );
    // 1 GiB missing, b can give 300 MiB (364 free, 64 headroom): the balloon first, then
    // the other 724 MiB from n's coldest memory to host swap.
    let d = c.decide(&with_swap(sample(
        1.0,
        3 * G / 2,
        vec![guest("b", 0, 0, 364 * MIB), no_balloon("n", 2 * G)],
    )));
    assert_eq!(targets(&d), vec![("b".into(), 300)]);
    let r = reclaims(&d);
    assert_eq!(r.len(), 1, "{d:?}");
    assert_eq!((r[0].0.as_str(), r[0].1), ("n", 2048 - 724));
    assert!(
        r[0].2.contains("no balloon") && r[0].2.contains("swap lever"),
        "{}",
        r[0].2
    );
    let balloon_at = d
        .iter()
        .position(|d| matches!(d, Decision::SetTarget { .. }));
    let reclaim_at = d.iter().position(|d| matches!(d, Decision::Reclaim { .. }));
    assert!(balloon_at < reclaim_at, "the balloon is asked first: {d:?}");
    assert!(
        d.iter().any(|d| d.to_string().contains("inflate b")),
        "the balloon decision names its lever: {d:?}"
    );
}

#[test]
fn no_reclaim_without_host_swap_or_with_the_lever_off() {
    let guests = || vec![no_balloon("n", 2 * G)];
    let mut c = Controller::new(Policy::default());
    let d = c.decide(&sample(0.0, G, guests()));
    assert!(reclaims(&d).is_empty(), "{d:?}");
    let note = d.iter().map(|d| d.to_string()).collect::<String>();
    assert!(note.contains("host swap is off"), "{note}");
    assert!(note.contains("memvisor swap zram"), "{note}");
    let mut c = Controller::new(Policy {
        swap: false,
        ..Policy::default()
    });
    let d = c.decide(&with_swap(sample(0.0, G, guests())));
    assert!(reclaims(&d).is_empty(), "{d:?}");
    assert!(
        d.iter().any(|d| d.to_string().contains("--no-swap")),
        "{d:?}"
    );
    // Unknown resident size: nothing to reclaim to.
    let mut c = Controller::new(Policy::default());
    let mut n = no_balloon("n", 0);
    n.resident = None;
    assert!(reclaims(&c.decide(&with_swap(sample(0.0, G, vec![n])))).is_empty());
}

#[test]
fn the_swap_lever_takes_guests_at_their_headroom_or_unresponsive_never_below_the_floor() {
    let p = Policy::default();
    let mut c = Controller::new(p.clone());
    // At its headroom (60 MiB free): the balloon can give nothing, reclaim takes 256 MiB of
    // its 1 GiB resident; a balloon-less guest 40 MiB above the floor gives just those.
    let mut full = guest("full", 0, 0, 60 * MIB);
    full.resident = Some(G);
    let d = c.decide(&with_swap(sample(
        0.0,
        G,
        vec![full, no_balloon("small", p.guest_floor + 40 * MIB)],
    )));
    assert!(targets(&d).is_empty(), "{d:?}");
    let r = reclaims(&d);
    assert_eq!(
        r.iter().map(|r| (r.0.as_str(), r.1)).collect::<Vec<_>>(),
        vec![("full", 768), ("small", 256)],
        "largest resident first; never below the 256 MiB floor"
    );
    assert!(r[0].2.contains("can give no more"), "{}", r[0].2);
    // A stuck balloon: unresponsive after 15 s, then reclaimed instead.
    let mut c = Controller::new(p);
    let stuck = |t| {
        let mut g = guest("stuck", G, 0, 3 * G);
        g.resident = Some(2 * G);
        with_swap(sample(t, 3 * G / 2, vec![g]))
    };
    assert!(reclaims(&c.decide(&stuck(0.0))).is_empty(), "it owes 1 GiB");
    let r = reclaims(&c.decide(&stuck(16.0)));
    assert_eq!(r.len(), 1);
    assert!(r[0].2.contains("unresponsive"), "{}", r[0].2);
}

#[test]
fn reclaims_are_recorded_and_old_records_replay() {
    let d = Decision::Reclaim {
        guest: "n".into(),
        from: 2 * G,
        to: G,
        reason: "r".into(),
    };
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["kind"], "reclaim", "{v}");
    assert_eq!(v["to"], G, "{v}");
    // A record from before the swap lever: a guest with a balloon, no host swap.
    let old = r#"{"t":0,"host":{"mem_available":1,"mem_total":2,"psi_some_avg10":null},
        "guests":[{"name":"a","configured":1,"target":0,"actual":0,"free":null,
        "stats_age":null}]}"#;
    let s: Sample = serde_json::from_str(old).unwrap();
    assert!(s.guests[0].balloon && s.guests[0].resident.is_none());
    assert!(!s.host.swap_active);
    // ... and from before the fleet budget: no KSM figures.
    assert!(s.guests[0].ksm_merging.is_none() && s.host.ksm_sharing.is_none());
}

#[test]
fn psi_file_parses() {
    let t = "some avg10=1.50 avg60=0.20 avg300=0.00 total=123\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
    assert_eq!(parse_psi(t), Some(1.5));
    assert_eq!(parse_psi("garbage"), None);
}

/// A guest with a balloon, `resident` bytes of its RAM resident and `merged` of them KSM-merged.
fn resident_guest(name: &str, resident: u64, merged: u64, free: u64) -> GuestSample {
    GuestSample {
        resident: Some(resident),
        ksm_merging: Some(merged),
        ..guest(name, 0, 0, free)
    }
}

fn budget(b: u64) -> Policy {
    Policy {
        fleet_budget: Some(b),
        ..Policy::default()
    }
}

#[test]
fn the_fleet_budget_binds_when_the_host_has_plenty() {
    // 20 GiB available, far above the 2 GiB floor; the VMs use 3 GiB of a 2 GiB budget: the
    // budget binds, aiming for half the 1 GiB margin below it (1.5 GiB to take).
    let mut c = Controller::new(budget(2 * G));
    let s = sample(
        0.0,
        20 * G,
        vec![
            resident_guest("a", 2 * G, 0, 3 * G / 2),
            resident_guest("b", G, 0, G / 2),
        ],
    );
    assert_eq!(s.fleet_used(), 3 * G);
    let d = c.decide(&s);
    assert_eq!(targets(&d), vec![("a".into(), 256), ("b".into(), 256)]);
    assert!(
        d[0].to_string()
            .contains("the VMs use 3072 MiB, over their 2048 MiB budget"),
        "{}",
        d[0]
    );
    // Without a budget the same host holds.
    let mut c = Controller::new(Policy::default());
    assert!(targets(&c.decide(&s)).is_empty());
}

#[test]
fn the_fleet_budget_counts_ksm_savings_capped_by_what_the_vms_merged() {
    let guests = |merged_a| {
        vec![
            resident_guest("a", 2 * G, merged_a, 3 * G / 2),
            resident_guest("b", G, 0, G / 2),
        ]
    };
    // KSM saves 1.2 GiB of a's 1.5 GiB merged: 1.8 GiB used, inside the 2 GiB budget (and
    // within the margin: nothing moves).
    let mut s = sample(0.0, 20 * G, guests(3 * G / 2));
    s.host.ksm_sharing = Some(6 * G / 5);
    assert_eq!(s.fleet_used(), 3 * G - 6 * G / 5);
    let mut c = Controller::new(budget(2 * G));
    assert!(targets(&c.decide(&s)).is_empty());
    // Other processes' KSM sharing does not count: the VMs merged only 512 MiB.
    let mut s = sample(0.0, 20 * G, guests(G / 2));
    s.host.ksm_sharing = Some(5 * G);
    assert_eq!(s.fleet_used(), 3 * G - G / 2);
    assert!(!targets(&c.decide(&s)).is_empty());
}

#[test]
fn an_unknown_resident_size_counts_as_all_that_is_not_ballooned() {
    // 4 GiB configured, 1 GiB ballooned, resident unknown: 3 GiB counted.
    let s = sample(0.0, 20 * G, vec![guest("a", G, G, G)]);
    assert_eq!(s.fleet_used(), 3 * G);
}

#[test]
fn the_limit_with_less_room_binds_both_ways() {
    let mut c = Controller::new(budget(8 * G));
    // The VMs are far under their budget, but the host is below its floor: the floor binds.
    let d = c.decide(&sample(
        0.0,
        G,
        vec![resident_guest("a", 2 * G, 0, 3 * G / 2)],
    ));
    assert_eq!(targets(&d), vec![("a".into(), 256)]);
    assert!(
        d[0].to_string().contains("below the 2048 MiB floor"),
        "{}",
        d[0]
    );
    // Plenty on the host, the VMs 5 GiB under their budget: memory goes back to the guest
    // short of it, and the reason names the budget (the limit with less room).
    let mut c = Controller::new(budget(8 * G));
    let short = GuestSample {
        resident: Some(3 * G),
        ..guest("s", G, G, 10 * MIB)
    };
    let d = c.decide(&sample(0.0, 20 * G, vec![short.clone()]));
    assert_eq!(targets(&d), vec![("s".into(), 768)]);
    assert!(
        d[0].to_string()
            .contains("the VMs use 3072 MiB, below 7168 MiB"),
        "{}",
        d[0]
    );
    // 600 MiB under the budget: inside the 1 GiB margin, nothing moves.
    let mut c = Controller::new(budget(3 * G + 600 * MIB));
    assert!(targets(&c.decide(&sample(0.0, 20 * G, vec![short]))).is_empty());
}
