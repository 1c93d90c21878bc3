//! Builds the kernel side (`../ebpf`, package `airlock-ebpf`) with the pinned
//! nightly and bpf-linker, for `include_bytes_aligned!` in `agent`.
//!
//! `AYA_BUILD_SKIP=1` skips it (for `cargo check`/clippy on machines without
//! bpf-linker): an empty object is written instead and loading the agent then
//! fails with a clear error. `AIRLOCK_EBPF_DIR` overrides where the eBPF crate
//! lives (used by out-of-tree harnesses).

use std::{env, fs, path::PathBuf};

use anyhow::{anyhow, Context as _};

/// The eBPF binary's name (its `[[bin]]` in `ebpf/Cargo.toml`).
const EBPF_BIN: &str = "airlock-bpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AIRLOCK_EBPF_DIR");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join(EBPF_BIN);

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // Keep a previously built object; otherwise embed an empty one.
        if !object.exists() {
            fs::write(&object, b"").context("writing the empty eBPF placeholder")?;
        }
        return Ok(());
    }

    let ebpf_dir = match env::var_os("AIRLOCK_EBPF_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let manifest = env::var_os("CARGO_MANIFEST_DIR")
                .ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?;
            PathBuf::from(manifest).join("..").join("ebpf")
        }
    };
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .with_context(|| format!("eBPF crate not found at {}", ebpf_dir.display()))?;
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 eBPF crate path {}", ebpf_dir.display()))?
        .to_owned();
    // The eBPF crate is excluded from the workspace: aya-build runs
    // `cargo build --package airlock-ebpf` in the current directory, so run
    // it from the crate's own directory (its own workspace root).
    env::set_current_dir(&ebpf_dir)
        .with_context(|| format!("cannot enter {}", ebpf_dir.display()))?;
    let common = ebpf_dir.join("..").join("ebpf-common");
    println!("cargo:rerun-if-changed={}", common.display());
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "airlock-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context(
        "building the eBPF programs (see ebpf-toolchain set-up: nightly, rust-src, bpf-linker)",
    )
}
