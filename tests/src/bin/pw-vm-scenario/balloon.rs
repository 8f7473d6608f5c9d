//! Balloon scenarios: the host inflates the guest's virtio-balloon from the
//! full 2 GiB to 1 GiB and back through QMP, and the guest checks that
//! pagewatch's census counts exactly the ballooned pages as OFFLINE, equal
//! to vmstat balloon_inflate/deflate deltas, to QEMU's `query-balloon` and
//! to `pagewatch map`'s OFFLINE pages;
//! under pressure (a workload holding most of memory, zram swap, when the
//! balloon takes a quarter of the guest) it checks
//! that the pages the workload lost show in its snapshot as swap, and that
//! pagewatch's correlator attributes them to it, caused by balloon pressure.

use std::process::Command;

use pagewatch::correlate::balloon::BalloonEpisode;
use pagewatch_tests::{
    Item, ReportLine, TopSummary, TransitionKind, json_lines, skip, top_transitions, vmstat,
};

use crate::{
    host::{self, Checks, Result, Top, census_offline, guest_bytes, one_line, qmp, snapshot},
    workload::Child,
};

const PAGE: u64 = 4096;

/// Balloon state before a change, to compare deltas against.
struct Before {
    inflate: u64,
    deflate: u64,
    offline: u64,
    mem_total_kb: u64,
}

fn before() -> Result<Before> {
    Ok(Before {
        inflate: vmstat("balloon_inflate"),
        deflate: vmstat("balloon_deflate"),
        offline: census_offline()?,
        mem_total_kb: host::kb_field("/proc/meminfo", "MemTotal")?,
    })
}

/// Whether the guest has a balloon to drive; logs the skip if not.
fn have_balloon(test: &str) -> bool {
    if !std::fs::read_to_string("/proc/vmstat").is_ok_and(|s| s.contains("balloon_inflate")) {
        skip(
            test,
            "this kernel has no CONFIG_BALLOON_COMPACTION vmstat counters",
        );
        return false;
    }
    let bound = std::fs::read_dir("/sys/bus/virtio/drivers/virtio_balloon").is_ok_and(|d| {
        d.filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("virtio"))
    });
    if !bound {
        skip(
            test,
            "no virtio-balloon device bound to the virtio_balloon driver",
        );
        return false;
    }
    true
}

/// Asks for `target` bytes, waits for the guest to move `pages` pages
/// (vmstat `counter` delta) and for QEMU to report `target`.
fn resize(target: u64, pages: u64, counter: &str, from: u64, checks: &mut Checks) -> Result {
    qmp(&format!("balloon {target}"))?;
    let moved = host::wait_until(240, || vmstat(counter) - from >= pages);
    let reply = qmp(&format!("wait-balloon {target} 60"))?;
    let actual = reply["actual"].as_u64().unwrap_or(0);
    checks.that(
        &format!("the guest moved {pages} pages through the balloon within 240 s"),
        moved,
    );
    checks.eq("query-balloon actual (MiB)", actual >> 20, target >> 20);
    println!(
        "  BALLOON_CHANGE events seen by the host so far: {}",
        reply["balloon_change_events"]
    );
    Ok(())
}

