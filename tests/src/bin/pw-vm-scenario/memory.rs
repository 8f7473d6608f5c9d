//! Memory-layout scenarios: a hugetlb pool reserved on NUMA node 1 only
//! (per-node sysfs) and mapped by a workload bound to node 1, checked
//! against sysfs, smaps and numa_maps; a workload's pages moved from node 0
//! to node 1 with migrate_pages(2), which the correlator must report as
//! node changes (numa_maps and vmstat are the oracles); and THP `always`
//! plus MADV_COLLAPSE, checked against smaps AnonHugePages.

use pagewatch_tests::{Item, TransitionKind, skip, top_transitions};

use crate::{
    host::{self, Checks, Result, Top, snapshot},
    workload::Child,
};

const NODE1: &str = "/sys/devices/system/node/node1/hugepages/hugepages-2048kB";
const NODE0: &str = "/sys/devices/system/node/node0/hugepages/hugepages-2048kB";
const POOL: u64 = 16;

/// Puts a sysfs value back on drop.
struct Restore(String, String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, &self.1);
    }
}

/// The per-node hugetlb entry of a pagewatch system snapshot.
fn pool(v: &serde_json::Value, node: u64) -> Option<(u64, u64)> {
    v["system"]["state"]["hugetlb"]
        .as_array()?
        .iter()
        .find_map(|e| {
            (e["node"].as_u64() == Some(node) && e["size_kb"].as_u64() == Some(2048))
                .then(|| Some((e["nr"].as_u64()?, e["free"].as_u64()?)))?
        })
}

pub fn numa_hugetlb() -> Result {
    const TEST: &str = "vm-numa-hugetlb";
    if !std::path::Path::new(NODE1).exists() {
        skip(
            TEST,
            "the guest has no NUMA node 1 with 2 MiB hugetlb pages",
        );
        return Ok(());
    }
    let nr_path = format!("{NODE1}/nr_hugepages");
    let old = std::fs::read_to_string(&nr_path).map_err(|e| format!("read {nr_path}: {e}"))?;
    let _restore = Restore(nr_path.clone(), old.trim().to_string());
    let base1 = host::read_num(&nr_path)?;
    let base0 = host::read_num(&format!("{NODE0}/nr_hugepages"))?;
    host::write(&nr_path, &(base1 + POOL).to_string())?;
    let mut checks = Checks::default();
    checks.eq(
        "node 1 nr_hugepages after reserving",
        host::read_num(&nr_path)?,
        base1 + POOL,
    );
    checks.eq(
        "node 0 nr_hugepages (untouched)",
        host::read_num(&format!("{NODE0}/nr_hugepages"))?,
        base0,
    );
    let mapped = POOL / 2;
    let w = Child::start(&["hugetlb-child", &mapped.to_string(), "1"])?;
    let pid = w.pid.to_string();
    let v = snapshot(&["--pid", &pid, "--system"])?;
    let free1 = host::read_num(&format!("{NODE1}/free_hugepages"))?;
    let nr1 = host::read_num(&nr_path)?;
    match pool(&v, 1) {
        Some((nr, free)) => {
            checks.eq("census node 1 pool nr vs sysfs", nr, nr1);
            checks.eq("census node 1 pool free vs sysfs", free, free1);
        }
        None => checks.that("census reports a per-node pool for node 1", false),
    }
    if let Some((nr0, _)) = pool(&v, 0) {
        checks.eq("census node 0 pool nr vs sysfs", nr0, base0);
    }
    checks.eq(
        "node 1 free_hugepages dropped by the mapped pages",
        nr1 - free1,
        mapped,
    );
    let smaps_kb = host::kb_field(&format!("/proc/{pid}/smaps_rollup"), "Private_Hugetlb")?;
    checks.eq("smaps_rollup Private_Hugetlb (kB)", smaps_kb, mapped * 2048);
    let census_kb = v["processes"][0]["total"]["private_hugetlb"]
        .as_u64()
        .unwrap_or(u64::MAX);
    checks.eq(
        "census per-process private_hugetlb vs smaps (kB)",
        census_kb,
        smaps_kb,
    );
    // numa_maps: the hugetlb VMA's pages all on node 1.
    let numa_maps = std::fs::read_to_string(format!("/proc/{pid}/numa_maps"))
        .map_err(|e| format!("numa_maps: {e}"))?;
    let on_node1: u64 = numa_maps
        .lines()
        .filter(|l| l.contains(" huge"))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|w| w.strip_prefix("N1="))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    checks.eq("numa_maps hugetlb pages on node 1", on_node1, mapped);
    // The census's own placement: hugetlb PFN runs owned by the workload
    // (`--flags huge --list`), each inside node 1's memory blocks.
    let v = snapshot(&["--pid", &pid, "--flags", "huge", "--list"])?;
    let owner = format!("{pid}@");
    let node1 = node_blocks(1)?;
    let block = block_pages()?;
    let (mut owned, mut owned_on_node1) = (0u64, 0u64);
    for run in v["system"]["list"].as_array().into_iter().flatten() {
        let owned_by_workload = run["owners"].as_array().is_some_and(|o| {
            o.iter()
                .any(|x| x.as_str().is_some_and(|s| s.starts_with(&owner)))
        });
        let (Some(pfn), Some(count)) = (run["pfn"].as_u64(), run["count"].as_u64()) else {
            continue;
        };
        if !owned_by_workload {
            continue;
        }
        owned += count;
        if node1.contains(&(pfn / block)) && node1.contains(&((pfn + count - 1) / block)) {
            owned_on_node1 += count;
        }
    }
    checks.eq(
        "census hugetlb pages owned by the workload (4 KiB)",
        owned,
        mapped * 512,
    );
    checks.eq(
        "of those, on node 1's memory blocks",
        owned_on_node1,
        mapped * 512,
    );
    drop(w);
    checks.result()
}

