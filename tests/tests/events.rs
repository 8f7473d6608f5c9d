//! Integration tests of the event side against the running kernel: fault
//! counts exact against the kernel's own per-process counters, reclaim
//! totals against /proc/vmstat, drop accounting with a tiny ring buffer,
//! and clear errors for bad input.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
};

use pagewatch::hooks::{Attach, HOOKS};
use pagewatch_tests::{
    Cause, FaultWorkload, MemCgroup, TopLine, Tracer, TransitionKind, json_lines,
    no_numa_balancing, pagewatch_bin, run_pagewatch, skip_unless_root, summary, top_transitions,
    vmstat,
};

fn faults_of(lines: &[TopLine], pid: u32) -> u64 {
    lines
        .iter()
        .filter_map(TopLine::process)
        .filter(|p| p.pid == pid)
        .map(|p| p.stats.faults.faults)
        .sum()
}

/// pagewatch counts exactly the faults the kernel counted for the process.
///
/// The kernel's minflt+majflt (mm_account_fault) and the
/// exceptions/page_fault_user tracepoint agree here because the window
/// touches only fresh anonymous pages from user mode: no fault is retried
/// (VM_FAULT_RETRY is counted once by the kernel and traced once), none
/// comes from kernel mode (page_fault_kernel, which the kernel counts but
/// this hook does not see) since the /proc/self/stat buffer was faulted in
/// during the warm-up, and the workload is idle outside the window. NUMA
/// balancing is switched off for the window (see [`no_numa_balancing`]).
fn fault_counts_match_the_kernel(filter: bool) {
    let _numa = no_numa_balancing();
    let mut wl = FaultWorkload::start(env!("CARGO_BIN_EXE_pw-faults"), 256);
    let pid_num = wl.pid;
    let pid = pid_num.to_string();
    let mut args = vec!["--events", "faults", "--interval", "200ms"];
    if filter {
        args.extend(["--pid", &pid]);
    }
    let tracer = Tracer::start(&args);
    let (delta, pages) = wl.run_window();
    let lines = tracer.stop();
    wl.finish();
    assert_eq!(pages, 65536);
    assert_eq!(
        delta, pages,
        "the kernel counted one fault per touched page"
    );
    let seen = faults_of(&lines, pid_num);
    let s = summary(&lines);
    assert_eq!(
        s.dropped, 0,
        "no drops expected with the default ring buffer"
    );
    assert_eq!(
        seen, delta,
        "pagewatch saw {seen} faults, the kernel counted {delta}"
    );
    if filter {
        // Only the filtered process produced fault events.
        assert_eq!(s.faults, delta);
        assert!(
            lines
                .iter()
                .filter_map(TopLine::process)
                .all(|p| p.pid == pid_num)
        );
    }
}

#[test]
fn fault_count_is_exact_with_in_kernel_pid_filter() {
    if skip_unless_root("fault_count_is_exact_with_in_kernel_pid_filter") {
        return;
    }
    fault_counts_match_the_kernel(true);
}

#[test]
fn fault_count_is_exact_without_filter() {
    if skip_unless_root("fault_count_is_exact_without_filter") {
        return;
    }
    fault_counts_match_the_kernel(false);
}

/// A one-page ring buffer under a fault storm, with the collector stalled
/// (SIGSTOP) while it happens, drops events, counts every drop, and
/// received + dropped equals the kernel's fault count.
#[test]
fn ring_buffer_drops_are_counted_exactly() {
    if skip_unless_root("ring_buffer_drops_are_counted_exactly") {
        return;
    }
    let _numa = no_numa_balancing();
    let mut wl = FaultWorkload::start(env!("CARGO_BIN_EXE_pw-faults"), 256);
    let pid_num = wl.pid;
    let pid = pid_num.to_string();
    let tracer = Tracer::start(&[
        "--events",
        "faults",
        "--pid",
        &pid,
        "--ring-buffer-size",
        "4K",
        "--interval",
        "5s",
    ]);
    let pw = tracer.pid() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pw, libc::SIGSTOP) };
    let (delta, _) = wl.run_window();
    // SAFETY: as above.
    unsafe { libc::kill(pw, libc::SIGCONT) };
    let lines = tracer.stop();
    wl.finish();
    let s = summary(&lines);
    let dropped = s.dropped;
    let per_cpu: u64 = s.dropped_per_cpu.iter().sum();
    let seen = faults_of(&lines, pid_num);
    assert!(
        dropped > 0,
        "a 4 KiB ring buffer should overflow under {delta} faults"
    );
    assert_eq!(per_cpu, dropped, "per-CPU drops add up to the total");
    assert_eq!(
        s.dropped_per_hook.get("page_fault_user").copied(),
        Some(dropped)
    );
    assert_eq!(
        seen + dropped,
        delta,
        "received {seen} + dropped {dropped} != kernel {delta}"
    );
}

