//! Integration tests of `pagewatch map` against the running kernel, with
//! the kernel's own totals as oracles: /proc/buddyinfo (free blocks per
//! order and zone, read right before and after the map), /proc/pagetypeinfo
//! (pageblocks per zone), the per-node hugetlb pools in sysfs (grown for
//! the test and restored on drop), this process's pagemap (owners), and
//! kernel memory the test holds itself (pipe buffers).

use std::{collections::HashMap, fs::File, os::unix::fs::FileExt as _};

use pagewatch_tests::{
    grow_hugetlb_pool, map_anon_4k, read_u64, run_pagewatch, skip, skip_unless_root,
};
use serde_json::Value;

/// `pagewatch map --format json ARGS`, parsed.
fn map(args: &[&str]) -> Value {
    let mut all = vec!["map", "--format", "json"];
    all.extend_from_slice(args);
    let (status, out, err) = run_pagewatch(&all);
    assert!(status.success(), "pagewatch map failed: {err}");
    serde_json::from_str(&out).expect("map JSON")
}

/// /proc/buddyinfo: (node, zone) → free blocks per order.
fn buddyinfo() -> HashMap<(u64, String), Vec<u64>> {
    std::fs::read_to_string("/proc/buddyinfo")
        .expect("read /proc/buddyinfo")
        .lines()
        .filter_map(|l| {
            let (node, rest) = l.strip_prefix("Node")?.split_once(',')?;
            let mut it = rest.split_whitespace();
            it.next(); // "zone"
            let zone = it.next()?.to_string();
            Some((
                (node.trim().parse().ok()?, zone),
                it.map(|v| v.parse().unwrap()).collect(),
            ))
        })
        .collect()
}

/// /proc/pagetypeinfo's pageblocks per (node, zone), summed over types.
fn pagetypeinfo_blocks() -> HashMap<(u64, String), u64> {
    let text = std::fs::read_to_string("/proc/pagetypeinfo").expect("read /proc/pagetypeinfo");
    let mut out = HashMap::new();
    let mut on = false;
    for l in text.lines() {
        if l.starts_with("Number of blocks type") {
            on = true;
            continue;
        }
        let Some((node, rest)) = l.strip_prefix("Node").and_then(|r| r.split_once(',')) else {
            continue;
        };
        if !on {
            continue;
        }
        let mut it = rest.split_whitespace();
        it.next();
        let zone = it.next().unwrap().to_string();
        let key = (node.trim().parse().unwrap(), zone);
        if out.contains_key(&key) {
            break;
        }
        out.insert(key, it.map(|v| v.parse::<u64>().unwrap()).sum());
    }
    out
}

fn zone_key(z: &Value) -> (u64, String) {
    (
        z["node"].as_u64().unwrap(),
        z["name"].as_str().unwrap().to_string(),
    )
}

