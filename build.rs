//! Builds the built-in guest (`guest/`) and leaves it in OUT_DIR for `include_bytes!`.
//!
//! The guest is a `no_std` program compiled with the same rustc for the host target, linked
//! without any C library by the linker script `guest/link.ld`. No prebuilt blob is involved.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    // A directory: cargo reruns when any file in it changes (main.rs, abi.rs, link.ld and the
    // guest's other modules).
    println!("cargo:rerun-if-changed=guest");
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out =
        PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("memvisor-guest.elf");
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let link_script = manifest.join("guest/link.ld");
    let output = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "--crate-name",
            "memvisor_guest",
        ])
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .args([
            "-C",
            "opt-level=2",
            "-C",
            "panic=abort",
            "-C",
            "relocation-model=static",
        ])
        .args([
            "-C",
            "debuginfo=0",
            "-C",
            "link-arg=-nostdlib",
            "-C",
            "link-arg=-static",
        ])
        .args([
            "-C",
            "link-arg=-no-pie",
            "-C",
            "link-arg=-Wl,--build-id=none",
        ])
        .arg("-C")
        .arg(format!("link-arg=-Wl,-T,{}", link_script.display()))
        .arg("-o")
        .arg(&out)
        .arg(manifest.join("guest/main.rs"))
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("could not run rustc to build the built-in guest");
    if !output.status.success() {
        panic!(
            "building the built-in guest (guest/main.rs) failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