/// Reading a file larger than a memory cgroup's limit forces memcg
/// reclaim; pagewatch's reclaimed-page total equals the kernel's pgsteal
/// counters over the same window.
#[test]
fn memcg_reclaim_totals_match_vmstat() {
    let name = "memcg_reclaim_totals_match_vmstat";
    if skip_unless_root(name) {
        return;
    }
    let Some(cg) = MemCgroup::create(64 << 20) else {
        pagewatch_tests::skip(name, "no memory cgroup controller (v1 or v2)");
        return;
    };
    let file =
        std::path::PathBuf::from(format!("/var/tmp/pagewatch-reclaim-{}", std::process::id()));
    let status = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", file.display()),
            "bs=1M",
            "count=512",
            "conv=fsync",
            "status=none",
        ])
        .status()
        .expect("dd");
    assert!(status.success());
    // Drop the file's own page cache so the read below must fault it in.
    let f = std::fs::File::open(&file).expect("open file");
    // SAFETY: valid fd; advisory call.
    unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    // pgsteal_anon + pgsteal_file (5.8+) count every reclaimer, memcg
    // reclaim included; pgsteal_kswapd/direct leave cgroup reclaim out.
    let steal = || vmstat("pgsteal_anon") + vmstat("pgsteal_file");
    let tracer = Tracer::start(&["--events", "reclaim", "--interval", "500ms"]);
    let before = steal();
    let status = Command::new("sh")
        .args([
            "-c",
            &format!(
                "echo $$ > {}/cgroup.procs && exec cat {} > /dev/null",
                cg.dir().display(),
                file.display()
            ),
        ])
        .status()
        .expect("run reader");
    let after = steal();
    let lines = tracer.stop();
    let _ = std::fs::remove_file(&file);
    assert!(status.success());
    let kernel = after - before;
    let sys = &summary(&lines).system;
    let reclaimed = sys.pages_reclaimed;
    let memcg = sys.reclaim.memcg_reclaims;
    eprintln!("kernel pgsteal {kernel}, pagewatch reclaimed {reclaimed}, memcg episodes {memcg}");
    assert!(
        kernel > 50_000,
        "reading 512 MiB through a 64 MiB cgroup reclaims most of it"
    );
    assert!(memcg > 0, "memcg reclaim episodes were seen");
    // Both sides count the same nr_reclaimed of shrink_inactive_list; allow
    // 1% for reclaim elsewhere on the machine between the two reads.
    let diff = kernel.abs_diff(reclaimed);
    assert!(
        diff <= kernel / 100,
        "pagewatch reclaimed {reclaimed} vs kernel pgsteal {kernel} (diff {diff})"
    );
    assert!(sys.reclaim.memcg_reclaimed > 0);
}