/// Pages of process `pid` on NUMA node `node`, summed over its VMAs
/// (/proc/PID/numa_maps `N<node>=` fields).
fn numa_maps_pages(pid: u32, node: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/numa_maps"))
        .map_err(|e| format!("numa_maps of {pid}: {e}"))?;
    let key = format!("N{node}=");
    Ok(text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(key.as_str()))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum())
}

/// A workload's 64 MiB allocated on node 0, moved to node 1 by
/// migrate_pages(2) while pagewatch follows it: the correlator reports
/// `node_changed` 0 -> 1 caused by `migrate_syscall` for as many pages as
/// numa_maps says arrived on node 1.
pub fn numa_migrate() -> Result {
    const TEST: &str = "vm-numa-migrate";
    const MIB: u64 = 64;
    if !std::path::Path::new("/sys/devices/system/node/node1").exists() {
        skip(TEST, "the guest has no NUMA node 1");
        return Ok(());
    }
    // NUMA balancing moves pages between the nodes too: with it on, a 7.3
    // guest's node changes were matched to its migrations (15,947 pages
    // "by numa_balancing", pgmigrate_success 104 above the pages moved).
    let _numa = pagewatch_tests::no_numa_balancing();
    let w = Child::start(&["hold", &MIB.to_string(), "0"])?;
    let pid = w.pid.to_string();
    let mut checks = Checks::default();
    let on0 = numa_maps_pages(w.pid, 0)?;
    let on1 = numa_maps_pages(w.pid, 1)?;
    println!("  workload {pid}: {on0} pages on node 0, {on1} on node 1");
    checks.that("the workload's memory is on node 0 first", on0 >= MIB * 256);
    // Intervals much shorter than the call (0.8 to 3.8 s under TCG), so
    // its pages move over several of them, before pgmigrate_success moves.
    let mut top = Top::start(&[
        "--pid",
        &pid,
        "--events",
        "migration",
        "--interval",
        "250ms",
    ])?;
    // Start from a quiet second, so that the only other migration during
    // the call is the compaction this scenario runs alongside it on
    // purpose: each page must get the reason of its own mover (before
    // pagewatch told movers apart, a 6.12 run with compaction after the
    // balloon scenarios had pgmigrate_success +17,057 for 16,545 pages
    // moved, 3,193 of them unexplained).
    let moves = || {
        [
            "pgmigrate_success",
            "pgmigrate_fail",
            "compact_migrate_scanned",
        ]
        .map(pagewatch_tests::vmstat)
    };
    use std::time::Duration;
    let quiet_since = std::time::Instant::now();
    let mut last = moves();
    let mut still = std::time::Instant::now();
    while still.elapsed() < Duration::from_secs(1)
        && quiet_since.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(100));
        let now = moves();
        if now != last {
            (last, still) = (now, std::time::Instant::now());
        }
    }
    println!(
        "  no migration system-wide for {:.1} s before the call (waited {:.1} s)",
        still.elapsed().as_secs_f64(),
        quiet_since.elapsed().as_secs_f64()
    );
    let migrated0 = pagewatch_tests::vmstat("pgmigrate_success");
    let scanned0 = pagewatch_tests::vmstat("compact_migrate_scanned");
    // Compaction of every zone, over and over while the call runs, in
    // this process's thread (compact_memory compacts in the writer's
    // context, with reason `compaction`).
    let calling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let compactor = {
        let calling = calling.clone();
        std::thread::spawn(move || {
            let mut rounds = 0u32;
            while calling.load(std::sync::atomic::Ordering::Relaxed) {
                if std::fs::write("/proc/sys/vm/compact_memory", "1").is_err() {
                    break;
                }
                rounds += 1;
            }
            rounds
        })
    };
    let (old, new): (u64, u64) = (1 << 0, 1 << 1);
    let call = std::time::Instant::now();
    // SAFETY: migrate_pages reads the two 64-bit node masks for the call only.
    let left = unsafe {
        libc::syscall(
            libc::SYS_migrate_pages,
            w.pid as libc::c_long,
            64 as libc::c_ulong,
            &old as *const u64,
            &new as *const u64,
        )
    };
    let call = call.elapsed();
    calling.store(false, std::sync::atomic::Ordering::Relaxed);
    let rounds = compactor.join().unwrap_or(0);
    if left < 0 {
        return Err(format!(
            "migrate_pages({pid}, 0 -> 1): {}",
            std::io::Error::last_os_error()
        ));
    }
    // migrate_pages(2) returns once every page it could move has moved:
    // numa_maps is final now. pagewatch sees the move in the first snapshot
    // after the call, its evidence (mm_migrate_pages fires as the call ends)
    // can come an interval later, and the interval running during the call
    // may have seen part of it: three intervals from now, and until one sees
    // no node change of the workload.
    let moved = numa_maps_pages(w.pid, 1)? - on1;
    top.mark();
    let settled = top.settle(3, 120, |l| {
        matches!(l.item(), Some(Item::Transition(t))
            if t.pid == w.pid && t.kind == TransitionKind::NodeChanged)
    });
    checks.that("pagewatch's node changes settled within 120 s", settled);
    let lines = top.stop_lines()?;
    println!(
        "  migrate_pages left {left} pages in {:.2} s; numa_maps: {moved} pages arrived on node 1; pgmigrate_success +{}; \
         {rounds} compactions alongside (compact_migrate_scanned +{})",
        call.as_secs_f64(),
        pagewatch_tests::vmstat("pgmigrate_success") - migrated0,
        pagewatch_tests::vmstat("compact_migrate_scanned") - scanned0
    );
    checks.that("compaction ran alongside the call", rounds > 0);
    checks.that(
        "most of the 64 MiB moved to node 1",
        moved >= MIB * 256 * 9 / 10,
    );
    let mut by_cause = std::collections::BTreeMap::<String, u64>::new();
    let mut others = std::collections::BTreeMap::<String, u64>::new();
    for t in top_transitions(&lines).filter(|t| t.pid == w.pid) {
        if t.kind != TransitionKind::NodeChanged {
            let key = format!("{} by {}", t.kind, t.cause);
            *others.entry(key).or_default() += t.pages;
            continue;
        }
        let key = format!("{} -> {} by {}", t.from_node, t.to_node, t.cause);
        *by_cause.entry(key).or_default() += t.pages;
    }
    let dropped: u64 = lines
        .iter()
        .filter_map(|l| l.system().map(|s| s.dropped))
        .sum();
    println!(
        "  pagewatch node changes: {by_cause:?}; the workload's other transitions: {others:?}; events dropped: {dropped}"
    );
    checks.eq(
        "pagewatch node_changed 0 -> 1 by migrate_syscall vs numa_maps",
        by_cause
            .get("0 -> 1 by migrate_syscall")
            .copied()
            .unwrap_or(0),
        moved,
    );
    checks.that("no other node changes or causes", by_cause.len() == 1);
    // What compaction moved of the workload stayed on its node: `migrated`
    // by `compaction`, never without a cause.
    checks.that(
        "the workload's other transitions all have a cause",
        others.keys().all(|k| !k.ends_with("by unexplained")),
    );
    drop(w);
    checks.result()
}

