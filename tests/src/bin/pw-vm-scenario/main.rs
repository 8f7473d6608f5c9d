//! Guest side of the VM scenarios (`cargo xtask test --vm` runs it inside
//! each guest): `pw-vm-scenario NAME` runs one scenario, checks pagewatch's
//! snapshot against the kernel's own accounting, prints what it compared
//! and exits non-zero on a mismatch. A scenario that cannot run on this
//! kernel logs `vm-NAME` through `pagewatch_tests::skip` and exits 0.
//!
//! Scenarios: `balloon` (2 GiB guest inflated to 1 GiB and back),
//! `balloon-pressure` (the same while a workload holds most memory, with
//! zram swap), `numa-hugetlb` (a node-1 hugetlb pool mapped by a workload
//! bound to node 1), `numa-migrate` (a workload's pages moved from node 0 to
//! node 1 by migrate_pages), `thp` (THP `always` and MADV_COLLAPSE), `selftests`
//! (the kernel's mm selftests alone and under `pagewatch record`). The other
//! subcommands (`hold`, `hugetlb-child`, `thp-child`) are the workloads the
//! scenarios start. QEMU is driven by the host through [`host::qmp`].

mod balloon;
mod host;
mod memory;
mod selftests;
mod workload;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = args.first() else {
        eprintln!(
            "usage: pw-vm-scenario balloon|balloon-pressure|numa-hugetlb|numa-migrate|thp|selftests (in a test guest)"
        );
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match name.as_str() {
        "balloon" => balloon::inflate_and_back(),
        "balloon-pressure" => balloon::under_pressure(),
        "numa-hugetlb" => memory::numa_hugetlb(),
        "numa-migrate" => memory::numa_migrate(),
        "thp" => memory::thp_collapse(),
        "selftests" => selftests::run_all(),
        "hold" => workload::hold(rest),
        "hugetlb-child" => workload::hugetlb_child(rest),
        "thp-child" => workload::thp_child(),
        other => Err(format!("unknown scenario {other:?}")),
    };
    match result {
        Ok(()) => {
            println!("pw-vm-scenario {name}: ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("pw-vm-scenario {name}: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
