//! Integration tests of `pagewatch snapshot` against the running kernel,
//! with the kernel's own accounting as the oracle: /proc/PID/smaps per VMA,
//! smaps_rollup per process, /proc/zoneinfo and the hugetlb sysfs pools for
//! the system census. The pw-layout workload builds the known layout; tests
//! that change the hugetlb pool or the KSM knobs restore them on drop.

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use pagewatch_tests::{
    Knobs, SmapsVma, kpageflags_ksm_bug, pagewatch_bin, rollup, run_pagewatch, skip,
    skip_unless_root, smaps,
};
use serde_json::Value;

/// A running workload (pw-layout, or pw-hold) and the regions it reported.
struct Layout {
    child: Child,
    _stdin: ChildStdin,
    pid: u32,
    regions: HashMap<String, u64>,
}

impl Layout {
    fn start(args: &[&str], uid: Option<u32>) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pw-layout"));
        cmd.args(args);
        if let Some(u) = uid {
            cmd.uid(u).gid(u);
        }
        Self::spawn(cmd)
    }

    /// Run `cmd` until it prints `ready`, noting its `pid` and `region` lines.
    fn spawn(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let mut regions = HashMap::new();
        let mut pid = child.id();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["region", name, start, _] => {
                    regions.insert(name.to_string(), u64::from_str_radix(start, 16).unwrap());
                }
                ["pid", p] => pid = p.parse().unwrap(),
                ["ready"] => break,
                _ => {}
            }
        }
        Layout {
            child,
            _stdin: stdin,
            pid,
            regions,
        }
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const HUGETLB_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";

/// Reserve `n` more 2 MiB hugetlb pages, restored when the guard drops;
/// None if the pool would not grow.
fn reserve_hugetlb(n: u64) -> Option<Knobs> {
    pagewatch_tests::grow_hugetlb_pool(HUGETLB_2M, n)
}

/// smaps field -> pagewatch JSON usage field.
const FIELDS: [(&str, &str); 17] = [
    ("Rss", "rss"),
    ("Pss", "pss"),
    ("Pss_Anon", "pss_anon"),
    ("Pss_File", "pss_file"),
    ("Pss_Shmem", "pss_shmem"),
    ("Pss_Dirty", "pss_dirty"),
    ("Shared_Clean", "shared_clean"),
    ("Shared_Dirty", "shared_dirty"),
    ("Private_Clean", "private_clean"),
    ("Private_Dirty", "private_dirty"),
    ("Anonymous", "anonymous"),
    ("KSM", "ksm"),
    ("Swap", "swap"),
    ("AnonHugePages", "anon_huge_pages"),
    ("Private_Hugetlb", "private_hugetlb"),
    ("Shared_Hugetlb", "shared_hugetlb"),
    ("FilePmdMapped", "file_pmd_mapped"),
];

/// Fields of shared-library VMAs that other processes starting or exiting
/// change between pagewatch's read and this test's (pagewatch takes its
/// own mappings out; `shared_libraries_and_large_file_folios_pss_equals_smaps`
/// compares them with reads that held still).
const SHARING: [&str; 4] = ["Pss", "Pss_File", "Shared_Clean", "Private_Clean"];

/// Files this test binary maps (libc, ld.so, libgcc_s; pagewatch maps them
/// too) and the vdso: shared with every process on the machine.
fn mapped_by_pagewatch_too(v: &SmapsVma, own: &HashSet<u64>) -> bool {
    (v.inode != 0 && own.contains(&v.inode)) || v.name == "[vdso]"
}

fn own_inodes() -> HashSet<u64> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4)?.parse().ok())
        .filter(|i| *i != 0)
        .collect()
}

/// Fields that need PMD mappings (PAGEMAP_SCAN, 6.7+).
const PMD_FIELDS: [&str; 3] = ["AnonHugePages", "ShmemPmdMapped", "FilePmdMapped"];

/// pagewatch's note on a process report when PMD mappings are unknown
/// (no PAGEMAP_SCAN: kernels before 6.7); those fields are then null.
fn pmd_unknown(process: &Value) -> Option<String> {
    process["notes"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find(|n| n.contains("PAGEMAP_SCAN is unavailable"))
        .map(str::to_owned)
}

fn snapshot_json(args: &[&str]) -> Value {
    let (status, out, err) = run_pagewatch(args);
    assert!(status.success(), "pagewatch {args:?} failed: {err}");
    assert!(!err.contains("panicked"), "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}): {out}"))
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("gave up waiting for {what}");
    false
}

