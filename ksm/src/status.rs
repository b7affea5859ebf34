//! Human-readable status for `memvisor ksm status`.

use std::fmt::Write;
use std::path::Path;

use crate::parse::Choices;
use crate::{Ksm, KsmCounters, KsmError, KsmSettings};

/// Formats a byte count with a binary unit, e.g. `8.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "n/a (not on this kernel)".into(), |v| v.to_string())
}

fn yes_no(v: Option<bool>) -> String {
    opt(v.map(|b| if b { "yes" } else { "no" }))
}

/// Formats a status report from already-read values (pure; used by [`status_text`]).
pub fn format_status(
    root: &Path,
    s: &KsmSettings,
    advisor: Option<&Choices>,
    c: &KsmCounters,
    page_size: u64,
) -> String {
    let mut out = String::new();
    let state = match s.run {
        crate::KsmRun::Stop => "stopped",
        crate::KsmRun::Merge => "merging",
        crate::KsmRun::Unmerge => "unmerging",
    };
    let advisor = match advisor {
        Some(a) => format!("{} (available: {})", a.selected, a.available.join(", ")),
        None => opt(s.advisor_mode.as_deref()),
    };
    let profit = c.general_profit.map(|p| {
        format!(
            "{}{}",
            if p < 0 { "-" } else { "" },
            human_bytes(p.unsigned_abs())
        )
    });
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "KSM at {}: {state} (run={})",
        root.display(),
        s.run.sysfs_value()
    );
    let _ = writeln!(out, "settings:");
    let _ = writeln!(out, "  pages_to_scan       {}", s.pages_to_scan);
    let _ = writeln!(out, "  sleep_millisecs     {}", s.sleep_millisecs);
    let _ = writeln!(
        out,
        "  merge_across_nodes  {}",
        yes_no(s.merge_across_nodes)
    );
    let _ = writeln!(out, "  use_zero_pages      {}", yes_no(s.use_zero_pages));
    let _ = writeln!(out, "  max_page_sharing    {}", opt(s.max_page_sharing));
    let _ = writeln!(out, "  advisor_mode        {advisor}");
    let _ = writeln!(out, "counters:");
    let _ = writeln!(out, "  pages_shared        {}", c.pages_shared);
    let _ = writeln!(
        out,
        "  pages_sharing       {} (saves {})",
        c.pages_sharing,
        human_bytes(c.bytes_saved(page_size))
    );
    let _ = writeln!(out, "  pages_unshared      {}", c.pages_unshared);
    let _ = writeln!(out, "  pages_volatile      {}", c.pages_volatile);
    let _ = writeln!(out, "  full_scans          {}", c.full_scans);
    let _ = writeln!(out, "  general_profit      {}", opt(profit));
    let _ = writeln!(out, "  ksm_zero_pages      {}", opt(c.ksm_zero_pages));
    let _ = writeln!(out, "  stable_node_chains  {}", opt(c.stable_node_chains));
    out
}

/// A readable multi-line report of `ksm`'s settings and counters.
pub fn status_text(ksm: &Ksm) -> Result<String, KsmError> {
    let settings = ksm.settings()?;
    let advisor = ksm.advisor_modes()?;
    let counters = ksm.counters()?;
    Ok(format_status(
        ksm.root(),
        &settings,
        advisor.as_ref(),
        &counters,
        crate::page_size(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(8 << 20), "8.0 MiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn report() {
        let c = KsmCounters {
            pages_sharing: 2040,
            general_profit: Some(-4096),
            ..Default::default()
        };
        let choices = Choices {
            selected: "none".into(),
            available: vec!["none".into(), "scan-time".into()],
        };
        let text = format_status(
            Path::new("/x"),
            &KsmSettings::default(),
            Some(&choices),
            &c,
            4096,
        );
        assert!(text.starts_with("KSM at /x: stopped (run=0)\n"), "{text}");
        assert!(
            text.contains("pages_sharing       2040 (saves 8.0 MiB)"),
            "{text}"
        );
        assert!(text.contains("advisor_mode        none (available: none, scan-time)"));
        assert!(text.contains("general_profit      -4.0 KiB"));
        assert!(text.contains("use_zero_pages      n/a (not on this kernel)"));
    }
}
