//! The library's layers (documented in `src/lib.rs`): a module may use its own layer and the
//! layers below it, never one above, so there is no import circle between them. This test reads
//! every source file of the library, finds each `crate::<module>` it names in code (comments
//! are skipped) and fails on one that points up, naming the file and the line.
//!
//! A new top-level module must be given its layer in [`LAYERS`] (the test fails until it is).

use std::path::{Path, PathBuf};

/// Bottom first. `abi` is the guest ABI (`guest/abi.rs`), compiled into both sides.
const LAYERS: &[&str] = &[
    "abi", "config", "seccomp", "host", "memory", "devices", "vmm", "linux", "report", "control",
    "runner", "bench",
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == module)
}

/// `(line, module)` for every `crate::<module>` in `source` outside `//` comments.
fn crate_uses(source: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in source.lines().enumerate() {
        let code = match line.find("//") {
            Some(c) => &line[..c],
            None => line,
        };
        let mut rest = code;
        while let Some(p) = rest.find("crate::") {
            let before_ok = p == 0 || {
                let c = rest.as_bytes()[p - 1];
                !(c.is_ascii_alphanumeric() || c == b'_')
            };
            rest = &rest[p + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_' as char)
                .collect();
            if before_ok && !name.is_empty() {
                out.push((i + 1, name));
            }
        }
    }
    out
}

/// The top-level module a library file belongs to (`src/vmm/vcpu.rs` → `vmm`), or `None` for
/// the crate root.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    if first == "lib.rs" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every upward use in the library under `src`, as readable lines; unknown modules too.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for f in files {
        // The binary's side (`main.rs`, `cmd/`) is above every layer.
        let Some(m) = module_of(src, &f) else {
            continue;
        };
        if m == "main" || m == "cmd" {
            continue;
        }
        let Some(own) = layer(&m) else {
            bad.push(format!(
                "{}: top-level module `{m}` has no layer: add it to LAYERS in tests/layout.rs and to the list in src/lib.rs",
                f.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap();
        for (line, used) in crate_uses(&text) {
            match layer(&used) {
                Some(l) if l > own => bad.push(format!(
                    "{}:{line}: `{m}` (layer {own}) uses `crate::{used}` (layer {l}, above it)",
                    f.display()
                )),
                _ => {}
            }
        }
    }
    bad
}

#[test]
fn no_module_uses_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(
        bad.is_empty(),
        "imports that point up a layer (move the type down, or the code up):\n{}",
        bad.join("\n")
    );
}

/// The check itself: an upward use in code is found, one in a comment or a longer name is not.
#[test]
fn an_upward_use_is_found_and_comments_are_not() {
    let dir = std::env::temp_dir().join(format!("memvisor-layout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("memory")).unwrap();
    std::fs::write(
        dir.join("memory/mod.rs"),
        "//! Uses [`crate::runner`] in a doc comment only.\nuse crate::config::Size;\nfn f() { let _ = my_crate::runner::X; } // crate::bench\n",
    )
    .unwrap();
    assert!(violations(&dir).is_empty(), "{:?}", violations(&dir));
    std::fs::write(
        dir.join("memory/up.rs"),
        "use crate::config::Size;\n    let r = crate::runner::run(x);\n",
    )
    .unwrap();
    std::fs::write(dir.join("newthing.rs"), "").unwrap();
    let bad = violations(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(
        bad.iter()
            .any(|b| b.contains("newthing") && b.contains("no layer")),
        "{bad:?}"
    );
    let up = format!(
        "up.rs:2: `memory` (layer {}) uses `crate::runner` (layer {}, above it)",
        layer("memory").unwrap(),
        layer("runner").unwrap()
    );
    assert!(bad.iter().any(|b| b.ends_with(&up)), "{bad:?}");
}
