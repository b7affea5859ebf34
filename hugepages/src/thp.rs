//! Transparent huge pages: owns reading the THP settings in
//! `/sys/kernel/mm/transparent_hugepage/` (`enabled` and `defrag`).

use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::error::HugePageError;

/// Where the THP settings live.
pub const SYSFS_THP: &str = "/sys/kernel/mm/transparent_hugepage";

/// When the kernel backs anonymous memory with transparent huge pages (`enabled`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ThpMode {
    /// For all anonymous memory.
    Always,
    /// Only for ranges marked with `madvise(MADV_HUGEPAGE)`.
    Madvise,
    /// Never.
    Never,
}

/// How hard the kernel works (compaction) to get a transparent huge page (`defrag`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ThpDefrag {
    /// Stall and compact on every THP fault.
    Always,
    /// Wake kcompactd and fall back to small pages.
    Defer,
    /// Stall for `MADV_HUGEPAGE` ranges, defer for the others.
    #[serde(rename = "defer+madvise")]
    DeferMadvise,
    /// Stall for `MADV_HUGEPAGE` ranges only.
    Madvise,
    /// Never compact.
    Never,
}

/// The bracketed (selected) word of a sysfs choice file, e.g. `madvise` in
/// `always [madvise] never`.
pub fn parse_selected(text: &str) -> Option<&str> {
    let start = text.find('[')? + 1;
    let len = text[start..].find(']')?;
    Some(&text[start..start + len])
}

/// Parses the content of `transparent_hugepage/enabled`.
pub fn parse_thp_mode(text: &str) -> Option<ThpMode> {
    match parse_selected(text)? {
        "always" => Some(ThpMode::Always),
        "madvise" => Some(ThpMode::Madvise),
        "never" => Some(ThpMode::Never),
        _ => None,
    }
}

/// Parses the content of `transparent_hugepage/defrag`.
pub fn parse_thp_defrag(text: &str) -> Option<ThpDefrag> {
    match parse_selected(text)? {
        "always" => Some(ThpDefrag::Always),
        "defer" => Some(ThpDefrag::Defer),
        "defer+madvise" => Some(ThpDefrag::DeferMadvise),
        "madvise" => Some(ThpDefrag::Madvise),
        "never" => Some(ThpDefrag::Never),
        _ => None,
    }
}

fn read_choice<T>(name: &str, parse: fn(&str) -> Option<T>) -> Result<T, HugePageError> {
    let path = Path::new(SYSFS_THP).join(name);
    let text = std::fs::read_to_string(&path).map_err(|source| HugePageError::Thp {
        path: path.clone(),
        source,
    })?;
    parse(&text).ok_or_else(|| {
        let msg = format!("unexpected content {:?}", text.trim());
        HugePageError::read(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, msg),
        )
    })
}

/// The host's THP mode (`/sys/kernel/mm/transparent_hugepage/enabled`).
pub fn thp_mode() -> Result<ThpMode, HugePageError> {
    read_choice("enabled", parse_thp_mode)
}

/// The host's THP defrag setting (`/sys/kernel/mm/transparent_hugepage/defrag`).
pub fn thp_defrag() -> Result<ThpDefrag, HugePageError> {
    read_choice("defrag", parse_thp_defrag)
}

impl fmt::Display for ThpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThpMode::Always => "always",
            ThpMode::Madvise => "madvise",
            ThpMode::Never => "never",
        })
    }
}

impl fmt::Display for ThpDefrag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThpDefrag::Always => "always",
            ThpDefrag::Defer => "defer",
            ThpDefrag::DeferMadvise => "defer+madvise",
            ThpDefrag::Madvise => "madvise",
            ThpDefrag::Never => "never",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_thp_files() {
        assert_eq!(
            parse_thp_mode("always [madvise] never\n"),
            Some(ThpMode::Madvise)
        );
        assert_eq!(
            parse_thp_mode("[always] madvise never\n"),
            Some(ThpMode::Always)
        );
        assert_eq!(
            parse_thp_mode("always madvise [never]"),
            Some(ThpMode::Never)
        );
        assert_eq!(parse_thp_mode("always madvise never"), None);
        assert_eq!(parse_thp_mode("[bogus]"), None);
        assert_eq!(parse_thp_mode("[madvise"), None);
        let defrag = "always defer [defer+madvise] madvise never\n";
        assert_eq!(parse_thp_defrag(defrag), Some(ThpDefrag::DeferMadvise));
        assert_eq!(
            parse_thp_defrag("always defer defer+madvise [madvise] never"),
            Some(ThpDefrag::Madvise)
        );
        assert_eq!(ThpDefrag::DeferMadvise.to_string(), "defer+madvise");
        assert_eq!(
            serde_json::to_string(&ThpDefrag::DeferMadvise).unwrap(),
            "\"defer+madvise\""
        );
        assert_eq!(
            serde_json::to_string(&ThpMode::Madvise).unwrap(),
            "\"madvise\""
        );
    }

    #[test]
    fn reads_host_thp() {
        match (thp_mode(), thp_defrag()) {
            (Ok(mode), Ok(defrag)) => println!("host THP: {mode}, defrag {defrag}"),
            (Err(e), _) | (_, Err(e)) => println!("skip: {e}"),
        }
    }
}