/// 2 GiB guest inflated to 1 GiB and back.
pub fn inflate_and_back() -> Result {
    const TEST: &str = "vm-balloon";
    if !have_balloon(TEST) {
        return Ok(());
    }
    let full = guest_bytes()?;
    let target = full / 2;
    let pages = (full - target) / PAGE;
    let mut checks = Checks::default();
    let start = qmp("query-balloon")?["actual"].as_u64().unwrap_or(0);
    checks.eq("query-balloon actual before (MiB)", start >> 20, full >> 20);
    // Balloon events (fentry on the balloon core) over the whole round trip.
    let tracer = match Top::start(&["--events", "balloon", "--interval", "1s"]) {
        Ok(t) => Some(t),
        Err(said) => {
            skip(
                "vm-balloon/events",
                &format!(
                    "pagewatch top --events balloon failed: {}",
                    one_line(&said, 300)
                ),
            );
            None
        }
    };
    let b = before()?;
    // `pagewatch map`'s OFFLINE pages before (read here only: a whole map
    // is a read of every PFN).
    let map_before = host::map_offline()?.pages;
    println!(
        "  inflating: {} MiB -> {} MiB ({pages} pages)",
        full >> 20,
        target >> 20
    );
    resize(target, pages, "balloon_inflate", b.inflate, &mut checks)?;
    let inflated = vmstat("balloon_inflate") - b.inflate;
    let offline = census_offline()?;
    let mem_total = host::kb_field("/proc/meminfo", "MemTotal")?;
    checks.eq("vmstat balloon_inflate delta (pages)", inflated, pages);
    checks.eq(
        "census OFFLINE pages, over the baseline",
        offline - b.offline.min(offline),
        pages,
    );
    checks.eq(
        "MemTotal drop (pages)",
        (b.mem_total_kb - mem_total.min(b.mem_total_kb)) * 1024 / PAGE,
        pages,
    );
    // The physical map sees the same pages, and the blocks they empty.
    let map = host::map_offline()?;
    checks.eq(
        "pagewatch map OFFLINE pages, over the baseline",
        map.pages - map_before.min(map.pages),
        pages,
    );
    println!(
        "  pagewatch map: {} pageblocks wholly offline",
        map.whole_blocks
    );
    checks.that(
        "pagewatch map's wholly offline pageblocks hold at most its OFFLINE pages",
        map.whole_blocks * 512 <= map.pages,
    );
    checks.eq(
        "pagewatch map: wholly offline pageblocks not judged `offline`",
        map.whole_blocks_misjudged,
        0,
    );
    checks.eq(
        "pagewatch map: `offline` pageblocks holding no OFFLINE page or an unmovable one",
        map.offline_verdicts_wrong,
        0,
    );
    println!("  deflating back to {} MiB", full >> 20);
    let d = before()?;
    resize(full, pages, "balloon_deflate", d.deflate, &mut checks)?;
    checks.eq(
        "vmstat balloon_deflate delta (pages)",
        vmstat("balloon_deflate") - d.deflate,
        pages,
    );
    if let Some(t) = tracer {
        balloon_events(t.stop()?, pages, &mut checks);
    }
    checks.eq(
        "census OFFLINE pages after deflating",
        census_offline()?,
        b.offline,
    );
    checks.eq(
        "pagewatch map OFFLINE pages after deflating",
        host::map_offline()?.pages,
        map_before,
    );
    checks.result()
}

/// Compares the balloon events pagewatch saw with the pages moved, or
/// logs why it attached no balloon hook.
fn balloon_events(summary: TopSummary, pages: u64, checks: &mut Checks) {
    let attached = summary.hooks.iter().any(|h| h.contains("balloon"));
    if !attached {
        skip(
            "vm-balloon/events",
            &format!(
                "no balloon hook attached: {}",
                one_line(&format!("{:?}", summary.skipped_hooks), 300)
            ),
        );
        return;
    }
    let events = &summary.system.page_events;
    checks.eq(
        "pagewatch balloon inflate events (pages)",
        events.balloon_inflated,
        pages,
    );
    checks.eq(
        "pagewatch balloon deflate events (pages)",
        events.balloon_deflated,
        pages,
    );
}

/// Zram swap in the guest, removed on drop.
struct Zram;

impl Zram {
    fn setup(bytes: u64) -> Result<Option<Zram>> {
        let _ = Command::new("modprobe")
            .args(["zram", "num_devices=1"])
            .status();
        if !std::path::Path::new("/sys/block/zram0").exists() {
            return Ok(None);
        }
        let z = Zram;
        let _ = host::write("/sys/block/zram0/reset", "1");
        host::write("/sys/block/zram0/disksize", &bytes.to_string())?;
        for (cmd, args) in [
            ("mkswap", vec!["/dev/zram0"]),
            ("swapon", vec!["-p", "100", "/dev/zram0"]),
        ] {
            let st = Command::new(cmd)
                .args(&args)
                .output()
                .map_err(|e| format!("{cmd}: {e}"))?;
            if !st.status.success() {
                return Err(format!(
                    "{cmd} {args:?}: {}",
                    String::from_utf8_lossy(&st.stderr).trim()
                ));
            }
        }
        Ok(Some(z))
    }
}

impl Drop for Zram {
    fn drop(&mut self) {
        let _ = Command::new("swapoff").arg("/dev/zram0").status();
        let _ = std::fs::write("/sys/block/zram0/reset", "1");
    }
}

/// One process's numbers from a pagewatch snapshot (kB).
fn proc_totals(pid: u32) -> Result<(u64, u64)> {
    let pid_s = pid.to_string();
    let v = snapshot(&["--pid", &pid_s])?;
    let t = &v["processes"][0]["total"];
    match (t["rss"].as_u64(), t["swap"].as_u64()) {
        (Some(rss), Some(swap)) => Ok((rss, swap)),
        _ => Err(format!("snapshot of {pid} has no total.rss/swap: {v}")),
    }
}