fn assert_clear_error(args: &[&str], needle: &str) {
    let (status, _out, err) = run_pagewatch(args);
    assert!(!status.success(), "{args:?} should fail");
    assert!(
        err.contains(needle),
        "{args:?}: stderr {err:?} lacks {needle:?}"
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

#[test]
fn bad_input_gives_one_clear_error() {
    assert_clear_error(&["top", "--pid", "4000000"], "no process with pid 4000000");
    assert_clear_error(
        &["top", "--comm", "no-such-comm-xyz"],
        "no running process is named",
    );
    assert_clear_error(&["top", "--interval", "0s"], "greater than zero");
    assert_clear_error(&["top", "--interval", "soon"], "not a duration");
    assert_clear_error(&["top", "--duration=-1"], "--duration");
    assert_clear_error(&["top", "--ring-buffer-size", "3000"], "power of two");
    assert_clear_error(&["top", "--ring-buffer-size", "4Q"], "unknown size unit");
    assert_clear_error(&["top", "--events", "bogus"], "invalid value 'bogus'");
}

#[test]
fn non_root_run_names_the_missing_privilege() {
    if skip_unless_root("non_root_run_names_the_missing_privilege") {
        return;
    }
    use std::os::unix::process::CommandExt as _;
    let out = Command::new(pagewatch_bin())
        .args(["top", "--duration", "1s"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("spawn as nobody");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("needs root"), "stderr: {err}");
    assert!(!err.contains("panicked"), "stderr: {err}");
}

/// MADV_COLLAPSE of a region built from 4 KiB pages: the collapse events
/// are counted for the process that asked, one per 2 MiB range, and agree
/// with the kernel's smaps AnonHugePages before and after.
#[test]
fn madvise_collapse_is_counted_for_the_calling_process() {
    let name = "madvise_collapse_is_counted_for_the_calling_process";
    if skip_unless_root(name) {
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_pw-thp"))
        .arg("8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn pw-thp");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = || lines.next().expect("a line").expect("read");
    let pid: u32 = next()
        .strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .expect("pid");
    next(); // region
    assert_eq!(next(), "ready");
    let tracer = Tracer::start(&[
        "--events",
        "thp,faults",
        "--pid",
        &pid.to_string(),
        "--interval",
        "300ms",
    ]);
    writeln!(stdin, "go").expect("go");
    let result = next();
    let lines = tracer.stop();
    drop(stdin);
    let _ = child.wait();
    let f: Vec<&str> = result.split(' ').collect();
    let (rc, errno): (i32, i32) = (f[1].parse().unwrap(), f[2].parse().unwrap());
    if rc != 0 && errno == libc::EINVAL {
        pagewatch_tests::skip(name, "MADV_COLLAPSE is not supported by this kernel");
        return;
    }
    assert_eq!(rc, 0, "MADV_COLLAPSE failed with errno {errno}");
    let (before, after): (u64, u64) = (f[4].parse().unwrap(), f[6].parse().unwrap());
    let collapsed_by_smaps = (after - before) / 2048;
    assert_eq!(collapsed_by_smaps, 4, "smaps: 8 MiB became four 2 MiB THPs");
    // Collapses in the process's own context (MADV_COLLAPSE). khugepaged
    // may take some of the ranges first: adding the mm to its empty list
    // wakes it, and MADV_COLLAPSE then finds those ranges PMD-mapped.
    let mine: u64 = lines
        .iter()
        .filter_map(TopLine::process)
        .filter(|p| p.pid == pid)
        .map(|p| p.stats.thp_collapses)
        .sum();
    // The correlator saw the same in the snapshots: the region's 4 KiB
    // pages became THPs, each range attributed to whoever collapsed it.
    let collapsed: Vec<_> = top_transitions(&lines)
        .filter(|t| t.pid == pid && t.kind == TransitionKind::CollapsedToThp)
        .collect();
    let by = |cause: Cause| -> u64 {
        collapsed
            .iter()
            .filter(|t| t.cause == cause)
            .map(|t| t.pages)
            .sum()
    };
    assert_eq!(
        by(Cause::MadvCollapse) + by(Cause::Khugepaged),
        (after - before) / 4,
        "transition pages vs smaps: {collapsed:?}"
    );
    assert_eq!(
        by(Cause::MadvCollapse) / 512,
        mine,
        "MADV_COLLAPSE ranges vs collapse events in pid {pid}'s context: {collapsed:?}"
    );
    assert!(mine >= 1, "the process collapsed at least one range itself");
    let s = summary(&lines);
    assert!(s.system.page_events.thp_collapses >= collapsed_by_smaps);
    assert!(
        s.thp_scan_results.get("succeeded").copied().unwrap_or(0) >= collapsed_by_smaps,
        "scan results name the kernel's `succeeded` status: {:?}",
        s.thp_scan_results
    );
}

/// Balloon hooks use fentry/fexit, which locked-down kernels (integrity lockdown)
/// refuse: the run goes on with the other hooks and says why, once per hook,
/// in stderr and in the summary. Where fentry loads (the test VM's kernels)
/// the hooks are attached instead.
#[test]
fn refused_fentry_is_reported_and_the_rest_keeps_working() {
    if skip_unless_root("refused_fentry_is_reported_and_the_rest_keeps_working") {
        return;
    }
    let (status, out, err) = run_pagewatch(&[
        "top",
        "--json",
        "--events",
        "faults,balloon",
        "--duration",
        "500ms",
    ]);
    assert!(status.success(), "stderr: {err}");
    let lines: Vec<TopLine> = json_lines(&out);
    let summary = summary(&lines);
    let hooks = &summary.hooks;
    assert!(
        hooks.iter().any(|h| h == "exceptions/page_fault_user"),
        "{hooks:?}"
    );
    for program in ["balloon_inflate", "balloon_deflate"] {
        let spec = HOOKS
            .iter()
            .find(|s| s.program == program)
            .expect("a balloon hook");
        // This hook's own attachment (`fentry:balloon_page_enqueue`), not
        // any fentry hook's.
        let attach = match spec.attach {
            Attach::FEntry => "fentry",
            Attach::FExit => "fexit",
            other => panic!("{program} is not an fentry/fexit hook: {other:?}"),
        };
        let attached = spec
            .names
            .iter()
            .any(|function| hooks.contains(&format!("{attach}:{function}")));
        let reason = summary
            .skipped_hooks
            .iter()
            .find(|s| s.hook == program)
            .map(|s| s.reason.clone());
        match reason {
            Some(reason) => {
                assert!(!attached, "{program} both attached and skipped: {reason}");
                assert!(
                    reason.contains("refused")
                        || reason.contains("no function")
                        || reason.contains("BTF"),
                    "{program}: unclear reason {reason:?}"
                );
                assert_eq!(
                    err.matches(&format!("skipping hook {program}:")).count(),
                    1,
                    "said once on stderr: {err}"
                );
            }
            None => assert!(attached, "{program} neither attached nor skipped"),
        }
    }
}