/// The memory block numbers (`memoryN`) of NUMA node `node`.
fn node_blocks(node: u32) -> Result<Vec<u64>> {
    let dir = format!("/sys/devices/system/node/node{node}");
    Ok(std::fs::read_dir(&dir)
        .map_err(|e| format!("list {dir}: {e}"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("memory")?.parse().ok())
        .collect())
}

/// Pages per memory block (`/sys/devices/system/memory/block_size_bytes`, hex).
fn block_pages() -> Result<u64> {
    let path = "/sys/devices/system/memory/block_size_bytes";
    let text = std::fs::read_to_string(path).map_err(|e| format!("read {path}: {e}"))?;
    u64::from_str_radix(text.trim(), 16)
        .map(|b| b / 4096)
        .map_err(|e| format!("{path}: {e}"))
}

const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// The workload's THP in kB by pagewatch's census, and smaps AnonHugePages.
///
/// Before 6.7 (no PAGEMAP_SCAN) pagewatch cannot tell PMD- from PTE-mapped
/// THP and reports AnonHugePages as unknown with a note; there the census of 2 MiB
/// anonymous folios is compared instead (the workload maps them whole).
fn anon_huge(pid: &str, log_skip: bool) -> Result<(u64, u64)> {
    let v = snapshot(&["--pid", pid])?;
    let p = &v["processes"][0];
    let note = p["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str())
        .find(|n| n.contains("PAGEMAP_SCAN"))
        .map(str::to_string);
    let census = match note {
        Some(note) => {
            if log_skip {
                skip("vm-thp/pmd-mapped", &host::one_line(&note, 300));
            }
            p["folios"]["anon"]["2048"]["bytes"].as_u64().unwrap_or(0) / 1024
        }
        None => p["total"]["anon_huge_pages"]
            .as_u64()
            .ok_or_else(|| format!("no total.anon_huge_pages in the snapshot: {v}"))?,
    };
    let smaps = host::kb_field(&format!("/proc/{pid}/smaps_rollup"), "AnonHugePages")?;
    Ok((census, smaps))
}

pub fn thp_collapse() -> Result {
    const TEST: &str = "vm-thp";
    let Ok(enabled) = std::fs::read_to_string(THP_ENABLED) else {
        skip(
            TEST,
            "no transparent hugepages (CONFIG_TRANSPARENT_HUGEPAGE)",
        );
        return Ok(());
    };
    let old = enabled
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .unwrap_or("always")
        .to_string();
    let _restore = Restore(THP_ENABLED.into(), old.clone());
    println!("  THP enabled was [{old}]; set to always");
    host::write(THP_ENABLED, "always")?;
    let mut checks = Checks::default();
    let mut w = Child::start(&["thp-child"])?;
    let pid = w.pid.to_string();
    let (census, smaps) = anon_huge(&pid, true)?;
    checks.eq(
        "census anon_huge_pages vs smaps AnonHugePages (kB), before collapse",
        census,
        smaps,
    );
    checks.that(
        &format!("the 2 MiB-aligned region under THP always is THP-backed (AnonHugePages {smaps} kB >= 4096)"),
        smaps >= 4096,
    );
    w.send("collapse")?;
    w.expect("collapsed")?;
    let (census, smaps) = anon_huge(&pid, false)?;
    checks.eq("smaps AnonHugePages after MADV_COLLAPSE (kB)", smaps, 8192);
    checks.eq(
        "census anon_huge_pages vs smaps AnonHugePages (kB), after collapse",
        census,
        smaps,
    );
    drop(w);
    checks.result()
}
