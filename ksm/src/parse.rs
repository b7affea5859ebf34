//! Pure parsers for the text the kernel exposes about KSM.
//!
//! Every function here works on a `&str` only, so the formats can be unit
//! tested without a kernel. Errors are [`KsmError::Parse`] values naming the
//! file (by its kernel name) and the offending content.

use crate::{KsmError, ProcessKsmStats};

fn parse_error(what: &str, content: &str, reason: impl Into<String>) -> KsmError {
    KsmError::Parse {
        what: what.to_string(),
        content: content.to_string(),
        reason: reason.into(),
    }
}

/// Parses an unsigned decimal counter or knob such as `pages_sharing`.
pub fn parse_u64(what: &str, content: &str) -> Result<u64, KsmError> {
    let t = content.trim();
    t.parse::<u64>()
        .map_err(|e| parse_error(what, content, format!("expected an unsigned integer ({e})")))
}

/// Parses a signed decimal counter such as `general_profit`.
pub fn parse_i64(what: &str, content: &str) -> Result<i64, KsmError> {
    let t = content.trim();
    t.parse::<i64>()
        .map_err(|e| parse_error(what, content, format!("expected an integer ({e})")))
}

/// Parses a `0`/`1` boolean knob such as `use_zero_pages`.
pub fn parse_bool01(what: &str, content: &str) -> Result<bool, KsmError> {
    match content.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(parse_error(what, content, "expected 0 or 1")),
    }
}

/// Parses a `yes`/`no` boolean as printed in `/proc/PID/ksm_stat`.
pub fn parse_yes_no(what: &str, content: &str) -> Result<bool, KsmError> {
    match content.trim() {
        "yes" | "1" => Ok(true),
        "no" | "0" => Ok(false),
        _ => Err(parse_error(what, content, "expected yes or no")),
    }
}

/// The content of a sysfs "choice" file such as `advisor_mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choices {
    /// The selected choice (the one in brackets).
    pub selected: String,
    /// Every choice the kernel offers, in the kernel's order.
    pub available: Vec<String>,
}

/// Parses a sysfs choice file, e.g. `advisor_mode`'s `"[none] scan-time"`.
///
/// Exactly one word must be in brackets; it is the selected choice.
pub fn parse_choices(what: &str, content: &str) -> Result<Choices, KsmError> {
    let mut selected = None;
    let mut available = Vec::new();
    for word in content.split_whitespace() {
        let name = match word.strip_prefix('[') {
            Some(rest) => {
                let name = rest
                    .strip_suffix(']')
                    .ok_or_else(|| parse_error(what, content, "unbalanced '['"))?;
                if selected.replace(name.to_string()).is_some() {
                    return Err(parse_error(what, content, "more than one choice selected"));
                }
                name
            }
            None => word,
        };
        if name.is_empty() || name.contains(['[', ']']) {
            return Err(parse_error(what, content, "malformed choice"));
        }
        available.push(name.to_string());
    }
    let selected =
        selected.ok_or_else(|| parse_error(what, content, "no choice is marked with [..]"))?;
    Ok(Choices {
        selected,
        available,
    })
}