/// Free blocks per order and pageblocks per zone equal the kernel's own
/// totals. The map reads memory that changes while it reads; the test
/// reads buddyinfo right before and after it, and the map's free pages may
/// leave the bracket the two reads span by no more than the pages that
/// changed between them (in a zone nothing touched, such as DMA32 on an
/// idle machine, that is exactly zero).
#[test]
fn map_free_blocks_and_pageblocks_match_buddyinfo_and_pagetypeinfo() {
    let name = "map_free_blocks_and_pageblocks_match_buddyinfo_and_pagetypeinfo";
    if skip_unless_root(name) {
        return;
    }
    let (pt0, b0) = (pagetypeinfo_blocks(), buddyinfo());
    let m = map(&[]);
    let (b1, pt1) = (buddyinfo(), pagetypeinfo_blocks());
    let zones = m["zones"].as_array().unwrap();
    assert!(!zones.is_empty(), "no zones in {m}");
    for z in zones {
        let key = zone_key(z);
        let blocks = z["blocks"].as_u64().unwrap();
        let (lo, hi) = (pt0[&key].min(pt1[&key]), pt0[&key].max(pt1[&key]));
        assert!(
            (lo..=hi).contains(&blocks),
            "{key:?}: {blocks} pageblocks, pagetypeinfo says {lo}..={hi}"
        );
        let ours: Vec<u64> = z["free_by_order"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let (before, after) = (&b0[&key], &b1[&key]);
        assert_eq!(ours.len(), before.len(), "{key:?}: orders");
        let mut churn = 0;
        let mut outside = 0;
        for o in 0..ours.len() {
            let (lo, hi) = (before[o].min(after[o]), before[o].max(after[o]));
            churn += (hi - lo) << o;
            outside += (lo.saturating_sub(ours[o]) + ours[o].saturating_sub(hi)) << o;
        }
        eprintln!(
            "{key:?}: free per order {ours:?}, buddyinfo {before:?} .. {after:?}: {outside} pages outside, churn {churn}"
        );
        assert!(
            outside <= churn,
            "{key:?}: free blocks per order {ours:?} leave buddyinfo's bracket {before:?} .. {after:?} by {outside} pages, more than the {churn} pages that changed"
        );
        // Every page of the zone's blocks is in one class.
        let pages: u64 = z["pages"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        let in_zone = m["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["node"] == z["node"] && b["zone"] == z["name"])
            .count() as u64;
        assert_eq!(pages, in_zone * m["pages_per_block"].as_u64().unwrap());
    }
}

/// Total 2 MiB blocks of hugetlb pages on each node per sysfs.
fn hugetlb_blocks_per_node() -> HashMap<u64, u64> {
    let mut out = HashMap::new();
    let Ok(nodes) = std::fs::read_dir("/sys/devices/system/node") else {
        return out;
    };
    for n in nodes.flatten() {
        let Some(node) = n
            .file_name()
            .to_str()
            .and_then(|s| s.strip_prefix("node")?.parse::<u64>().ok())
        else {
            continue;
        };
        let Ok(sizes) = std::fs::read_dir(n.path().join("hugepages")) else {
            continue;
        };
        for s in sizes.flatten() {
            let kb: u64 = s
                .file_name()
                .to_str()
                .and_then(|x| {
                    x.strip_prefix("hugepages-")?
                        .strip_suffix("kB")?
                        .parse()
                        .ok()
                })
                .unwrap();
            let nr = read_u64(s.path().join("nr_hugepages").to_str().unwrap()).unwrap();
            *out.entry(node).or_default() += nr * kb / 2048;
        }
    }
    out
}

/// After growing node 0's 2 MiB hugetlb pool, the blocks the map calls
/// hugetlb on each node equal sysfs's per-node pools.
#[test]
fn map_hugetlb_blocks_per_node_equal_sysfs_pools() {
    let name = "map_hugetlb_blocks_per_node_equal_sysfs_pools";
    if skip_unless_root(name) {
        return;
    }
    let pool = "/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages";
    let Some(_guard) = grow_hugetlb_pool(pool, 8) else {
        return skip(name, "cannot grow node 0's 2 MiB hugetlb pool by 8 pages");
    };
    let m = map(&[]);
    let want = hugetlb_blocks_per_node();
    assert!(want[&0] >= 8, "pool did not grow: {want:?}");
    let mut got: HashMap<u64, u64> = HashMap::new();
    for b in m["blocks"].as_array().unwrap() {
        if b["verdict"] == "hugetlb" {
            *got.entry(b["node"].as_u64().unwrap()).or_default() += 1;
        }
    }
    for (node, n) in &want {
        assert_eq!(
            got.get(node).copied().unwrap_or(0),
            *n,
            "node {node}: hugetlb blocks in the map vs sysfs pools"
        );
    }
}

/// Kernel pages in blocked blocks, by the map's block classes.
fn blocked_kernel_pages(m: &Value) -> u64 {
    m["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["verdict"] == "blocked")
        .map(|b| b["pages"]["kernel"].as_u64().unwrap_or(0))
        .sum()
}

/// Pipes filled and left unread hold their buffers as kernel pages
/// without any page flags: the blocks they land in are blocked, with the
/// `kernel` class, and they leave when the pipes are closed.
#[test]
fn map_unread_pipe_buffers_block_their_pageblocks() {
    let name = "map_unread_pipe_buffers_block_their_pageblocks";
    if skip_unless_root(name) {
        return;
    }
    const PIPES: usize = 256;
    const SIZE: usize = 1 << 20;
    let before = blocked_kernel_pages(&map(&[]));
    let chunk = vec![0x5au8; SIZE];
    let mut fds = Vec::new();
    for _ in 0..PIPES {
        let mut p = [0i32; 2];
        // SAFETY: pipe2 fills the two-element array; fcntl and write get
        // the descriptors it returned and a buffer of `SIZE` bytes.
        unsafe {
            assert_eq!(libc::pipe2(p.as_mut_ptr(), libc::O_NONBLOCK), 0, "pipe2");
            assert!(libc::fcntl(p[1], libc::F_SETPIPE_SZ, SIZE as i32) >= SIZE as i32);
            assert_eq!(
                libc::write(p[1], chunk.as_ptr().cast(), SIZE),
                SIZE as isize,
                "filling a pipe"
            );
        }
        fds.extend(p);
    }
    let filled = blocked_kernel_pages(&map(&[]));
    for fd in fds {
        // SAFETY: closing descriptors this test opened.
        unsafe { libc::close(fd) };
    }
    let after = blocked_kernel_pages(&map(&[]));
    let held = (PIPES * SIZE / 4096) as u64;
    eprintln!(
        "kernel pages in blocked blocks: {before} -> {filled} (pipes hold {held}) -> {after}"
    );
    assert!(
        filled >= before + held * 9 / 10,
        "pipe buffers ({held} pages) did not show as kernel pages in blocked blocks: {before} -> {filled}"
    );
    assert!(
        filled >= after + held * 9 / 10,
        "closing the pipes did not free their blocks: {filled} -> {after}"
    );
}

/// PFNs of `pages` pages from `addr` in this process (None: not present).
fn own_pfns(addr: usize, pages: usize) -> Vec<Option<u64>> {
    let f = File::open("/proc/self/pagemap").expect("open pagemap");
    let mut buf = vec![0u8; pages * 8];
    f.read_exact_at(&mut buf, (addr / 4096 * 8) as u64)
        .expect("read pagemap");
    buf.chunks(8)
        .map(|c| {
            let e = u64::from_ne_bytes(c.try_into().unwrap());
            (e >> 63 == 1).then_some(e & ((1 << 55) - 1))
        })
        .collect()
}

/// `--owners` names this process for the blocks its anonymous pages fill.
#[test]
fn map_owners_name_the_process_mapping_a_block() {
    let name = "map_owners_name_the_process_mapping_a_block";
    if skip_unless_root(name) {
        return;
    }
    const LEN: usize = 64 << 20;
    let p = map_anon_4k(LEN);
    for i in (0..LEN).step_by(4096) {
        // SAFETY: inside the mapping just made.
        unsafe { p.add(i).write_volatile(1) };
    }
    let mut ours: HashMap<u64, u64> = HashMap::new();
    for pfn in own_pfns(p as usize, LEN / 4096).into_iter().flatten() {
        *ours.entry(pfn / 512 * 512).or_default() += 1;
    }
    let m = map(&["--owners"]);
    let pid = u64::from(std::process::id());
    let mut checked = 0;
    for b in m["blocks"].as_array().unwrap() {
        let Some(&n) = ours.get(&b["pfn"].as_u64().unwrap()) else {
            continue;
        };
        if n < 256 || !(b["verdict"] == "compactable" || b["verdict"] == "blocked") {
            continue;
        }
        let mine = b["owners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["pid"] == pid)
            .unwrap_or_else(|| panic!("block {b} holds {n} of our pages but does not name us"));
        assert!(
            mine["pages"].as_u64().unwrap() >= n,
            "{b}: we map {n} pages"
        );
        checked += 1;
    }
    eprintln!("{checked} blocks name this process");
    assert!(checked > 0, "no block held half of our 64 MiB: {ours:?}");
    // SAFETY: unmapping the mapping made above.
    unsafe { libc::munmap(p.cast(), LEN) };
}
