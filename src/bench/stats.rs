//! Measurement helpers: summaries of repeated samples (min/median/max), ratios between two
//! medians, and the verdict on a "at least N x the baseline" target.

use serde::Serialize;
use std::fmt;

/// Repeated measurements of one quantity and their min/median/max.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Smallest sample.
    pub min: f64,
    /// Median (mean of the two middle samples for an even count).
    pub median: f64,
    /// Largest sample.
    pub max: f64,
    /// Every sample, in the order measured.
    pub samples: Vec<f64>,
}

impl Summary {
    /// The summary of the finite samples among `samples`; `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let kept: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        let mut sorted = kept.clone();
        sorted.sort_by(f64::total_cmp);
        Some(Summary {
            min: *sorted.first()?,
            median: median(&sorted)?,
            max: *sorted.last()?,
            samples: kept,
        })
    }
}

/// Median of `values` (any order); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// `a / b`, or `None` when either is not a positive finite number.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && a > 0.0 && b > 0.0).then(|| a / b)
}

/// Ratio of the medians of two summaries (either may be missing).
pub fn median_ratio(a: Option<&Summary>, b: Option<&Summary>) -> Option<f64> {
    ratio(a?.median, b?.median)
}

/// GiB per second for `bytes` in `seconds` (0 when no time passed).
pub fn gib_per_s(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / seconds / (1u64 << 30) as f64
    } else {
        0.0
    }
}

/// The verdict on one target: "ratio >= goal in every configuration" ([`Target::judge`]), or
/// "figure <= limit in every configuration" ([`Target::at_most`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Target {
    /// What is compared, e.g. `memvisor / bare MADV_POPULATE_WRITE loop`.
    pub name: String,
    /// The least acceptable ratio (or, for an upper limit, the largest acceptable figure).
    pub goal: f64,
    /// For an upper limit ([`Target::at_most`]): the unit of the figure (`ms`, `MiB`); `None`
    /// for a "ratio >= goal" target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_most: Option<String>,
    /// `Some(true)` met in every measured configuration, `Some(false)` missed in at least one,
    /// `None` not measured.
    pub met: Option<bool>,
    /// The lowest ratio measured, and its configuration.
    pub worst: Option<(String, f64)>,
    /// Configurations that were not measured (and why, in the notes).
    pub unmeasured: Vec<String>,
}

impl Target {
    /// Judges `ratios` (configuration, ratio if measured) against `goal`.
    pub fn judge(name: &str, goal: f64, ratios: &[(String, Option<f64>)]) -> Target {
        let measured: Vec<(String, f64)> = ratios
            .iter()
            .filter_map(|(c, r)| r.map(|r| (c.clone(), r)))
            .collect();
        let worst = measured.iter().min_by(|a, b| a.1.total_cmp(&b.1)).cloned();
        Target {
            name: name.to_string(),
            goal,
            at_most: None,
            met: worst.as_ref().map(|(_, r)| *r >= goal),
            worst,
            unmeasured: ratios
                .iter()
                .filter(|(_, r)| r.is_none())
                .map(|(c, _)| c.clone())
                .collect(),
        }
    }
}