/// A workload holds most of the guest when the balloon inflates: its
/// pages go to zram swap, and its snapshot shows them moved.
pub fn under_pressure() -> Result {
    const TEST: &str = "vm-balloon-pressure";
    if !have_balloon(TEST) {
        return Ok(());
    }
    let full = guest_bytes()?;
    // A quarter of the guest (512 MiB of 2 GiB): the inflation waits on
    // kswapd compressing the workload to zram, slow under TCG, so the
    // squeeze is kept to what shows it.
    let target = full - full / 4;
    let pages = (full - target) / PAGE;
    let Some(_zram) = Zram::setup(full / 2)? else {
        skip(TEST, "no zram device (CONFIG_ZRAM missing)");
        return Ok(());
    };
    let avail_kb = host::kb_field("/proc/meminfo", "MemAvailable")?;
    // Most of what is available: all but half the balloon's size, so the
    // inflation must reclaim at least that half, mostly the workload's
    // pages to swap.
    let hold_mib = (avail_kb / 1024).saturating_sub((full - target) >> 21);
    println!(
        "  workload holds {hold_mib} MiB of {} MiB available",
        avail_kb / 1024
    );
    let w = Child::start(&["hold", &hold_mib.to_string()])?;
    let mut checks = Checks::default();
    let (rss0, swap0) = proc_totals(w.pid)?;
    let rollup = format!("/proc/{}/smaps_rollup", w.pid);
    let smaps_swap0 = host::kb_field(&rollup, "Swap")?;
    // The system-wide baseline at the same moment: starting the two
    // pagewatch processes below in a nearly full guest can already push
    // some of the workload's pages out.
    let pswpout0 = vmstat("pswpout");
    // The correlator follows the workload through the whole episode, live
    // (top) and into a recording whose report has the balloon episodes.
    let pid = w.pid.to_string();
    let follow = [
        "--pid",
        &pid,
        "--events",
        "balloon,reclaim,faults",
        "--interval",
        "1s",
    ];
    let mut top = Top::start(&follow)?;
    let recording = "/var/tmp/pw-balloon-pressure.pwrec";
    let _ = std::fs::remove_file(recording);
    let record = Top::record(recording, &follow)?;
    let b = before()?;
    resize(target, pages, "balloon_inflate", b.inflate, &mut checks)?;
    // The census reads PFNs in order for seconds. Under pressure balloon
    // compaction moves balloon pages meanwhile: one moved from a PFN
    // already read to one not read yet counts twice (the other way, not at
    // all), so the count may be off by at most the pages moved during the
    // read (vmstat balloon_migrate; a 7.3 guest once counted 1,676 over).
    let migrate = vmstat("balloon_migrate");
    let offline = census_offline()?;
    let moved = vmstat("balloon_migrate") - migrate;
    let got = offline - b.offline.min(offline);
    checks.that(
        &format!(
            "census OFFLINE pages under pressure: {got}, expected {pages} give or take the {moved} \
             balloon pages compaction moved during the read"
        ),
        got.abs_diff(pages) <= moved,
    );
    let (rss_mid, swap_mid) = proc_totals(w.pid)?;
    println!("  workload while inflated: rss {rss_mid} kB swap {swap_mid} kB");
    // While the guest is squeezed, kswapd keeps moving pages during a
    // snapshot's walk. Deflate first: the idle workload's swapped pages stay
    // in swap, and nothing moves while the snapshot and smaps are compared.
    let d = before()?;
    resize(full, pages, "balloon_deflate", d.deflate, &mut checks)?;
    let status = format!("/proc/{}/status", w.pid);
    let mut last = u64::MAX;
    host::wait_until(60, || {
        let now = host::kb_field(&status, "VmSwap").unwrap_or(0);
        std::thread::sleep(std::time::Duration::from_millis(500));
        std::mem::replace(&mut last, now) == now
    });
    // pagewatch has seen the settled state once an interval ends with no
    // swap transition of the workload (two at least: the first may have
    // begun before VmSwap settled).
    top.mark();
    let settled = top.settle(2, 120, |l| {
        matches!(l.item(), Some(Item::Transition(t)) if t.pid == w.pid
            && matches!(t.kind, TransitionKind::SwappedOut | TransitionKind::SwappedIn))
    });
    checks.that("pagewatch's swap transitions settled within 120 s", settled);
    let lines = top.stop_lines()?;
    record.stop_lines()?;
    let inflated = vmstat("balloon_inflate") - b.inflate;
    let (rss1, swap1) = proc_totals(w.pid)?;
    let smaps_swap = host::kb_field(&rollup, "Swap")?;
    let smaps_rss = host::kb_field(&rollup, "Rss")?;
    println!(
        "  workload before: rss {rss0} kB swap {swap0} kB; after: rss {rss1} kB swap {swap1} kB; pswpout +{}",
        vmstat("pswpout") - pswpout0
    );
    checks.that(
        "the workload lost resident pages to the balloon",
        rss1 < rss0,
    );
    checks.that(
        "the workload's snapshot shows swap after inflation",
        swap1 > swap0,
    );
    checks.eq("snapshot swap vs smaps_rollup Swap (kB)", swap1, smaps_swap);
    checks.eq("snapshot rss vs smaps_rollup Rss (kB)", rss1, smaps_rss);
    // The pages it lost went to swap (its binary's file pages may go too).
    checks.that(
        &format!(
            "resident + swap conserved within 1% ({} kB before, {} kB after)",
            rss0 + swap0,
            rss1 + swap1
        ),
        (rss0 + swap0).abs_diff(rss1 + swap1) * 100 <= rss0 + swap0,
    );
    checks.that(
        "pages swapped out system-wide cover the workload's swap",
        (vmstat("pswpout") - pswpout0) * 4 >= swap1 - swap0,
    );
    // Attribution: the workload's net swapped-out pages in pagewatch's
    // transitions equal what smaps says it lost to swap, and each swap-out
    // has a reclaim cause (balloon_pressure while the balloon inflated).
    let mut by_cause = std::collections::BTreeMap::<String, i64>::new();
    for t in top_transitions(&lines).filter(|t| t.pid == w.pid) {
        let sign = match t.kind {
            TransitionKind::SwappedOut => 1,
            TransitionKind::SwappedIn => -1,
            _ => continue,
        };
        let key = format!("{} by {}", t.kind, t.cause);
        *by_cause.entry(key).or_default() += sign * i64::try_from(t.pages).unwrap_or(i64::MAX);
    }
    println!("  pagewatch swap transitions of the workload: {by_cause:?}");
    let net: i64 = by_cause.values().sum();
    checks.eq(
        "pagewatch net swapped-out pages vs smaps_rollup Swap delta (pages)",
        u64::try_from(net).unwrap_or(0),
        (smaps_swap - smaps_swap0) / 4,
    );
    checks.that(
        "swap-outs caused by balloon pressure",
        by_cause
            .get("swapped_out by balloon_pressure")
            .is_some_and(|n| *n > 0),
    );
    // A few pages can go out after reclaim evidence has aged out (one
    // interval of slack) while the squeezed guest lags: at most 1% of the
    // workload's swap-outs in the recording are unexplained.
    checks.that(
        "unexplained swap-outs at most 1%",
        host::expect(
            recording,
            &format!("swapped_out{{pid={},cause=unexplained}} <= 1%", w.pid),
        )?,
    );
    // The recording's balloon episodes: the inflation with vmstat's pages
    // (and the hooks' where they attach), and the workload's losses in it.
    let out = Command::new(pagewatch_tests::pagewatch_bin())
        .args(["report", recording, "--format", "json"])
        .output()
        .map_err(|e| format!("pagewatch report: {e}"))?;
    let _ = std::fs::remove_file(recording);
    let report: Vec<ReportLine> = json_lines(&String::from_utf8_lossy(&out.stdout));
    let episodes: Vec<&BalloonEpisode> = report
        .iter()
        .filter_map(|l| match l.item() {
            Some(Item::BalloonEpisode(e)) => Some(e),
            _ => None,
        })
        .collect();
    let dropped = report
        .iter()
        .find_map(|l| l.summary().map(|s| s.dropped))
        .unwrap_or(0);
    println!(
        "  report's balloon episodes: {episodes:?}; events the ring buffer dropped: {dropped}"
    );
    // An inflation that pauses (the squeezed guest gives pages slowly)
    // shows as several episodes: compare their sums. A collector that
    // falls behind can end one interval only after the deflation began:
    // that interval is a deflation episode carrying the last inflated
    // pages, so the page counts are summed over every episode.
    let inflations: Vec<&&BalloonEpisode> = episodes.iter().filter(|e| e.inflate).collect();
    let sum =
        |count: fn(&BalloonEpisode) -> u64| -> u64 { episodes.iter().map(|e| count(e)).sum() };
    checks.that("the report has inflation episodes", !inflations.is_empty());
    checks.eq(
        "episodes' vmstat_inflated vs vmstat balloon_inflate delta (pages)",
        sum(|e| e.vmstat_inflated),
        inflated,
    );
    let hooks = sum(|e| e.hook_inflated);
    if hooks > 0 {
        // A squeezed guest's collector can fall behind and the ring buffer
        // then drops events, each counted by the kernel: every balloon page
        // the hooks did not see must be one of those drops (exact without).
        checks.that(
            &format!(
                "episodes' hook_inflated ({hooks} pages) equals vmstat's {inflated} but for events the ring buffer dropped ({dropped})"
            ),
            hooks <= inflated && inflated - hooks <= dropped,
        );
    }
    let lost: u64 = inflations
        .iter()
        .flat_map(|e| &e.losses)
        .filter(|l| l.pid == w.pid)
        .map(|l| l.swapped_out)
        .sum();
    let grew = (smaps_swap - smaps_swap0) / 4;
    checks.that(
        &format!(
            "the workload's swapped_out during the inflation ({lost}) is at most its smaps Swap growth ({grew} pages; kswapd goes on after it)"
        ),
        lost > 0 && lost <= grew + grew / 100,
    );
    drop(w);
    checks.result()
}
