//! The NEON kernels, exact against the portable kernel on AArch64, from an x86-64 machine:
//! this crate's unit tests cross-built for `aarch64-unknown-linux-gnu` and run under
//! `qemu-aarch64`, once as a CPU with the dot-product extension (`-cpu max`: the `sdot` kernel)
//! and once as a Cortex-A57 without it (the `smull` kernel). Each run also checks which kernel
//! the detection picks there.
//!
//! It installs what it needs where it can (`rustup target add`, Debian's `qemu-user` and
//! `gcc-aarch64-linux-gnu` by apt, as root or through sudo) and says loudly that it skipped
//! where it cannot. It says nothing of the kernels' speed: qemu's is not ARM hardware's.
#![cfg(target_arch = "x86_64")]

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "aarch64-unknown-linux-gnu";

#[test]
fn neon_kernels_match_the_portable_kernel_under_qemu() {
    if let Err(why) = toolchain() {
        eprintln!("\n!!!!! SKIPPED the aarch64 kernels under qemu: {why} !!!!!\n");
        return;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| panic!("the crate lives in the workspace"));
    let target_dir: PathBuf = workspace.join("target/tmp/aarch64");
    for (cpu, kernel) in [("max", "neon-dotprod"), ("cortex-a57", "neon")] {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let output = Command::new(cargo)
            .current_dir(workspace)
            .args(["test", "-p", "router-int8", "--lib", "--target", TARGET])
            .env("CARGO_TARGET_DIR", &target_dir)
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
                "aarch64-linux-gnu-gcc",
            )
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER",
                format!("qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu {cpu}"),
            )
            .env("ROUTER_INT8_EXPECT_KERNEL", kernel)
            .output()
            .unwrap_or_else(|e| panic!("cargo: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "the unit tests failed on an emulated {cpu} ({kernel}):\n{text}"
        );
        assert!(
            text.contains("every_kernel_gives_the_same_outputs ... ok"),
            "{text}"
        );
        eprintln!("aarch64 ({cpu}, {kernel} kernel): the unit tests pass under qemu");
    }
}

/// The Rust target, the cross linker and qemu: found, or installed.
fn toolchain() -> Result<(), String> {
    let installed = sh("rustup target list --installed").unwrap_or_default();
    if !installed.lines().any(|l| l.trim() == TARGET)
        && sh(&format!("rustup target add {TARGET}")).is_none()
    {
        return Err(format!("`rustup target add {TARGET}` failed"));
    }
    let present = || {
        sh("command -v qemu-aarch64 && command -v aarch64-linux-gnu-gcc").is_some()
            && Path::new("/usr/aarch64-linux-gnu/lib").is_dir()
    };
    if present() {
        return Ok(());
    }
    let sudo = match sh("id -u").as_deref().map(str::trim) {
        Some("0") => "",
        _ => "sudo -n ",
    };
    let packages = "qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross";
    let install = format!(
        "apt-get install -y --no-install-recommends {packages} || \
         (apt-get update && apt-get install -y --no-install-recommends {packages})"
    );
    let _ = sh(&format!(
        "DEBIAN_FRONTEND=noninteractive {sudo}sh -c '{install}'"
    ));
    if present() {
        Ok(())
    } else {
        Err(format!("Debian's {packages} cannot be installed here"))
    }
}

/// Runs a shell command; its standard output when it succeeds.
fn sh(command: &str) -> Option<String> {
    let output = Command::new("sh").args(["-c", command]).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}
