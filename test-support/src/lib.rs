//! What every memvisor test crate shares (a dev-dependency only): the `skip:` line a test
//! prints for a part it could not run on this machine.

use std::fmt::Display;

/// Prints one `skip: <test>: <reason>` line and appends it to the file named by
/// `MEMVISOR_SKIP_LOG` when set: `.ci/run` shows those lines, which the test harness would
/// otherwise capture, and counts them in its summary.
pub fn skip(test: &str, reason: impl Display) {
    let line = format!("skip: {test}: {reason}");
    println!("{line}");
    if let Ok(path) = std::env::var("MEMVISOR_SKIP_LOG") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_skip_line_reaches_the_log() {
        let dir = std::env::temp_dir().join(format!("test-support-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("skips");
        // Read only by this crate's one test, so setting it races with nothing.
        std::env::set_var("MEMVISOR_SKIP_LOG", &log);
        super::skip("t", "why");
        super::skip("u", 2);
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "skip: t: why\nskip: u: 2\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
