//! Booting one guest with `vng` and streaming its console: the command
//! line (TCG unless KVM proved to work, a modprobe blacklist that saves
//! boot time, NUMA nodes, the balloon and a QMP socket), a hard timeout
//! around every boot, one retry on vng's exit 255 (about one boot in 20
//! oopses or exits silently under TCG), and the KVM probe.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{kernels::Kernel, venv_bin, vm_dir};
use crate::cmd::{self, step};

/// Modules udev would load that the guests never use: loading them costs
/// seconds of TCG time per boot.
const BLACKLIST: &str = "kvm,kvm_amd,kvm_intel,ccp,irqbypass,sr_mod,cdrom,ahci,libahci,libata,sg,\
psmouse,serio_raw,evdev,joydev,mousedev,i2c_piix4,button,pcspkr,floppy,\
aesni_intel,ghash_clmulni_intel,crc32_pclmul,crct10dif_pclmul,polyval_clmulni,sha512_ssse3,sha256_ssse3,sha1_ssse3";

/// The exit status vng reports when the guest never came up properly.
pub const EXIT_BOOT_FAILED: i32 = 255;

/// How to boot a guest.
#[derive(Debug, Clone)]
pub struct Guest {
    pub kernel: Kernel,
    /// `--memory`, as QEMU takes it (`2G`).
    pub memory_mib: u64,
    pub cpus: u32,
    /// Two NUMA nodes, memory and CPUs split evenly.
    pub numa: bool,
    /// A virtio-balloon device.
    pub balloon: bool,
    /// A QMP socket for QEMU.
    pub qmp: Option<PathBuf>,
    /// QEMU's log of CPU resets (`-d cpu_reset`): a guest that dies
    /// without a word (a triple fault ends QEMU under `-no-reboot`) leaves
    /// "Triple fault" and the registers there.
    pub qemu_log: Option<PathBuf>,
    /// Host directories the guest may write (mounted at the same path).
    pub rwdirs: Vec<PathBuf>,
    pub timeout: Duration,
    /// Show the guest's boot console (`vng -v`).
    pub verbose: bool,
    pub accel: Accel,
}

/// What runs the guest's CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG (software emulation; no usable KVM here)",
        })
    }
}

/// How a boot ended.
#[derive(Debug)]
pub struct Outcome {
    /// vng's exit code (the guest command's), or None if the timeout killed it.
    pub code: Option<i32>,
    pub elapsed: Duration,
}

impl Guest {
    /// A guest of `memory_mib` MiB and `cpus` CPUs on `kernel`.
    pub fn new(kernel: Kernel, memory_mib: u64, cpus: u32, accel: Accel) -> Self {
        Self {
            kernel,
            memory_mib,
            cpus,
            numa: false,
            balloon: false,
            qmp: None,
            qemu_log: None,
            rwdirs: Vec::new(),
            timeout: Duration::from_secs(600),
            verbose: false,
            accel,
        }
    }