/// Builds [`ProcessKsmStats`] from the text of `/proc/PID/ksm_stat` and/or
/// `/proc/PID/ksm_merging_pages` (either may be absent on older kernels).
///
/// `ksm_stat` lines are `key value` or `key: value`; unknown keys are
/// ignored so newer kernels keep working. `merging_pages` is taken from
/// `ksm_stat` when it has it, else from `ksm_merging_pages`.
pub fn parse_process_stats(
    ksm_stat: Option<&str>,
    ksm_merging_pages: Option<&str>,
) -> Result<ProcessKsmStats, KsmError> {
    const WHAT: &str = "ksm_stat";
    let mut stats = ProcessKsmStats::default();
    let mut merging = None;
    for line in ksm_stat.unwrap_or("").lines() {
        if line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(parse_error(WHAT, line, "expected \"key value\""));
        };
        let key = key.strip_suffix(':').unwrap_or(key);
        match key {
            "ksm_rmap_items" => stats.rmap_items = Some(parse_u64(WHAT, value)?),
            "ksm_zero_pages" => stats.zero_pages = Some(parse_u64(WHAT, value)?),
            "ksm_merging_pages" => merging = Some(parse_u64(WHAT, value)?),
            "ksm_process_profit" => stats.process_profit = Some(parse_i64(WHAT, value)?),
            "ksm_merge_any" => stats.merge_any = Some(parse_yes_no(WHAT, value)?),
            "ksm_mergeable" => stats.mergeable = Some(parse_yes_no(WHAT, value)?),
            _ => {}
        }
    }
    stats.merging_pages = match (merging, ksm_merging_pages) {
        (Some(n), _) => n,
        (None, Some(text)) => parse_u64("ksm_merging_pages", text)?,
        (None, None) => {
            return Err(parse_error(
                WHAT,
                ksm_stat.unwrap_or(""),
                "no ksm_merging_pages value in ksm_stat and no ksm_merging_pages file",
            ))
        }
    };
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("x", "42\n").unwrap(), 42);
        assert_eq!(parse_i64("x", "-7\n").unwrap(), -7);
        assert!(matches!(parse_u64("x", "-1"), Err(KsmError::Parse { .. })));
        assert!(matches!(parse_u64("x", ""), Err(KsmError::Parse { .. })));
        assert!(matches!(parse_i64("x", "abc"), Err(KsmError::Parse { .. })));
        assert!(parse_bool01("x", "1\n").unwrap());
        assert!(!parse_bool01("x", "0").unwrap());
        assert!(parse_bool01("x", "2").is_err());
        assert!(parse_yes_no("x", "yes").unwrap());
        assert!(parse_yes_no("x", "maybe").is_err());
    }

    #[test]
    fn advisor_mode_format() {
        let c = parse_choices("advisor_mode", "[none] scan-time\n").unwrap();
        assert_eq!(c.selected, "none");
        assert_eq!(c.available, ["none", "scan-time"]);
        let c = parse_choices("advisor_mode", "none [scan-time]").unwrap();
        assert_eq!(c.selected, "scan-time");
        assert_eq!(c.available, ["none", "scan-time"]);
    }

    #[test]
    fn advisor_mode_rejects_garbage() {
        for bad in [
            "",
            "none scan-time",
            "[none] [scan-time]",
            "[none scan-time",
            "[] x",
        ] {
            let err = parse_choices("advisor_mode", bad).unwrap_err();
            assert!(matches!(err, KsmError::Parse { .. }), "{bad:?}: {err}");
        }
    }

    const KSM_STAT_6_18: &str = "ksm_rmap_items 2048\nksm_zero_pages 0\n\
        ksm_merging_pages 2040\nksm_process_profit -123\nksm_merge_any: no\nksm_mergeable: yes\n";

    #[test]
    fn ksm_stat_full() {
        let s = parse_process_stats(Some(KSM_STAT_6_18), Some("17\n")).unwrap();
        assert_eq!(
            s,
            ProcessKsmStats {
                rmap_items: Some(2048),
                zero_pages: Some(0),
                merging_pages: 2040,
                process_profit: Some(-123),
                merge_any: Some(false),
                mergeable: Some(true),
            }
        );
    }

    #[test]
    fn ksm_stat_old_kernels() {
        // 6.1 only had ksm_rmap_items; merging pages come from the other file.
        let s = parse_process_stats(Some("ksm_rmap_items 5\n"), Some("3\n")).unwrap();
        assert_eq!(s.rmap_items, Some(5));
        assert_eq!(s.merging_pages, 3);
        assert_eq!(s.process_profit, None);
        // 5.19 had only ksm_merging_pages.
        let s = parse_process_stats(None, Some("9")).unwrap();
        assert_eq!(s.merging_pages, 9);
        assert_eq!(s.rmap_items, None);
        // Unknown keys are ignored.
        let s = parse_process_stats(Some("ksm_future 1\nksm_merging_pages 4\n"), None).unwrap();
        assert_eq!(s.merging_pages, 4);
    }

    #[test]
    fn ksm_stat_bad() {
        let bad = [
            (Some("ksm_rmap_items\n"), Some("1")),
            (Some("ksm_rmap_items 1 2\n"), Some("1")),
            (Some("ksm_rmap_items x\n"), Some("1")),
            (Some("ksm_mergeable: perhaps\n"), Some("1")),
            (Some("ksm_rmap_items 1\n"), None),
            (None, Some("lots")),
        ];
        for (stat, merging) in bad {
            let err = parse_process_stats(stat, merging).unwrap_err();
            assert!(matches!(err, KsmError::Parse { .. }), "{stat:?}: {err}");
        }
    }
}
