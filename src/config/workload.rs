//! Workloads of the built-in guest: the user-facing syntax (`touch:stride=4K`, `fill:seed=7`,
//! ...), its translation into the boot-info operations of `abi.rs`, and names for reports.

use crate::abi::{self, Op};
use crate::config::parse_size;
use serde::{Deserialize, Serialize};

/// Workload errors name the operation and say what is accepted.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// Unknown operation.
    #[error("--workload `{0}`: unknown operation; use touch, fill, verify, same, checksum, read, random, sync, balloon, grow or fault")]
    UnknownOp(String),
    /// Bad parameter.
    #[error("--workload `{op}`: parameter `{param}`: {reason}")]
    BadParam {
        /// The operation.
        op: String,
        /// The parameter.
        param: String,
        /// What is accepted.
        reason: String,
    },
    /// Too many operations.
    #[error("--workload: at most {max} operations, got {0}", max = abi::MAX_OPS)]
    TooMany(usize),
}

/// One operation with its parameters, as the user wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Step {
    /// Dirty one word every `stride` bytes, `passes` times, over all RAM or the work area.
    Touch {
        /// Bytes between touches.
        stride: u64,
        /// Passes over the range.
        passes: u64,
        /// Only the work area (not the guest's own pages).
        work_only: bool,
        /// Only the first this many bytes of each vCPU's share (0: all of it).
        #[serde(default)]
        working_set: u64,
    },
    /// Write the address-derived pattern over the work area.
    Fill {
        /// Pattern seed.
        seed: u64,
        /// Only every `sparse`-th word holds the pattern, the others zero (0 or 1: every word):
        /// data that compresses about `sparse`:1 (in zram), still checked word by word.
        #[serde(default)]
        sparse: u64,
    },
    /// Check the pattern.
    Verify {
        /// Pattern seed.
        seed: u64,
        /// As the fill's.
        #[serde(default)]
        sparse: u64,
    },
    /// Give every page of the work area the same content (KSM food).
    Same {
        /// Content seed.
        value: u64,
    },
    /// Checksum the work area.
    Checksum,
    /// Read one word every `stride` bytes.
    Read {
        /// Bytes between reads.
        stride: u64,
        /// Passes.
        passes: u64,
        /// Only the first this many bytes of each vCPU's share of the work area (0: all of it).
        #[serde(default)]
        working_set: u64,
    },
    /// Random read-writes over a working set.
    Random {
        /// Working-set bytes per vCPU (0: the whole share).
        working_set: u64,
        /// Accesses per vCPU.
        accesses: u64,
        /// Random seed.
        seed: u64,
    },
    /// Raise an exception in ring 3 (tests failure reporting).
    Fault,
    /// Stop at a sync point until the VMM's sync hook returns.
    Sync {
        /// Tag passed to the hook.
        tag: u64,
    },
    /// Drive the balloon (vCPU 0): keep `data` bytes of patterned data, inflate and deflate to
    /// the device's target, answer statistics, verify, until finish is requested or `seconds`
    /// pass (see `abi::OP_BALLOON`).
    Balloon {
        /// Bytes of data to keep (0: the whole work area).
        data: u64,
        /// Seconds to run (0: until the VMM requests finish).
        seconds: u64,
        /// Pattern seed.
        seed: u64,
    },
    /// Hold still until finish is requested (`PUT /actions FinishBalloonStep`) or `seconds`
    /// pass, touching only the first `working_set` bytes of each vCPU's share of the work area
    /// (one word per `stride`) round after round: a guest whose working set is known, whose other
    /// memory goes cold (see `abi::OP_HOLD`).
    Hold {
        /// Seconds to hold (0: until finish is requested).
        seconds: u64,
        /// Bytes kept in use (0: touch nothing).
        working_set: u64,
        /// Bytes between touches.
        stride: u64,
    },
    /// Grow the balloon step's data set to `to` bytes, deflating first on memory pressure when
    /// deflate-on-oom was negotiated (see `abi::OP_GROW`).
    Grow {
        /// Bytes the data set should reach.
        to: u64,
        /// Pattern seed.
        seed: u64,
    },
}

