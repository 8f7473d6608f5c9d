//! `cargo xtask balloon [SIZE]`: sets the guest size of a running
//! `cargo xtask run --vm --balloon` guest through its QMP socket and waits
//! until the balloon gets there; without SIZE, prints the current size.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::{default_qmp_socket, parse_size, qmp::Qmp};

#[derive(Debug, Args)]
pub struct Options {
    /// Target guest memory size (e.g. 1G, 1536M); none: just query.
    size: Option<String>,
    /// QMP socket of the guest.
    #[arg(long, value_name = "PATH")]
    qmp: Option<PathBuf>,
    /// Seconds to wait for the balloon to reach SIZE.
    #[arg(long, default_value_t = 120)]
    wait: u64,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let path = opts.qmp.unwrap_or_else(default_qmp_socket);
    let mut qmp = Qmp::connect(&path, Duration::ZERO)?;
    let before = qmp.balloon_actual()?;
    println!("guest size now: {} MiB", before >> 20);
    let Some(size) = opts.size else {
        return Ok(());
    };
    let bytes = parse_size(&size)?;
    qmp.set_balloon(bytes)?;
    let start = std::time::Instant::now();
    let after = qmp.wait_balloon(bytes, Duration::from_secs(opts.wait))?;
    println!(
        "guest size: {} MiB after {:.1?}{}",
        after >> 20,
        start.elapsed(),
        if after == bytes {
            String::new()
        } else {
            format!(
                " (asked for {} MiB; the guest is still working on it or refused)",
                bytes >> 20
            )
        }
    );
    Ok(())
}