fn vma_at(vmas: &[SmapsVma], start: u64) -> &SmapsVma {
    vmas.iter()
        .find(|v| v.start == start)
        .expect("region VMA in smaps")
}

/// Exclusive PMD-mapped THPs (a process that never forked) are accounted
/// per folio: one folded entry per 2 MiB, only the head's kpage entries
/// read. That VMA must still equal smaps field by field, and its folios be
/// PMD-mapped, aligned 2 MiB ones.
/// A pw-hold process with `mib` MiB written (`thp` or `nothp`): its big
/// VMA as pagewatch reports it (read in several batches on two threads)
/// and as smaps does, every field compared; None (after saying why) when
/// the test cannot run.
fn big_vma_equals_smaps(test: &str, mib: &str, mode: &str) -> Option<(Value, SmapsVma)> {
    if skip_unless_root(test) {
        return None;
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pw-hold"));
    cmd.args([mib, mode]);
    let w = Layout::spawn(cmd);
    let pid = w.pid.to_string();
    let j = snapshot_json(&["snapshot", "--pid", &pid, "--vma", "--format", "json"]);
    if let Some(note) = pmd_unknown(&j["processes"][0]) {
        skip(test, &note);
        return None;
    }
    let bytes = mib.parse::<u64>().unwrap() << 20;
    let sm = smaps(w.pid);
    let s = sm
        .into_iter()
        .find(|s| s.kb["Rss"] << 10 >= bytes)
        .expect("pw-hold's written mapping in smaps");
    let v = j["processes"][0]["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["start"] == format!("{:x}", s.start).as_str())
        .expect("the big VMA in pagewatch's report")
        .clone();
    let mut compared = 0;
    for (smaps_name, ours) in FIELDS {
        if let Some(expect) = s.kb.get(smaps_name) {
            assert_eq!(
                v["usage"][ours].as_u64(),
                Some(*expect),
                "{smaps_name} of the big VMA (smaps {expect})"
            );
            compared += 1;
        }
    }
    assert!(compared >= 10, "compared only {compared} fields");
    assert_eq!(
        v["usage"]["exclusive_pages"].as_u64(),
        Some(s.kb["Rss"] / 4)
    );
    // Every page's memory cgroup was read: they add up to Rss, all in the
    // process's own memory cgroup (v1 controller line of /proc/PID/cgroup).
    let memcg = v["memcg"].as_object().expect("memcg per VMA");
    let total: u64 = memcg.values().map(|kb| kb.as_u64().unwrap()).sum();
    assert_eq!(total, s.kb["Rss"], "memcg kB of the big VMA: {memcg:?}");
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(':')?;
            let (ctrl, path) = rest.split_once(':')?;
            ctrl.split(',')
                .any(|c| c == "memory")
                .then(|| path.to_owned())
        });
    if let Some(own) = own {
        assert_eq!(memcg.keys().collect::<Vec<_>>(), [&own], "{memcg:?}");
    }
    Some((v, s))
}

#[test]
fn exclusive_thp_accounted_per_folio_equals_smaps() {
    let test = "exclusive_thp_accounted_per_folio_equals_smaps";
    let Some((v, s)) = big_vma_equals_smaps(test, "64", "thp") else {
        return;
    };
    if s.kb["AnonHugePages"] < 2048 {
        return skip(test, "the MADV_HUGEPAGE region got no PMD THP");
    }
    let thp_bytes = s.kb["AnonHugePages"] << 10;
    let f = &v["folios"]["anon"]["2048"];
    assert_eq!(f["folios"].as_u64(), Some(thp_bytes >> 21), "{f}");
    assert_eq!(f["pmd_mapped"].as_u64(), Some(thp_bytes), "{f}");
    assert_eq!(f["aligned"].as_u64(), Some(thp_bytes), "{f}");
}