impl Step {
    /// Name used in reports.
    pub fn name(&self) -> &'static str {
        kind_name(self.to_op().kind)
    }

    /// The boot-info form.
    pub fn to_op(&self) -> Op {
        let (kind, args) = match *self {
            Step::Touch {
                stride,
                passes,
                work_only,
                working_set,
            } => (
                abi::OP_TOUCH,
                [stride, passes, work_only as u64, working_set],
            ),
            Step::Fill { seed, sparse } => (abi::OP_FILL_PATTERN, [seed, sparse, 0, 0]),
            Step::Verify { seed, sparse } => (abi::OP_VERIFY_PATTERN, [seed, sparse, 0, 0]),
            Step::Same { value } => (abi::OP_FILL_SAME, [value, 0, 0, 0]),
            Step::Checksum => (abi::OP_CHECKSUM, [0; 4]),
            Step::Read {
                stride,
                passes,
                working_set,
            } => (abi::OP_READ, [stride, passes, working_set, 0]),
            Step::Random {
                working_set,
                accesses,
                seed,
            } => (abi::OP_RANDOM, [working_set, accesses, seed, 0]),
            Step::Fault => (abi::OP_FAULT, [0; 4]),
            Step::Sync { tag } => (abi::OP_SYNC, [tag, 0, 0, 0]),
            Step::Balloon {
                data,
                seconds,
                seed,
            } => (abi::OP_BALLOON, [data, seconds, seed, 0]),
            Step::Grow { to, seed } => (abi::OP_GROW, [to, seed, 0, 0]),
            Step::Hold {
                seconds,
                working_set,
                stride,
            } => (abi::OP_HOLD, [seconds, working_set, stride, 0]),
        };
        Op { kind, args }
    }

    /// Parses `name[:key=value,...]`.
    pub fn parse(text: &str) -> Result<Step, WorkloadError> {
        let (name, params) = text.split_once(':').unwrap_or((text, ""));
        let name = name.trim();
        let mut kv = Vec::new();
        for p in params.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = p.split_once('=').ok_or_else(|| WorkloadError::BadParam {
                op: name.into(),
                param: p.into(),
                reason: "expected key=value".into(),
            })?;
            kv.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut get = |key: &str, default: u64, size: bool| -> Result<u64, WorkloadError> {
            match kv.iter().position(|(k, _)| k == key) {
                None => Ok(default),
                Some(i) => {
                    let (_, v) = kv.remove(i);
                    let parsed = if size {
                        parse_size(&v)
                    } else {
                        parse_count(&v)
                    };
                    parsed.ok_or_else(|| WorkloadError::BadParam {
                        op: name.into(),
                        param: key.into(),
                        reason: format!(
                            "`{v}` is not a {}",
                            if size {
                                "size (e.g. 4K, 2M)"
                            } else {
                                "number (e.g. 1000, 10M)"
                            }
                        ),
                    })
                }
            }
        };
        let step = match name {
            "touch" => Step::Touch {
                stride: get("stride", 4096, true)?,
                passes: get("passes", 1, false)?,
                work_only: get("work-only", 0, false)? != 0,
                working_set: get("ws", 0, true)?,
            },
            "fill" => Step::Fill {
                seed: get("seed", 1, false)?,
                sparse: get("sparse", 0, false)?,
            },
            "verify" => Step::Verify {
                seed: get("seed", 1, false)?,
                sparse: get("sparse", 0, false)?,
            },
            "same" => Step::Same {
                value: get("value", 0x5a5a, false)?,
            },
            "checksum" => Step::Checksum,
            "read" => Step::Read {
                stride: get("stride", 4096, true)?,
                passes: get("passes", 1, false)?,
                working_set: get("ws", 0, true)?,
            },
            "random" => Step::Random {
                working_set: get("ws", 0, true)?,
                accesses: get("accesses", 1_000_000, false)?,
                seed: get("seed", 12345, false)?,
            },
            "fault" => Step::Fault,
            "sync" => Step::Sync {
                tag: get("tag", 0, false)?,
            },
            "balloon" => Step::Balloon {
                data: get("data", 0, true)?,
                seconds: get("seconds", 60, false)?,
                seed: get("seed", 1, false)?,
            },
            "grow" => Step::Grow {
                to: get("to", 0, true)?,
                seed: get("seed", 1, false)?,
            },
            "hold" => Step::Hold {
                seconds: get("seconds", 0, false)?,
                working_set: get("ws", 0, true)?,
                stride: get("stride", 4096, true)?,
            },
            other => return Err(WorkloadError::UnknownOp(other.into())),
        };
        if let Some((k, _)) = kv.first() {
            return Err(WorkloadError::BadParam {
                op: name.into(),
                param: k.clone(),
                reason: "unknown parameter".into(),
            });
        }
        step.check()?;
        Ok(step)
    }

    /// Rules on parameter values, for steps from `--workload` and from a JSON config file alike.
    pub fn check(&self) -> Result<(), WorkloadError> {
        let bad = |param: &str, reason: &str| WorkloadError::BadParam {
            op: self.name().into(),
            param: param.into(),
            reason: reason.into(),
        };
        if let Step::Grow { to: 0, .. } = self {
            return Err(bad(
                "to",
                "give the size the data set should reach, e.g. to=900M",
            ));
        }
        if let Step::Touch { stride, .. } | Step::Read { stride, .. } | Step::Hold { stride, .. } =
            *self
        {
            if stride < 8 || stride % 8 != 0 {
                return Err(bad("stride", "must be a multiple of 8 bytes"));
            }
        }
        Ok(())
    }
}

