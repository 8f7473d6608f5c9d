//! Integration tests of `pagewatch map` against the running kernel, with
//! the kernel's own totals as oracles: /proc/buddyinfo (free blocks per
//! order and zone, read right before and after the map), /proc/pagetypeinfo
//! (pageblocks per zone), the per-node hugetlb pools in sysfs (grown for
//! the test and restored on drop), this process's pagemap (owners), and
//! kernel memory the test holds itself (pipe buffers).

use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::FileExt as _,
    sync::{Mutex, MutexGuard},
};

use pagewatch_tests::{
    grow_hugetlb_pool, map_anon_4k, read_u64, run_pagewatch, skip, skip_unless_root,
};
use serde_json::Value;

/// The tests of this file change what they measure (pools, pipes, 64 MiB
/// of anon memory): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

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
        // The next node's tables start with their own headers.
        if l.starts_with("Page block order") || l.starts_with("Free pages count") {
            on = false;
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
    let _serial = serial();
    let (pt0, b0) = (pagetypeinfo_blocks(), buddyinfo());
    let m = map(&[]);
    let (b1, pt1) = (buddyinfo(), pagetypeinfo_blocks());
    let zones = m["zones"].as_array().unwrap();
    assert!(!zones.is_empty(), "no zones in {m}");
    // Pages free page reporting holds off the free lists while the map
    // reads (see the compaction test below).
    let reported = page_reporting_pages(zones[0]["free_by_order"].as_array().unwrap().len());
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
        let (mut below, mut above) = (0, 0);
        for o in 0..ours.len() {
            let (lo, hi) = (before[o].min(after[o]), before[o].max(after[o]));
            churn += (hi - lo) << o;
            below += lo.saturating_sub(ours[o]) << o;
            above += ours[o].saturating_sub(hi) << o;
        }
        eprintln!(
            "{key:?}: free per order {ours:?}, buddyinfo {before:?} .. {after:?}: {below} pages below, {above} above, churn {churn}"
        );
        assert!(
            below.saturating_sub(reported) + above <= churn,
            "{key:?}: free blocks per order {ours:?} leave buddyinfo's bracket {before:?} .. {after:?} by {below} pages below and {above} above, more than the {churn} pages that changed (free page reporting may hide {reported})"
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
    let _serial = serial();
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

/// Kernel pages in blocked blocks, by the map's block classes, less the
/// free pages on per-CPU lists (flagless too, so `kernel`, and always in
/// blocked blocks), by /proc/zoneinfo read after the map's PFNs. Those
/// lists grow to tens of thousands of pages after a large free (47,104
/// per CPU at most on the development host), far more than the noise the
/// checks below allow.
fn blocked_kernel_pages(m: &Value) -> u64 {
    let kernel: u64 = m["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["verdict"] == "blocked")
        .map(|b| b["pages"]["kernel"].as_u64().unwrap_or(0))
        .sum();
    let pcp: u64 = m["zones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z["pcp_free_after"].as_u64().expect("pcp_free_after"))
        .sum();
    kernel.saturating_sub(pcp)
}

/// Pipes filled and left unread hold their buffers as kernel pages
/// without any page flags: the blocks they land in are blocked, with the
/// `kernel` class; closing the pipes frees them again.
#[test]
fn map_unread_pipe_buffers_block_their_pageblocks() {
    let name = "map_unread_pipe_buffers_block_their_pageblocks";
    if skip_unless_root(name) {
        return;
    }
    let _serial = serial();
    const PIPES: usize = 256;
    const SIZE: usize = 1 << 20;
    let held = (PIPES * SIZE / 4096) as u64;
    // Settled first: right after the test before it, kernel pages come and
    // go by tens of thousands (38,545 once in a CI run, against 7,700 at
    // rest); wait until two maps agree within 2 % of what the pipes hold.
    let mut before = blocked_kernel_pages(&map(&[]));
    for _ in 0..20 {
        let again = blocked_kernel_pages(&map(&[]));
        if again.abs_diff(before) < held / 50 {
            break;
        }
        eprintln!("kernel pages in blocked blocks not settled: {before} -> {again}");
        before = again;
    }
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
    eprintln!(
        "kernel pages in blocked blocks, less per-CPU free lists: {before} -> {filled} (pipes hold {held}) -> {after}"
    );
    // Three quarters: other kernel allocations and frees go on meanwhile,
    // and the per-CPU list counts are read a moment after the PFNs.
    assert!(
        filled >= before + held * 3 / 4,
        "pipe buffers ({held} pages) did not show as kernel pages in blocked blocks: {before} -> {filled}"
    );
    assert!(
        after + held * 3 / 4 <= filled,
        "closed pipes' buffers ({held} pages) stayed kernel pages in blocked blocks: {filled} -> {after}"
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

/// `len` bytes of 4 KiB anonymous pages, each written once.
fn written_4k(len: usize) -> *mut u8 {
    let p = map_anon_4k(len);
    for i in (0..len).step_by(4096) {
        // SAFETY: inside the mapping just made.
        unsafe { p.add(i).write_volatile(1) };
    }
    p
}

/// Pages of ours per pageblock (its first PFN) among the `len` bytes at `p`.
fn own_blocks(p: *mut u8, len: usize) -> HashMap<u64, u64> {
    let mut ours = HashMap::new();
    for pfn in own_pfns(p as usize, len / 4096).into_iter().flatten() {
        *ours.entry(pfn / 512 * 512).or_default() += 1;
    }
    ours
}

/// `--owners` names this process for the blocks that hold its anonymous
/// pages.
#[test]
fn map_owners_name_the_process_mapping_a_block() {
    let name = "map_owners_name_the_process_mapping_a_block";
    if skip_unless_root(name) {
        return;
    }
    let _serial = serial();
    const LEN: usize = 64 << 20;
    let p = written_4k(LEN);
    let ours = own_blocks(p, LEN);
    let m = map(&["--owners"]);
    let pid = u64::from(std::process::id());
    // Owners are listed for compactable and blocked blocks, at most 8 per
    // block, most pages first: wherever we hold pages, we are named unless
    // 8 others are, each with at least as many pages as we have there.
    // (How many of our pages share a block depends on how fragmented free
    // memory was: 1 to 65 of 512 after the rest of the suite.)
    let (mut named, mut crowded) = (0, 0);
    for b in m["blocks"].as_array().unwrap() {
        let Some(&n) = ours.get(&b["pfn"].as_u64().unwrap()) else {
            continue;
        };
        if !(b["verdict"] == "compactable" || b["verdict"] == "blocked") {
            continue;
        }
        let owners = b["owners"].as_array().unwrap();
        match owners.iter().find(|o| o["pid"] == pid) {
            Some(mine) => {
                assert!(
                    mine["pages"].as_u64().unwrap() >= n,
                    "{b}: we map {n} pages"
                );
                named += 1;
            }
            None => {
                assert!(
                    owners.len() == 8 && owners.iter().all(|o| o["pages"].as_u64().unwrap() >= n),
                    "block {b} holds {n} of our pages but does not name us"
                );
                crowded += 1;
            }
        }
    }
    eprintln!("{named} blocks name this process, {crowded} list 8 bigger owners");
    assert!(
        named > 0,
        "no compactable or blocked block named us ({} blocks hold our pages)",
        ours.len()
    );
    // SAFETY: unmapping the mapping made above.
    unsafe { libc::munmap(p.cast(), LEN) };
}

/// The SVG parses as XML: its size covers every cell, there is one cell
/// per block (the JSON's, same PFNs), each coloured as its own title's
/// verdict says, and a legend entry per verdict whose counts add up to the
/// cells.
#[test]
fn map_svg_has_one_cell_per_block_and_a_legend() {
    let name = "map_svg_has_one_cell_per_block_and_a_legend";
    if skip_unless_root(name) {
        return;
    }
    let _serial = serial();
    let m = map(&[]);
    let (status, svg, err) = run_pagewatch(&["map", "--format", "svg"]);
    assert!(status.success(), "pagewatch map --format svg failed: {err}");
    let doc = roxmltree::Document::parse(&svg).expect("the SVG is not well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    let dim = |n: roxmltree::Node, a: &str| -> u64 { n.attribute(a).unwrap().parse().unwrap() };
    let (w, h) = (dim(root, "width"), dim(root, "height"));
    let colours: HashMap<&str, &str> = [
        ("free", "#2ca02c"),
        ("thp", "#1f77b4"),
        ("hugetlb", "#9467bd"),
        ("compactable", "#ffbf00"),
        ("blocked", "#d62728"),
        ("offline", "#303030"),
        ("hole", "#e4e4e4"),
    ]
    .into();
    let mut pfns = Vec::new();
    for cell in doc
        .descendants()
        .filter(|n| n.tag_name().name() == "rect" && n.attribute("class") == Some("block"))
    {
        assert!(
            dim(cell, "x") + dim(cell, "width") <= w && dim(cell, "y") + dim(cell, "height") <= h
        );
        let title = cell
            .children()
            .find(|c| c.tag_name().name() == "title")
            .and_then(|t| t.text())
            .expect("cell without a title");
        let mut words = title.split_whitespace();
        assert_eq!(words.next(), Some("PFN"), "{title}");
        pfns.push(u64::from_str_radix(words.next().unwrap().trim_start_matches("0x"), 16).unwrap());
        let verdict = words.next().unwrap().trim_end_matches(':');
        assert_eq!(cell.attribute("fill"), Some(colours[verdict]), "{title}");
    }
    let json: Vec<u64> = m["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["pfn"].as_u64().unwrap())
        .collect();
    assert_eq!(pfns, json, "one cell per block, in PFN order");
    let legend: Vec<String> = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "text" && n.attribute("class") == Some("legend"))
        .map(|n| n.text().unwrap().to_string())
        .collect();
    assert_eq!(legend.len(), colours.len(), "{legend:?}");
    let mut total = 0;
    for l in &legend {
        let (v, rest) = l.split_once(": ").unwrap();
        assert!(colours.contains_key(v), "{l}");
        total += rest
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<usize>()
            .unwrap();
    }
    assert_eq!(total, pfns.len());
}

/// Bytes of `start..end` of this process in naturally aligned, physically
/// contiguous blocks of `size`, computed by hand from its pagemap.
fn contiguous_by_hand(start: u64, end: u64, size: u64) -> u64 {
    let n = size / 4096;
    let pfns = own_pfns(start as usize, ((end - start) / 4096) as usize);
    let first = start.div_ceil(size) * size;
    let mut bytes = 0;
    let mut va = first;
    while va + size <= end {
        let i = ((va - start) / 4096) as usize;
        let block = &pfns[i..i + n as usize];
        if let Some(p0) = block[0]
            && p0 % n == 0
            && block
                .iter()
                .enumerate()
                .all(|(k, p)| *p == Some(p0 + k as u64))
        {
            bytes += size;
        }
        va += size;
    }
    bytes
}

/// `snapshot --cont 64K` of this process: a THP-backed region counts whole
/// (every 64 KiB block of a THP is contiguous), and a region of 4 KiB
/// pages counts exactly the blocks its PFNs (from its own pagemap) make.
#[test]
fn snapshot_cont_counts_aligned_contiguous_blocks() {
    let name = "snapshot_cont_counts_aligned_contiguous_blocks";
    if skip_unless_root(name) {
        return;
    }
    let _serial = serial();
    const THP_LEN: usize = 4 << 20;
    const SMALL_LEN: usize = 8 << 20;
    let thp = pagewatch_tests::map_anon_pmd_aligned(THP_LEN);
    let small = map_anon_4k(SMALL_LEN);
    // SAFETY: advising and touching the two mappings just made.
    unsafe {
        libc::madvise(thp as *mut libc::c_void, THP_LEN, libc::MADV_HUGEPAGE);
        for i in (0..THP_LEN).step_by(4096) {
            ((thp + i) as *mut u8).write_volatile(1);
        }
        for i in (0..SMALL_LEN).step_by(4096) {
            small.add(i).write_volatile(1);
        }
    }
    let pid = std::process::id().to_string();
    let (status, out, err) = run_pagewatch(&[
        "snapshot", "--pid", &pid, "--cont", "64K", "--format", "json",
    ]);
    assert!(status.success(), "snapshot --cont failed: {err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    let c = &j["cont"][0];
    assert_eq!(c["size"], 65536);
    let vmas = c["vmas"].as_array().unwrap();
    let hex = |v: &Value| u64::from_str_radix(v.as_str().unwrap(), 16).unwrap();
    let vma_of = |addr: u64| {
        vmas.iter()
            .find(|v| hex(&v["start"]) <= addr && addr < hex(&v["end"]))
    };
    for (addr, what) in [(thp as u64, "THP region"), (small as u64, "4 KiB region")] {
        let Some(v) = vma_of(addr) else {
            // No block at all: the hand count must say so too.
            let s = pagewatch_tests::smaps(std::process::id());
            let vma = s.iter().rev().find(|v| v.start <= addr).unwrap();
            let end = vma.start + vma.kb["Size"] * 1024;
            assert_eq!(
                contiguous_by_hand(vma.start, end, 65536),
                0,
                "{what}: pagewatch found no block"
            );
            continue;
        };
        let want = contiguous_by_hand(hex(&v["start"]), hex(&v["end"]), 65536);
        eprintln!("{what}: anon {} bytes, by hand {want}", v["anon"]);
        assert_eq!(v["anon"].as_u64().unwrap(), want, "{what}: {v}");
        assert_eq!(v["file"], 0);
        if addr == small as u64 {
            // MADV_NOHUGEPAGE: no large folio, so nothing for thpmaps.
            assert_eq!(v["anon_thp"], 0, "{what}: {v}");
        }
    }
    let s = pagewatch_tests::smaps(std::process::id());
    let thp_kb = s
        .iter()
        .find(|v| v.start == thp as u64)
        .map_or(0, |v| v.kb["AnonHugePages"]);
    if thp_kb == (THP_LEN >> 10) as u64 {
        let v = vma_of(thp as u64).unwrap();
        assert!(
            v["anon"].as_u64().unwrap() >= THP_LEN as u64
                && v["anon_thp"].as_u64().unwrap() >= THP_LEN as u64,
            "a THP-backed region counts whole, in large folios too: {v}"
        );
    } else {
        skip(
            name,
            &format!("(THP part only) the region got {thp_kb} kB of THP, not 4096"),
        );
    }
    // SAFETY: unmapping what was mapped above.
    unsafe {
        libc::munmap(thp as *mut libc::c_void, THP_LEN);
        libc::munmap(small.cast(), SMALL_LEN);
    }
}

/// (zone, free blocks in the map, buddyinfo's bracket).
type ZoneFree = ((u64, String), u64, (u64, u64));

/// Free pageblocks in a map: per zone, the verdict count and what the
/// buddyinfo read before and after the map says (2 MiB blocks of order 9
/// and up, the smaller of the two reads first).
fn free_blocks(m: &Value) -> Vec<ZoneFree> {
    let order = m["pageblock_order"].as_u64().unwrap() as usize;
    let blocks = |orders: &Value| -> u64 {
        let v = orders.as_array().unwrap();
        (order..v.len())
            .map(|o| v[o].as_u64().unwrap() << (o - order))
            .sum()
    };
    m["zones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| {
            let (b, a) = (
                blocks(&z["buddyinfo_before"]),
                blocks(&z["buddyinfo_after"]),
            );
            (
                zone_key(z),
                z["verdicts"]["free"].as_u64().unwrap(),
                (b.min(a), b.max(a)),
            )
        })
        .collect()
}

/// The free pages free page reporting can hold off the free lists at once,
/// given buddyinfo's number of `orders`: 32 chunks (PAGE_REPORTING_CAPACITY)
/// of the largest order where a virtio-balloon reports free pages to the
/// host (feature bit 5, VIRTIO_BALLOON_F_REPORTING, in
/// /sys/bus/virtio/devices/*/features), else none.
fn page_reporting_pages(orders: usize) -> u64 {
    let reporting = std::fs::read_dir("/sys/bus/virtio/devices")
        .into_iter()
        .flatten()
        .flatten()
        .any(|d| {
            let read = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap_or_default();
            read("device").trim() == "0x0005" && read("features").as_bytes().get(5) == Some(&b'1')
        });
    if reporting { 32 << (orders - 1) } else { 0 }
}

/// Fragmentation: 128 MiB of 4 KiB pages with every other page freed
/// (MADV_DONTNEED) leaves the pageblocks holding them `compactable` or
/// `blocked`, never free, and the map names us in them; after
/// `vm.compact_memory` the map's free pageblocks are what buddyinfo's
/// order-9+ blocks read around it say.
#[test]
fn map_half_freed_memory_is_compactable_and_free_blocks_track_compaction() {
    let name = "map_half_freed_memory_is_compactable_and_free_blocks_track_compaction";
    if skip_unless_root(name) {
        return;
    }
    if !std::path::Path::new("/proc/sys/vm/compact_memory").exists() {
        return skip(
            name,
            "no /proc/sys/vm/compact_memory (CONFIG_COMPACTION off)",
        );
    }
    let _serial = serial();
    const LEN: usize = 128 << 20;
    let p = written_4k(LEN);
    for i in (0..LEN).step_by(8192) {
        // SAFETY: one page inside the mapping.
        assert_eq!(
            unsafe { libc::madvise(p.add(i).cast(), 4096, libc::MADV_DONTNEED) },
            0
        );
    }
    let ours = own_blocks(p, LEN);
    let m = map(&["--owners"]);
    let pid = u64::from(std::process::id());
    // Every block holding our pages has pages of ours freed next to them:
    // none is free or a THP. Those freed pages still on a per-CPU free
    // list have no flags, like a kernel allocation, so a block can be
    // `blocked` rather than `compactable` (in a 2 GiB guest all 70 were;
    // on the development host 42 of 2,510 were compactable). Both verdicts
    // list their owners: we are named unless 8 bigger owners fill the list.
    let (mut compactable, mut named) = (0, 0);
    for b in m["blocks"].as_array().unwrap() {
        if !ours.contains_key(&b["pfn"].as_u64().unwrap()) {
            continue;
        }
        assert!(
            b["verdict"] == "compactable" || b["verdict"] == "blocked",
            "a block holding our 4 KiB pages is neither compactable nor blocked: {b}"
        );
        compactable += usize::from(b["verdict"] == "compactable");
        named += usize::from(
            b["owners"]
                .as_array()
                .is_some_and(|o| o.iter().any(|o| o["pid"] == pid)),
        );
    }
    eprintln!(
        "{} blocks hold our pages: {compactable} compactable, {named} naming us",
        ours.len()
    );
    assert!(
        named > 0,
        "no block holding our pages names us ({} blocks)",
        ours.len()
    );
    let before = map(&[]);
    std::fs::write("/proc/sys/vm/compact_memory", "1").expect("write vm.compact_memory");
    let after = map(&[]);
    // The map's free blocks follow buddyinfo through the compaction: each
    // map within the bracket of the reads around it (off by no more than
    // what changed between them, as in the buddyinfo test), so it rises
    // by what buddyinfo's order-9+ count says. (How much compaction frees
    // is the kernel's business: on the development host, whose movable
    // pages it could hardly isolate, nothing.)
    //
    // Free page reporting (a virtio-balloon with VIRTIO_BALLOON_F_REPORTING,
    // as on the development host) takes free chunks of pageblock order and
    // up off the free lists, 32 at a time (PAGE_REPORTING_CAPACITY), while
    // it reports them to the host, about 2 s after frees such as a
    // compaction's: a map read meanwhile sees those blocks without their
    // buddy head, and buddyinfo before and after it counts them free (seen
    // once: 2013 free blocks, buddyinfo 2031). So the map may fall short by
    // up to 32 chunks of the largest order there.
    let mut total = [0, 0];
    for (k, (m, label)) in [(&before, "before"), (&after, "after")].iter().enumerate() {
        let order = m["pageblock_order"].as_u64().unwrap();
        let orders = m["zones"][0]["buddyinfo_before"].as_array().unwrap().len();
        let reported = page_reporting_pages(orders) >> order;
        for (zone, free, (lo, hi)) in free_blocks(m) {
            eprintln!(
                "{label} compaction, {zone:?}: {free} free blocks, buddyinfo {lo}..={hi}{}",
                if reported > 0 {
                    " (free page reporting on)"
                } else {
                    ""
                }
            );
            let outside = lo.saturating_sub(free + reported) + free.saturating_sub(hi);
            assert!(
                outside <= hi - lo,
                "{label} compaction, {zone:?}: the map counts {free} free blocks, buddyinfo {lo}..={hi} (free page reporting may hide {reported})"
            );
            total[k] += free;
        }
    }
    eprintln!(
        "free pageblocks: {} before compaction, {} after",
        total[0], total[1]
    );
    // SAFETY: unmapping the mapping made above.
    unsafe { libc::munmap(p.cast(), LEN) };
}
