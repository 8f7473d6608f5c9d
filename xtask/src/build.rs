//! `cargo xtask build`: setup, then the eBPF object (through
//! pagewatch/build.rs), pagewatch and the test workloads, in release mode.

use crate::{cmd, setup};

pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    cmd::step("building pagewatch (release; the eBPF object is built by pagewatch/build.rs)");
    cmd::run(cmd::cargo().args([
        "build",
        "--release",
        "-p",
        "pagewatch",
        "-p",
        "pagewatch-tests",
    ]))
}
