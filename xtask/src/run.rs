//! `cargo xtask run [-- ARGS]`: build, then run pagewatch as root with ARGS
//! (no ARGS: `pagewatch top`, the live per-process view).

use std::process::Command;

use clap::Args;

use crate::{build, cmd};

#[derive(Debug, Args)]
pub struct Options {
    #[command(flatten)]
    vm: crate::vm::run::VmOptions,
    /// Arguments for pagewatch (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    if opts.vm.vm {
        return crate::vm::run::run(opts.vm, opts.args);
    }
    build::run()?;
    let bin = cmd::release_dir().join("pagewatch");
    let mut command = if cmd::is_root() {
        Command::new(&bin)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(&bin);
        sudo
    };
    command.args(&opts.args);
    cmd::step("running pagewatch (Ctrl-C to stop)");
    // Ctrl-C reaches pagewatch too; the xtask waits for it to print its
    // summary instead of dying first.
    // SAFETY: installing SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    cmd::run(&mut command)
}