#[test]
fn big_vma_of_4k_pages_read_on_two_threads_equals_smaps() {
    let test = "big_vma_of_4k_pages_read_on_two_threads_equals_smaps";
    // 200 MiB: several batches, the last one short.
    let Some((v, s)) = big_vma_equals_smaps(test, "200", "nothp") else {
        return;
    };
    assert_eq!(s.kb["AnonHugePages"], 0);
    assert_eq!(v["usage"]["rss"].as_u64(), Some(200 << 10));
}

#[test]
fn every_vma_and_the_rollup_equal_smaps() {
    let test = "every_vma_and_the_rollup_equal_smaps";
    if skip_unless_root(test) {
        return;
    }
    let pool = reserve_hugetlb(2);
    let hugetlb = pool.is_some();
    if !hugetlb {
        skip(
            &format!("{test} (hugetlb part)"),
            "cannot grow the 2 MiB hugetlb pool",
        );
    }
    let ksm_bug = kpageflags_ksm_bug();
    let ksm_knobs = if ksm_bug.is_some() {
        None
    } else {
        Knobs::set(&[
            ("/sys/kernel/mm/ksm/pages_to_scan", "5000"),
            ("/sys/kernel/mm/ksm/sleep_millisecs", "10"),
            ("/sys/kernel/mm/ksm/run", "1"),
        ])
    };
    let ksm = ksm_knobs.is_some();
    if !ksm {
        skip(
            &format!("{test} (KSM part)"),
            ksm_bug
                .as_deref()
                .unwrap_or("no /sys/kernel/mm/ksm (CONFIG_KSM off)"),
        );
    }
    let file = std::env::temp_dir().join(format!("pw-layout-{}.dat", std::process::id()));
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 + 3) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    std::fs::File::open(&file).unwrap().sync_all().unwrap();
    let mut args = vec!["--file", file.to_str().unwrap()];
    if hugetlb {
        args.push("--hugetlb");
    }
    if ksm {
        args.push("--ksm");
    }
    let w = Layout::start(&args, None);
    let _ = std::fs::remove_file(&file);
    let pid = w.pid;

    // Confirm the layout with the kernel before comparing anything.
    let before = smaps(pid);
    let thp = vma_at(&before, w.regions["thp"]);
    if thp.kb["AnonHugePages"] != 2048 {
        skip(
            &format!("{test} (THP part)"),
            "the MADV_HUGEPAGE region got no PMD THP",
        );
    }
    if ksm {
        // smaps has a KSM field from 6.6; ksm_merging_pages (5.19+) counts
        // the process's merged pages on older kernels.
        let start = w.regions["ksm"];
        let merging = format!("/proc/{pid}/ksm_merging_pages");
        assert!(
            wait_for("KSM merge", Duration::from_secs(20), || {
                match vma_at(&smaps(pid), start).kb.get("KSM") {
                    Some(kb) => *kb > 0,
                    None => std::fs::read_to_string(&merging)
                        .is_ok_and(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0)),
                }
            }),
            "KSM never merged the identical pages"
        );
    }
    if hugetlb {
        assert_eq!(
            vma_at(&before, w.regions["hugetlb"]).kb["Private_Hugetlb"],
            2048
        );
    }

    let j = snapshot_json(&[
        "snapshot",
        "--pid",
        &pid.to_string(),
        "--vma",
        "--format",
        "json",
    ]);
    let sm = smaps(pid);
    let roll = rollup(pid);
    let p = &j["processes"][0];
    assert_eq!(p["pfns_visible"], true);
    assert_eq!(p["partial"], false);
    let pmd_note = pmd_unknown(p);
    if let Some(note) = &pmd_note {
        skip(&format!("{test} (PMD-mapped fields)"), note);
    }
    let own = own_inodes();
    let vmas = p["vmas"].as_array().unwrap();
    let mut compared = 0;
    let mut affected = HashSet::new();
    let mut mismatches = Vec::new();
    for v in vmas {
        let start = u64::from_str_radix(v["start"].as_str().unwrap(), 16).unwrap();
        let Some(s) = sm.iter().find(|s| s.start == start) else {
            continue;
        };
        let skip_sharing = mapped_by_pagewatch_too(s, &own);
        if skip_sharing {
            affected.insert(start);
        }
        for (smaps_name, ours) in FIELDS {
            if skip_sharing && SHARING.contains(&smaps_name) {
                continue;
            }
            let Some(expect) = s.kb.get(smaps_name) else {
                continue;
            };
            if pmd_note.is_some() && PMD_FIELDS.contains(&smaps_name) {
                assert!(v["usage"][ours].is_null(), "{smaps_name} unknown: {v}");
                continue;
            }
            if v["usage"][ours].as_u64() != Some(*expect) {
                mismatches.push(format!(
                    "{smaps_name} of VMA {:x} {}: pagewatch {}, smaps {expect}\n  smaps: {:?}\n  pagewatch: {}",
                    s.start, s.name, v["usage"][ours], s.kb, v["usage"]
                ));
            }
            compared += 1;
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    assert_eq!(vmas.len(), sm.len(), "one report per VMA");
    assert!(compared > 100, "compared only {compared} fields");

    // Totals equal smaps_rollup exactly, except the fields pagewatch's own
    // library mappings change: those equal the smaps sums over the other VMAs.
    let is_affected = |v: &Value| {
        affected.contains(&u64::from_str_radix(v["start"].as_str().unwrap(), 16).unwrap())
    };
    for (smaps_name, ours) in FIELDS {
        let Some(expect) = roll.get(smaps_name) else {
            continue;
        };
        if pmd_note.is_some() && PMD_FIELDS.contains(&smaps_name) {
            assert!(p["total"][ours].is_null(), "{smaps_name} unknown");
            continue;
        }
        if !SHARING.contains(&smaps_name) {
            assert_eq!(
                p["total"][ours].as_u64(),
                Some(*expect),
                "rollup {smaps_name}"
            );
            continue;
        }
        if smaps_name == "Pss_File" {
            continue; // not printed per VMA
        }
        let ours_rest: u64 = vmas
            .iter()
            .filter(|v| !is_affected(v))
            .map(|v| v["usage"][ours].as_u64().unwrap())
            .sum();
        let smaps_rest: u64 = sm
            .iter()
            .filter(|s| !affected.contains(&s.start))
            .map(|s| s.kb.get(smaps_name).copied().unwrap_or(0))
            .sum();
        assert_eq!(
            ours_rest, smaps_rest,
            "{smaps_name} summed over VMAs not mapped by pagewatch"
        );
    }

    // The VMA list is the same read with PROCMAP_QUERY (6.11+) and from
    // the maps text, and the report says which was used.
    let text = snapshot_json(&[
        "snapshot",
        "--pid",
        &pid.to_string(),
        "--vma",
        "--maps-text",
        "--format",
        "json",
    ]);
    let tp = &text["processes"][0];
    assert_eq!(tp["vma_source"], "maps_text");
    let ioctl_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .split(['.', '-'])
        .take(2)
        .map(|x| x.parse::<u32>().unwrap_or(0))
        .collect::<Vec<_>>()
        >= vec![6, 11];
    if ioctl_kernel {
        assert_eq!(p["vma_source"], "procmap_query");
    } else {
        assert_eq!(p["vma_source"], "maps_text");
    }
    let list = |vs: &[serde_json::Value]| -> Vec<String> {
        vs.iter()
            .map(|v| format!("{} {} {} {}", v["start"], v["end"], v["perms"], v["name"]))
            .collect()
    };
    assert_eq!(list(vmas), list(tp["vmas"].as_array().unwrap()));

    // The layout's own regions, named.
    let by_start = |name: &str| {
        let s = format!("{:x}", w.regions[name]);
        vmas.iter()
            .find(|v| v["start"] == s.as_str())
            .unwrap()
            .clone()
    };
    let zero = by_start("zero");
    assert_eq!(zero["usage"]["rss"], 0);
    assert_eq!(zero["usage"]["zero_pages"], 256);
    let file_vma = by_start("file");
    assert_eq!(file_vma["usage"]["rss"], 1024);
    assert!(file_vma["usage"]["shared_dirty"].as_u64().unwrap() >= 4);
    if thp.kb["AnonHugePages"] == 2048 && pmd_note.is_none() {
        let f = &by_start("thp")["folios"]["anon"]["2048"];
        assert_eq!(f["pmd_mapped"], 2 << 20, "{f}");
        assert_eq!(f["aligned"], 2 << 20, "{f}");
    }
    if hugetlb {
        assert_eq!(by_start("hugetlb")["hugetlb_by_size"]["2048"], 2048);
    }
    if ksm {
        assert!(by_start("ksm")["usage"]["ksm"].as_u64().unwrap() > 0);
    }
    assert!(p["memcg"].as_object().is_some_and(|m| !m.is_empty()));
}

#[test]
fn system_census_covers_every_pfn_and_counts_hugetlb_heads() {
    let test = "system_census_covers_every_pfn_and_counts_hugetlb_heads";
    if skip_unless_root(test) {
        return;
    }
    let Some(_pool) = reserve_hugetlb(3) else {
        skip(test, "cannot grow the 2 MiB hugetlb pool");
        return;
    };
    // Oracle: end of memory from zoneinfo, computed here independently.
    let zi = std::fs::read_to_string("/proc/zoneinfo").unwrap();
    let mut end = 0u64;
    let mut spanned = 0u64;
    for l in zi.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["spanned", v] => spanned = v.parse().unwrap(),
            ["start_pfn:", v] if spanned > 0 => end = end.max(v.parse::<u64>().unwrap() + spanned),
            _ => {}
        }
    }
    let j = snapshot_json(&["snapshot", "--system", "--format", "json"]);
    let c = &j["system"]["census"];
    let read = c["pfns_read"].as_u64().unwrap();
    assert!(read >= end, "read {read} PFNs, memory ends at {end}");
    let sum: u64 = c["combos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["pages"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, read, "every PFN read is in exactly one combination");

    let pools: u64 = std::fs::read_dir("/sys/kernel/mm/hugepages")
        .unwrap()
        .flatten()
        .map(|e| {
            let nr: u64 = std::fs::read_to_string(e.path().join("nr_hugepages"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            nr
        })
        .sum();
    let j = snapshot_json(&[
        "snapshot",
        "--flags",
        "huge,compound_head",
        "--format",
        "json",
    ]);
    let heads = j["system"]["census"]["matched_pages"].as_u64().unwrap();
    assert_eq!(heads, pools, "hugetlb heads vs sysfs nr_hugepages");
    let pool = j["system"]["state"]["hugetlb"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["size_kb"] == 2048 && p["node"].is_null())
        .unwrap()
        .clone();
    assert_eq!(
        pool["nr"].as_u64().unwrap(),
        std::fs::read_to_string(HUGETLB_2M)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    );
}

#[test]
fn flag_filter_and_list_name_the_owner() {
    let test = "flag_filter_and_list_name_the_owner";
    if skip_unless_root(test) {
        return;
    }
    let Some(_pool) = reserve_hugetlb(1) else {
        skip(test, "cannot grow the 2 MiB hugetlb pool");
        return;
    };
    let w = Layout::start(&["--hugetlb"], None);
    let pid = w.pid.to_string();
    let j = snapshot_json(&[
        "snapshot",
        "--pid",
        &pid,
        "--flags",
        "huge,compound_head",
        "--list",
        "--format",
        "json",
    ]);
    for k in j["system"]["census"]["combos"].as_array().unwrap() {
        let f = k["flags"].as_u64().unwrap();
        assert!(f & (1 << 17) != 0 && f & (1 << 15) != 0, "{k}");
    }
    let owner = format!("{}@{:x}", w.pid, w.regions["hugetlb"]);
    let listed = j["system"]["list"].as_array().unwrap();
    assert!(
        listed.iter().any(|r| r["owners"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == owner.as_str())),
        "no listed run is owned by {owner}: {listed:?}"
    );
    let j = snapshot_json(&[
        "snapshot",
        "--flags",
        "thp,~compound_tail",
        "--format",
        "json",
    ]);
    for k in j["system"]["census"]["combos"].as_array().unwrap() {
        let f = k["flags"].as_u64().unwrap();
        assert!(f & (1 << 22) != 0 && f & (1 << 16) == 0, "{k}");
    }
}

#[test]
fn process_exiting_mid_scan_gives_a_partial_result() {
    let test = "process_exiting_mid_scan_gives_a_partial_result";
    if skip_unless_root(test) {
        return;
    }
    let w = Layout::start(&["--vmas", "2000"], None);
    // 2000 VMAs at a 1 ms pause each: the scan takes over 2 s. Kill the
    // workload as soon as pagewatch has opened its pagemap (whatever the
    // machine's speed: under TCG, starting pagewatch alone takes longer
    // than a fixed delay would allow).
    let pw = Command::new(pagewatch_bin())
        .args([
            "snapshot",
            "--pid",
            &w.pid.to_string(),
            "--pause-per-vma-ms",
            "1",
            "--format",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pagewatch");
    let pagemap = PathBuf::from(format!("/proc/{}/pagemap", w.pid));
    let opened = wait_for(
        "pagewatch to open the pagemap",
        Duration::from_secs(60),
        || {
            std::fs::read_dir(format!("/proc/{}/fd", pw.id()))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == pagemap))
        },
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(w.pid as i32, libc::SIGKILL) };
    let out = pw.wait_with_output().expect("wait for pagewatch");
    assert!(opened, "pagewatch never opened {}", pagemap.display());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pagewatch failed: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let j: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let p = &j["processes"][0];
    assert_eq!(p["partial"], true, "{p}");
    assert!(
        j["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("exited during the scan"))
    );
}

#[test]
fn unknown_pid_is_one_clear_error() {
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = (pid_max + 1).to_string();
    let (status, out, err) = run_pagewatch(&["snapshot", "--pid", &pid]);
    assert!(!status.success());
    assert!(out.is_empty(), "{out}");
    assert!(err.contains(&format!("no process with pid {pid}")), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"));
    let (status, _, err) = run_pagewatch(&["snapshot", "--flags", "thp,bogus"]);
    assert!(!status.success());
    assert!(err.contains("unknown page flag \"bogus\""), "{err}");
}

#[test]
fn non_root_run_reports_what_it_can_and_says_why_once() {
    let test = "non_root_run_reports_what_it_can_and_says_why_once";
    if skip_unless_root(test) {
        return;
    }
    const NOBODY: u32 = 65534;
    let w = Layout::start(&[], Some(NOBODY));
    let out = Command::new(pagewatch_bin())
        .args([
            "snapshot",
            "--pid",
            &w.pid.to_string(),
            "--vma",
            "--format",
            "json",
        ])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .output()
        .expect("spawn pagewatch as nobody");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    let notes: Vec<&str> = j["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(
        notes.iter().filter(|n| n.contains("needs root")).count(),
        1,
        "{notes:?}"
    );
    let p = &j["processes"][0];
    assert_eq!(p["pfns_visible"], false);
    assert!(p["total"]["pss"].is_null());
    let roll = rollup(w.pid);
    // Rss degrades to every present PTE: smaps' Rss plus the zero-page
    // mappings (1 MiB region) and PFN mappings such as [vvar]. smaps is
    // read after the snapshot; about one run in four the workload has one
    // more page (4 kB) by then, so one page of slack.
    let rss = p["total"]["rss"].as_u64().unwrap();
    assert!(
        rss + 4 >= roll["Rss"] + 1024,
        "rss {rss} vs smaps {}",
        roll["Rss"]
    );
    assert_eq!(p["total"]["swap"].as_u64(), Some(roll["Swap"]));
    match pmd_unknown(p) {
        Some(_) => assert!(p["total"]["anon_huge_pages"].is_null()),
        None => assert_eq!(
            p["total"]["anon_huge_pages"].as_u64(),
            Some(roll["AnonHugePages"])
        ),
    }
    let anon = format!("{:x}", w.regions["anon"]);
    let v = p["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["start"] == anon.as_str())
        .unwrap();
    assert_eq!(v["usage"]["rss"], 4096);
    assert_eq!(
        v["usage"]["uss"], 4096,
        "exclusive pages are known without PFNs"
    );
}

#[test]
fn working_set_reports_referenced_pages_and_missing_mechanisms() {
    let test = "working_set_reports_referenced_pages_and_missing_mechanisms";
    if skip_unless_root(test) {
        return;
    }
    let w = Layout::start(&[], None);
    let j = snapshot_json(&[
        "snapshot",
        "--pid",
        &w.pid.to_string(),
        "--working-set",
        "300ms",
        "--format",
        "json",
    ]);
    let ws = &j["working_set"][0];
    let anon = format!("{:x}", w.regions["anon"]);
    let v = ws["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["start"] == anon.as_str())
        .unwrap();
    // The workload sleeps on stdin: nothing in its anon region was touched.
    assert_eq!(v["rss_kb"], 4096);
    assert_eq!(v["referenced_kb"], 0, "{v}");
    let notes = ws["notes"].to_string();
    if !std::path::Path::new("/sys/kernel/mm/page_idle/bitmap").exists() {
        assert!(notes.contains("idle page tracking is missing"), "{notes}");
        assert!(v["accessed_idle_kb"].is_null());
    }
}

/// A tmpfs mounted `huge=always` (its files in PMD-sized folios), lazily
/// unmounted on drop.
struct HugeTmpfs(PathBuf);

impl HugeTmpfs {
    fn mount() -> Option<Self> {
        let path = std::env::temp_dir().join(format!("pw-hugetmpfs-{}", std::process::id()));
        std::fs::create_dir_all(&path).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "huge=always,size=16m", "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::fs::remove_dir(&path);
        }
        ok.then_some(Self(path))
    }
}

impl Drop for HugeTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Every VMA's smaps fields (and the rollup) of `pids`, for telling
/// whether anything changed while pagewatch read them.
fn smaps_state(pids: &[u32]) -> Vec<(u64, Vec<(String, u64)>)> {
    let mut out = Vec::new();
    for &pid in pids {
        for v in smaps(pid) {
            let mut kb: Vec<(String, u64)> = v.kb.into_iter().collect();
            kb.sort();
            out.push((v.start, kb));
        }
        let mut kb: Vec<(String, u64)> = rollup(pid).into_iter().collect();
        kb.sort();
        out.push((u64::MAX, kb));
    }
    out
}

/// Field-by-field differences between pagewatch's report of `pids` and
/// smaps / smaps_rollup, keyed `pid VMA field`.
fn differences_from_smaps(j: &Value, pids: &[u32]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for &pid in pids {
        let p = j["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .expect("process in the report");
        assert_eq!(p["partial"], false);
        let pmd_note = pmd_unknown(p);
        let sm = smaps(pid);
        let vmas = p["vmas"].as_array().unwrap();
        assert_eq!(vmas.len(), sm.len(), "one report per VMA");
        for (v, s) in vmas.iter().zip(&sm) {
            assert_eq!(v["start"], format!("{:x}", s.start).as_str());
            for (smaps_name, ours) in FIELDS {
                let Some(expect) = s.kb.get(smaps_name) else {
                    continue;
                };
                if pmd_note.is_some() && PMD_FIELDS.contains(&smaps_name) {
                    continue;
                }
                if v["usage"][ours].as_u64() != Some(*expect) {
                    out.push((
                        format!("{pid} {:x} {} {smaps_name}", s.start, s.name),
                        format!("pagewatch {}, smaps {expect}", v["usage"][ours]),
                    ));
                }
            }
        }
        let roll = rollup(pid);
        for (smaps_name, ours) in FIELDS {
            let Some(expect) = roll.get(smaps_name) else {
                continue;
            };
            if pmd_note.is_some() && PMD_FIELDS.contains(&smaps_name) {
                continue;
            }
            if p["total"][ours].as_u64() != Some(*expect) {
                out.push((
                    format!("{pid} rollup {smaps_name}"),
                    format!("pagewatch {}, smaps_rollup {expect}", p["total"][ours]),
                ));
            }
        }
    }
    out
}

/// Two stopped processes share the system's libc and libm (dlopen) and
/// two files, one on a `huge=always` tmpfs (PMD-sized folios) and one on
/// the temp directory's filesystem (large folios where it has them): the
/// first maps each file whole, the second as two VMAs cut inside a folio.
/// Every VMA's Pss and sharing fields, and the rollup's Pss_Anon/File/Shmem,
/// equal smaps read just before and after pagewatch (pagewatch's own
/// mappings of libc and libm are not counted, as smaps read without it
/// does not count them). Other processes starting or exiting meanwhile
/// change shared pages' mapcounts: a read is used only when smaps was the
/// same before and after it, and a difference counts only when it repeats
/// in two such reads.
#[test]
fn shared_libraries_and_large_file_folios_pss_equals_smaps() {
    let test = "shared_libraries_and_large_file_folios_pss_equals_smaps";
    if skip_unless_root(test) {
        return;
    }
    const MIB: usize = 1 << 20;
    let tmpfs = HugeTmpfs::mount();
    if tmpfs.is_none() {
        skip(
            &format!("{test} (tmpfs part)"),
            "cannot mount a huge=always tmpfs",
        );
    }
    let data: Vec<u8> = (0..4 * MIB).map(|i| (i * 13 + 1) as u8).collect();
    let mut files = vec![std::env::temp_dir().join(format!("pw-maps-{}.dat", std::process::id()))];
    if let Some(t) = &tmpfs {
        files.push(t.0.join("big.dat"));
    }
    for f in &files {
        std::fs::write(f, &data).unwrap();
    }
    let spawn = |split: Option<usize>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pw-maps"));
        cmd.args(["--lib", "libm.so.6"]);
        for f in &files {
            let spec = match split {
                Some(s) => format!("{}@{s}", f.display()),
                None => f.display().to_string(),
            };
            cmd.args(["--map", &spec]);
        }
        Layout::spawn(cmd)
    };
    // 1 MiB + 64 KiB: inside the second half of a 2 MiB folio and of any
    // smaller large folio from 128 KiB up.
    let (a, b) = (spawn(None), spawn(Some(MIB + 64 * 1024)));
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    let pids = [a.pid, b.pid];
    for pid in pids {
        // SAFETY: stopping our own child; SIGKILL on drop still ends it.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
    }
    assert!(
        wait_for("both workloads stopped", Duration::from_secs(10), || {
            pids.iter().all(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                    s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('T')
                })
            })
        }),
        "SIGSTOP did not stop the workloads"
    );
    let mut args = vec!["snapshot", "--vma", "--format", "json"];
    let pid_args: Vec<String> = pids.iter().map(u32::to_string).collect();
    for p in &pid_args {
        args.extend(["--pid", p.as_str()]);
    }
    let mut stable: Vec<(Value, Vec<(String, String)>)> = Vec::new();
    for _ in 0..20 {
        let before = smaps_state(&pids);
        let j = snapshot_json(&args);
        if smaps_state(&pids) != before {
            eprintln!(
                "{test}: smaps changed while pagewatch read it (other processes map the same libraries); reading again"
            );
            continue;
        }
        let diffs = differences_from_smaps(&j, &pids);
        stable.push((j, diffs));
        if stable.len() == 2 {
            break;
        }
    }
    assert_eq!(stable.len(), 2, "smaps never held still across a read");
    let repeated: Vec<String> = stable[1]
        .1
        .iter()
        .filter(|(k, _)| stable[0].1.iter().any(|(k0, _)| k0 == k))
        .map(|(k, d)| format!("{k}: {d}"))
        .collect();
    assert!(
        repeated.is_empty(),
        "differences from smaps:\n{}",
        repeated.join("\n")
    );

    // The layout is what it should be: libm and libc shared by both, each
    // file split in the second; and what large folios the kernel gave.
    let j = &stable[1].0;
    for (pid, split) in [(a.pid, false), (b.pid, true)] {
        let p = j["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .unwrap();
        let vmas = p["vmas"].as_array().unwrap();
        for lib in ["/libc.so.6", "/libm.so.6"] {
            assert!(
                vmas.iter()
                    .any(|v| v["name"].as_str().unwrap().ends_with(lib)
                        && v["usage"]["rss"].as_u64().unwrap() > 0),
                "{lib} mapped and resident in {pid}"
            );
        }
        for f in &files {
            let name = f.display().to_string();
            let mine: Vec<&Value> = vmas
                .iter()
                .filter(|v| v["name"].as_str().unwrap().starts_with(&name))
                .collect();
            assert_eq!(mine.len(), if split { 2 } else { 1 }, "VMAs of {name}");
            let rss: u64 = mine
                .iter()
                .map(|v| v["usage"]["rss"].as_u64().unwrap())
                .sum();
            assert_eq!(rss, 4 << 10, "all of {name} resident in {pid}");
            let folios: Vec<String> = mine
                .iter()
                .map(|v| v["folios"]["file"].to_string())
                .collect();
            eprintln!("{test}: {name} in {pid}: file folios {folios:?}");
        }
    }
}