impl Target {
    /// Judges `figures` (configuration, figure in `unit` if measured) against an upper `limit`.
    pub fn at_most(
        name: &str,
        limit: f64,
        unit: &str,
        figures: &[(String, Option<f64>)],
    ) -> Target {
        let measured: Vec<(String, f64)> = figures
            .iter()
            .filter_map(|(c, v)| v.filter(|v| v.is_finite()).map(|v| (c.clone(), v)))
            .collect();
        let worst = measured.iter().max_by(|a, b| a.1.total_cmp(&b.1)).cloned();
        Target {
            name: name.to_string(),
            goal: limit,
            at_most: Some(unit.to_string()),
            met: worst.as_ref().map(|(_, v)| *v <= limit),
            worst,
            unmeasured: figures
                .iter()
                .filter(|(_, v)| v.is_none())
                .map(|(c, _)| c.clone())
                .collect(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at_most {
            None => {
                write!(f, "{} >= {:.2}x: ", self.name, self.goal)?;
                match (&self.met, &self.worst) {
                    (Some(true), Some((c, r))) => write!(f, "met (lowest {r:.2}x, {c})")?,
                    (Some(false), Some((c, r))) => write!(f, "NOT met (lowest {r:.2}x, {c})")?,
                    _ => write!(f, "not measured")?,
                }
            }
            Some(unit) => {
                write!(f, "{} <= {} {unit}: ", self.name, self.goal)?;
                match (&self.met, &self.worst) {
                    (Some(true), Some((c, v))) => write!(f, "met (highest {v:.2} {unit}, {c})")?,
                    (Some(false), Some((c, v))) => {
                        write!(f, "NOT met (highest {v:.2} {unit}, {c})")?
                    }
                    _ => write!(f, "not measured")?,
                }
            }
        }
        if self.met.is_some() && !self.unmeasured.is_empty() {
            write!(f, "; not measured: {}", self.unmeasured.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_min_median_max() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        assert_eq!(s.samples, vec![3.0, 1.0, 2.0], "samples keep their order");
        let even = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(even.median, 2.5);
        let one = Summary::of(&[7.0]).unwrap();
        assert_eq!((one.min, one.median, one.max), (7.0, 7.0, 7.0));
        assert!(Summary::of(&[]).is_none());
        let nan = Summary::of(&[f64::NAN, 5.0, f64::INFINITY]).unwrap();
        assert_eq!(nan.samples, vec![5.0], "non-finite samples are dropped");
        assert!(Summary::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn median_of_unsorted() {
        assert_eq!(median(&[5.0, 1.0, 9.0, 3.0, 7.0]), Some(5.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(0.0, 1.0), None);
        assert_eq!(ratio(-1.0, 1.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
        let a = Summary::of(&[2.0, 4.0, 3.0]).unwrap();
        let b = Summary::of(&[1.0, 2.0, 1.5]).unwrap();
        assert_eq!(median_ratio(Some(&a), Some(&b)), Some(2.0));
        assert_eq!(median_ratio(Some(&a), None), None);
        assert_eq!(gib_per_s(1 << 30, 0.5), 2.0);
        assert_eq!(gib_per_s(1 << 30, 0.0), 0.0);
    }

    #[test]
    fn targets() {
        let t = Target::judge(
            "a / b",
            0.9,
            &[
                ("x1".into(), Some(0.95)),
                ("x2".into(), Some(0.91)),
                ("x3".into(), None),
            ],
        );
        assert_eq!(t.met, Some(true));
        assert_eq!(t.worst, Some(("x2".into(), 0.91)));
        assert_eq!(t.unmeasured, vec!["x3".to_string()]);
        assert_eq!(
            t.to_string(),
            "a / b >= 0.90x: met (lowest 0.91x, x2); not measured: x3"
        );
        let missed = Target::judge("a / b", 1.0, &[("x1".into(), Some(0.5))]);
        assert_eq!(missed.met, Some(false));
        assert!(missed.to_string().contains("NOT met (lowest 0.50x, x1)"));
        let none = Target::judge("a / b", 1.0, &[("x1".into(), None)]);
        assert_eq!(none.met, None);
        assert!(none.to_string().ends_with("not measured"));
    }

    #[test]
    fn upper_limits() {
        let t = Target::at_most(
            "start",
            15.0,
            "ms",
            &[
                ("a".into(), Some(12.0)),
                ("b".into(), Some(14.5)),
                ("c".into(), None),
            ],
        );
        assert_eq!(t.met, Some(true));
        assert_eq!(t.worst, Some(("b".into(), 14.5)));
        assert_eq!(
            t.to_string(),
            "start <= 15 ms: met (highest 14.50 ms, b); not measured: c"
        );
        let missed = Target::at_most("rss", 5.0, "MiB", &[("x".into(), Some(6.0))]);
        assert_eq!(missed.met, Some(false));
        assert!(missed.to_string().contains("NOT met (highest 6.00 MiB, x)"));
        assert_eq!(Target::at_most("x", 1.0, "ms", &[]).met, None);
        let json = serde_json::to_value(&missed).unwrap();
        assert_eq!(json["at_most"], "MiB");
        let ratio = serde_json::to_value(Target::judge("r", 1.0, &[])).unwrap();
        assert!(ratio.get("at_most").is_none());
    }
}