/// A count with an optional K/M/G decimal suffix (`10M` = 10,000,000).
pub fn parse_count(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, mult) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 1_000),
        'm' | 'M' => (&t[..t.len() - 1], 1_000_000),
        'g' | 'G' => (&t[..t.len() - 1], 1_000_000_000),
        _ => (t, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// Report name of an `OP_*` kind.
pub fn kind_name(kind: u64) -> &'static str {
    match kind {
        abi::OP_TOUCH => "touch",
        abi::OP_FILL_PATTERN => "fill",
        abi::OP_VERIFY_PATTERN => "verify",
        abi::OP_FILL_SAME => "same",
        abi::OP_CHECKSUM => "checksum",
        abi::OP_READ => "read",
        abi::OP_RANDOM => "random",
        abi::OP_FAULT => "fault",
        abi::OP_SYNC => "sync",
        abi::OP_BALLOON => "balloon",
        abi::OP_GROW => "grow",
        abi::OP_HOLD => "hold",
        _ => "unknown",
    }
}

/// An ordered list of steps every vCPU runs on its own share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// The steps.
    pub steps: Vec<Step>,
}

impl Workload {
    /// What `memvisor run` does by default: touch every page of RAM, then write and verify
    /// a pattern over the work area.
    pub fn default_run() -> Self {
        Workload {
            steps: vec![
                Step::Touch {
                    stride: 4096,
                    passes: 1,
                    work_only: false,
                    working_set: 0,
                },
                Step::Fill { seed: 1, sparse: 0 },
                Step::Verify { seed: 1, sparse: 0 },
            ],
        }
    }