    /// The `timeout ... vng ...` command running `script` in the guest.
    fn command(&self, script: &str) -> anyhow::Result<Command> {
        if self.numa && (self.cpus < 2 || !self.memory_mib.is_multiple_of(2)) {
            bail!("--numa needs at least 2 CPUs and an even memory size");
        }
        let mut c = Command::new("timeout");
        c.arg("--kill-after=10")
            .arg(format!("{}", self.timeout.as_secs()))
            .arg(venv_bin().join("vng"))
            .arg("-r")
            .arg(&self.kernel.image)
            .arg("--memory")
            .arg(format!("{}M", self.memory_mib))
            .arg("--cpus")
            .arg(self.cpus.to_string())
            .arg("--append")
            .arg(format!("modprobe.blacklist={BLACKLIST}"));
        if self.accel == Accel::Tcg {
            c.arg("--disable-kvm");
        }
        if self.numa {
            let half = self.memory_mib / 2;
            let split = self.cpus / 2;
            let range = |a: u32, b: u32| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            };
            c.arg("--numa")
                .arg(format!("{half}M,cpus={}", range(0, split - 1)))
                .arg("--numa")
                .arg(format!("{half}M,cpus={}", range(split, self.cpus - 1)));
        }
        if self.balloon {
            c.arg("--balloon");
        }
        if let Some(qmp) = &self.qmp {
            // The `=` forms are required by the QEMU 7.2 parser here.
            c.arg(format!(
                "--qemu-opts=-qmp unix:{},server=on,wait=off",
                qmp.display()
            ));
        }
        if let Some(log) = &self.qemu_log {
            c.arg(format!("--qemu-opts=-d cpu_reset -D {}", log.display()));
        }
        for dir in &self.rwdirs {
            c.arg(format!("--rwdir={}", dir.display()));
        }
        if self.verbose {
            c.arg("--verbose");
        }
        c.arg("--").arg(script);
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![venv_bin()];
        paths.extend(std::env::split_paths(&path));
        c.env(
            "PATH",
            std::env::join_paths(paths).context("cannot build PATH for vng")?,
        );
        c.current_dir(cmd::workspace());
        Ok(c)
    }

    /// Boots once, runs `script` (a shell command line) in the guest and
    /// hands every console line to `on_line` as it arrives.
    pub fn boot(&self, script: &str, on_line: &mut dyn FnMut(&str)) -> anyhow::Result<Outcome> {
        let command = self.command(script)?;
        if let Some(qmp) = &self.qmp {
            let _ = std::fs::remove_file(qmp);
        }
        let start = Instant::now();
        // QEMU opens stdout and stderr separately: cmd::lines gives both
        // one pipe.
        let status = cmd::lines(command, on_line)
            .with_context(|| format!("running vng for {}", self.kernel.name))?;
        let code = status.code().filter(|&c| c != 124 && c != 137);
        Ok(Outcome {
            code,
            elapsed: start.elapsed(),
        })
    }

    /// [`Guest::boot`], once more if vng exits 255 (a failed boot);
    /// `retried` counts the retries.
    pub fn boot_retrying(
        &self,
        script: &str,
        on_line: &mut dyn FnMut(&str),
        before_retry: &mut dyn FnMut(),
        retried: &mut u32,
    ) -> anyhow::Result<Outcome> {
        let first = self.boot(script, on_line)?;
        if first.code != Some(EXIT_BOOT_FAILED) {
            return Ok(first);
        }
        *retried += 1;
        eprintln!(
            "xtask: guest on {} exited 255 (failed boot) after {:.0?}; retrying once",
            self.kernel.name, first.elapsed
        );
        before_retry();
        self.boot(script, on_line)
    }
}

/// KVM if a tiny guest boots with it within a timeout, else TCG. The
/// answer is cached per host kernel in `target/vm/accel`;
/// `PAGEWATCH_VM_ACCEL=kvm|tcg` overrides it.
pub fn accelerator(kernel: Option<&str>) -> anyhow::Result<Accel> {
    match std::env::var("PAGEWATCH_VM_ACCEL").as_deref() {
        Ok("kvm") => return Ok(Accel::Kvm),
        Ok("tcg") => return Ok(Accel::Tcg),
        _ => {}
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        step("no usable /dev/kvm: guests run under TCG");
        return Ok(Accel::Tcg);
    }
    let host = cmd::output(Command::new("uname").arg("-r"))?
        .trim()
        .to_string();
    let cache = vm_dir().join("accel");
    if let Ok(text) = std::fs::read_to_string(&cache)
        && let Some((kv, accel)) = text.trim().split_once(' ')
        && kv == host
    {
        return Ok(if accel == "kvm" {
            Accel::Kvm
        } else {
            Accel::Tcg
        });
    }
    let kernel = super::kernels::selected(kernel)?
        .into_iter()
        .next()
        .context("no kernel to probe KVM with")?;
    step(&format!(
        "probing KVM with a tiny guest on {} (60 s at most)",
        kernel.name
    ));
    let mut probe = Guest::new(kernel, 256, 1, Accel::Kvm);
    probe.timeout = Duration::from_secs(60);
    let mut saw = false;
    let out = probe.boot("echo pw-kvm-probe-ok", &mut |l| {
        saw |= l.contains("pw-kvm-probe-ok")
    })?;
    let accel = if out.code == Some(0) && saw {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    step(&format!(
        "KVM probe: {} after {:.0?}; guests run under {accel}",
        match out.code {
            Some(c) => format!("exit {c}"),
            None => "timed out".into(),
        },
        out.elapsed
    ));
    std::fs::create_dir_all(vm_dir()).ok();
    std::fs::write(
        &cache,
        format!(
            "{host} {}\n",
            if accel == Accel::Kvm { "kvm" } else { "tcg" }
        ),
    )
    .with_context(|| format!("cannot write {}", cache.display()))?;
    Ok(accel)
}