    /// Parses `--workload` values; each may hold several steps separated by `;`.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Self, WorkloadError> {
        let mut steps = Vec::new();
        for v in values {
            for s in v.as_ref().split(';').filter(|s| !s.trim().is_empty()) {
                steps.push(Step::parse(s)?);
            }
        }
        let w = Workload { steps };
        w.check()?;
        Ok(w)
    }

    /// Checks limits.
    pub fn check(&self) -> Result<(), WorkloadError> {
        if self.steps.len() > abi::MAX_OPS {
            return Err(WorkloadError::TooMany(self.steps.len()));
        }
        self.steps.iter().try_for_each(Step::check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_steps() {
        let w = Workload::parse(&[
            "touch:stride=2M,passes=3;fill:seed=7",
            "random:ws=64M,accesses=10K",
        ])
        .unwrap();
        assert_eq!(
            w.steps,
            vec![
                Step::Touch {
                    stride: 2 << 20,
                    passes: 3,
                    work_only: false,
                    working_set: 0
                },
                Step::Fill { seed: 7, sparse: 0 },
                Step::Random {
                    working_set: 64 << 20,
                    accesses: 10_000,
                    seed: 12345
                }
            ]
        );
        assert_eq!(w.steps[0].to_op().kind, abi::OP_TOUCH);
        assert_eq!(w.steps[2].to_op().args, [64 << 20, 10_000, 12345, 0]);
        let w =
            Workload::parse(&["touch:work-only=1,ws=512M;read:stride=64,passes=4,ws=8M"]).unwrap();
        assert_eq!(w.steps[0].to_op().args, [4096, 1, 1, 512 << 20]);
        assert_eq!(w.steps[1].to_op().args, [64, 4, 8 << 20, 0]);
        // JSON configs written before `working_set` existed still parse.
        let old: Step = serde_json::from_str(r#"{"op":"read","stride":4096,"passes":2}"#).unwrap();
        assert_eq!(
            old,
            Step::Read {
                stride: 4096,
                passes: 2,
                working_set: 0
            }
        );
        let w = Workload::parse(&["balloon:data=900M,seconds=0;grow:to=1G,seed=3"]).unwrap();
        assert_eq!(
            w.steps[0].to_op(),
            Op {
                kind: abi::OP_BALLOON,
                args: [900 << 20, 0, 1, 0]
            }
        );
        assert_eq!(w.steps[1].to_op().args, [1 << 30, 3, 0, 0]);
        assert_eq!((w.steps[0].name(), w.steps[1].name()), ("balloon", "grow"));
        // Sparse data: the argument reaches the guest; configs without it mean every word.
        let w = Workload::parse(&["fill:sparse=8;verify:seed=2,sparse=8"]).unwrap();
        assert_eq!(w.steps[0].to_op().args, [1, 8, 0, 0]);
        assert_eq!(w.steps[1].to_op().args, [2, 8, 0, 0]);
        let old: Step = serde_json::from_str(r#"{"op":"fill","seed":3}"#).unwrap();
        assert_eq!(old, Step::Fill { seed: 3, sparse: 0 });
        // One word in eight holds the pattern, the rest are zero; 0 and 1 mean every word.
        let words: Vec<u64> = (0..16)
            .map(|i| abi::pattern_at(0x100_0000 + 8 * i, 1, 8))
            .collect();
        assert!(words[0] != 0 && words[8] != 0);
        assert_eq!(words.iter().filter(|w| **w == 0).count(), 14);
        for sparse in [0, 1] {
            assert_eq!(
                abi::pattern_at(0x1008, 5, sparse),
                abi::pattern_word(0x1008, 5)
            );
        }
    }

    #[test]
    fn rejects_bad_steps() {
        assert!(matches!(
            Step::parse("dance"),
            Err(WorkloadError::UnknownOp(_))
        ));
        let e = Step::parse("touch:stride=3").unwrap_err().to_string();
        assert!(e.contains("stride") && e.contains("multiple of 8"), "{e}");
        let e = Step::parse("grow").unwrap_err().to_string();
        assert!(e.contains("to=900M"), "{e}");
        let e = Step::parse("fill:colour=1").unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        let many: Vec<String> = (0..=abi::MAX_OPS).map(|_| "checksum".to_string()).collect();
        assert!(matches!(
            Workload::parse(&many),
            Err(WorkloadError::TooMany(_))
        ));
    }

    /// Fuzzing finding (config target): a JSON config file held steps `--workload` refuses
    /// (`touch` with stride 0, `grow` to 0), because only the text parser checked them.
    #[test]
    fn config_file_steps_follow_the_command_line_rules() {
        let json = r#"{"steps": [{"op": "touch", "stride": 0, "passes": 1, "work_only": false}]}"#;
        let w: Workload = serde_json::from_str(json).unwrap();
        let e = w.check().unwrap_err().to_string();
        assert!(e.contains("touch") && e.contains("multiple of 8"), "{e}");
        let w: Workload =
            serde_json::from_str(r#"{"steps": [{"op": "grow", "to": 0, "seed": 1}]}"#).unwrap();
        assert!(w.check().unwrap_err().to_string().contains("to=900M"));
        Workload::default_run().check().unwrap();
    }
}
