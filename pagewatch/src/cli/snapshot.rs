//! `pagewatch snapshot`: page census of processes (per process and per VMA,
//! equal to smaps), of the whole system (kpageflags combinations like
//! page-types, hugetlb/THP/vmstat state) and working sets. The clap struct
//! is turned into a validated [`Config`] before any work is done.

use std::{path::PathBuf, time::Duration};

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;

use pagewatch::snapshot::{
    ProcRoot, SnapshotError,
    census::{Census, census},
    columns::PageTable,
    cont::{ContBuilder, ContReport},
    flags::{FlagExpr, kpf_describe},
    maps::VmaSource,
    memcg::MemcgNames,
    report::{ProcessReport, ReportBuilder, Usage, process_report},
    scan::{KpageFiles, ProcessPages, ScanOptions, scan_process, scan_process_with},
    select::{Selection, resolve},
    sysfs::{SystemState, system_state},
    workingset::{WorkingSet, working_set},
};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable tables.
    Table,
    /// One JSON document.
    Json,
}

/// Page census of processes and of the whole system.
///
/// Flag names for --flags: locked error referenced uptodate dirty lru active
/// slab writeback reclaim buddy mmap anon swapcache swapbacked compound_head
/// compound_tail huge unevictable hwpoison nopage ksm thp offline zero_page
/// idle pgtable, and the kernel-hacking bits reserved mlocked mappedtodisk
/// private private_2 owner_private arch uncached softdirty arch_2 (or bitN).
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Processes to snapshot (repeat or comma-separate).
    #[arg(long, num_args = 1.., value_delimiter = ',', conflicts_with_all = ["comm", "cgroup", "all"])]
    pub pid: Vec<u32>,
    /// Every process whose command name (/proc/PID/comm) is NAME.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["cgroup", "all"])]
    pub comm: Option<String>,
    /// Every process in this cgroup directory (absolute, or relative to the memory cgroup mount).
    #[arg(long, value_name = "PATH", conflicts_with = "all")]
    pub cgroup: Option<PathBuf>,
    /// Every process with an address space.
    #[arg(long)]
    pub all: bool,
    /// Also report every VMA.
    #[arg(long)]
    pub vma: bool,
    /// Whole-system census (kpageflags), hugetlb pools, THP and vmstat counters.
    #[arg(long)]
    pub system: bool,
    /// Only pages whose flags match EXPR, e.g. `thp,~compound_tail` (implies --system).
    #[arg(long, value_name = "EXPR")]
    pub flags: Option<String>,
    /// List the matching PFN runs, with owners among the selected processes (implies --system).
    #[arg(long)]
    pub list: bool,
    /// Measure the working set over DURATION (e.g. 5s, 500ms) via clear_refs.
    #[arg(long, value_name = "DURATION")]
    pub working_set: Option<String>,
    /// Also report per process and VMA the memory in naturally aligned, physically contiguous blocks of SIZE (a power of two such as 64K), anon and file apart.
    #[arg(long, value_name = "SIZE", value_parser = parse_cont)]
    pub cont: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(flatten)]
    pub source: super::SourceArgs,
    /// Sleep this many ms after each VMA (test hook for processes exiting mid-scan).
    #[arg(long, hide = true)]
    pub pause_per_vma_ms: Option<u64>,
    /// Read VMA lists from the /proc/PID/maps text even where the PROCMAP_QUERY ioctl works.
    #[arg(long, hide = true)]
    pub maps_text: bool,
}

/// Validated configuration.
#[derive(Debug)]
struct Config {
    root: ProcRoot,
    selection: Option<Selection>,
    vma: bool,
    system: bool,
    expr: FlagExpr,
    list: bool,
    working_set: Option<Duration>,
    cont: Option<u64>,
    format: Format,
    threads: usize,
    scan: ScanOptions,
}

impl TryFrom<SnapshotArgs> for Config {
    type Error = anyhow::Error;
    fn try_from(a: SnapshotArgs) -> Result<Self> {
        let selection = if !a.pid.is_empty() {
            Some(Selection::Pids(a.pid))
        } else if let Some(c) = a.comm {
            Some(Selection::Comm(c))
        } else if let Some(c) = a.cgroup {
            Some(Selection::Cgroup(c))
        } else if a.all {
            Some(Selection::All)
        } else {
            None
        };
        let expr = match &a.flags {
            Some(e) => FlagExpr::parse(e)?,
            None => FlagExpr::default(),
        };
        let system = a.system || a.flags.is_some() || a.list;
        if selection.is_none() && !system {
            bail!("nothing to snapshot: give --pid, --comm, --cgroup, --all or --system");
        }
        let working_set = a
            .working_set
            .as_deref()
            .map(super::parse_duration)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        if a.cont.is_some() && selection.is_none() {
            bail!("--cont needs processes (--pid, --comm, --cgroup or --all)");
        }
        if working_set.is_some() && selection.is_none() {
            bail!("--working-set needs processes (--pid, --comm, --cgroup or --all)");
        }
        let (root, threads) = a.source.split();
        Ok(Config {
            root,
            selection,
            vma: a.vma,
            system,
            expr,
            list: a.list,
            working_set,
            cont: a.cont,
            format: a.format,
            threads,
            scan: ScanOptions {
                pause: a.pause_per_vma_ms.map(Duration::from_millis),
                vma_source: if a.maps_text {
                    VmaSource::MapsText
                } else {
                    VmaSource::ProcmapQuery
                },
            },
        })
    }
}

/// A listed PFN run with the owners of its first page.
#[derive(Debug, Serialize)]
struct ListedRun {
    pfn: u64,
    count: u64,
    flags: String,
    owners: Vec<String>,
}

/// The whole output document.
#[derive(Debug, Serialize)]
struct Output {
    processes: Vec<ProcessReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<SystemOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    working_set: Vec<WorkingSet>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cont: Vec<ContReport>,
    /// Per-page state kept to name owners (`--list`): pages, bytes per page.
    #[serde(skip_serializing_if = "Option::is_none")]
    page_table: Option<PageTableSummary>,
    notes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct PageTableSummary {
    pages: usize,
    bytes_per_page: usize,
}

#[derive(Debug, Serialize)]
struct SystemOut {
    census: Census,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    list: Vec<ListedRun>,
    state: SystemState,
}

/// Run `pagewatch snapshot`.
pub fn run(args: SnapshotArgs) -> Result<()> {
    let cfg = Config::try_from(args)?;
    let kp = KpageFiles::open(&cfg.root);
    let mut notes: Vec<String> = kp
        .missing
        .iter()
        .chain(&kp.ksm_unreliable)
        .cloned()
        .collect();
    let mut scans: Vec<ProcessPages> = Vec::new();
    let mut reports: Vec<ProcessReport> = Vec::new();
    let mut working: Vec<WorkingSet> = Vec::new();
    let mut conts: Vec<ContReport> = Vec::new();
    let names = MemcgNames::load(&cfg.root);
    if let Some(sel) = &cfg.selection {
        let explicit = matches!(sel, Selection::Pids(_));
        for pid in resolve(&cfg.root, sel)? {
            // Keep every page only when owners must be named (--list);
            // otherwise account batch by batch in a small footprint.
            let mut cont = cfg.cont.map(ContBuilder::new);
            let scanned = if cfg.list {
                scan_process(&cfg.root, &kp, pid, &cfg.scan).map(|p| {
                    reports.push(process_report(&p, &names, cfg.vma));
                    if let Some(c) = cont.take() {
                        conts.push(c.finish_pages(&p));
                    }
                    scans.push(p);
                })
            } else {
                let mut b = ReportBuilder::new(&names, cfg.vma);
                scan_process_with(&cfg.root, &kp, pid, &cfg.scan, |vi, batch, vis| {
                    b.add(vi, batch, vis);
                    if let Some(c) = cont.as_mut() {
                        c.add(vi, batch);
                    }
                })
                .map(|info| {
                    reports.push(b.finish(&info));
                    if let Some(c) = cont.take() {
                        conts.push(c.finish(&info));
                    }
                })
            };
            match scanned {
                Ok(()) => {}
                Err(e @ SnapshotError::NoSuchProcess(_)) if explicit => return Err(e.into()),
                Err(SnapshotError::NoSuchProcess(p)) => {
                    notes.push(format!("pid {p} exited before it was read"))
                }
                Err(e @ SnapshotError::ProcessAccessDenied(_)) if !explicit => {
                    notes.push(e.to_string())
                }
                Err(e) => return Err(e.into()),
            }
            if let Some(d) = cfg.working_set {
                match working_set(&cfg.root, &kp, pid, d) {
                    Ok(w) => working.push(w),
                    Err(e) => notes.push(format!("working set of pid {pid}: {e}")),
                }
            }
        }
    }
    for r in &reports {
        notes.extend(r.notes.iter().cloned());
    }
    if !reports.is_empty() && reports.iter().any(|r| !r.pfns_visible) && kp.missing.is_none() {
        notes.push(
            "some processes' PFNs were hidden: their Pss and flag-based figures are null".into(),
        );
    }
    // The per-page table (16 bytes a page) is only needed to name owners.
    let table = PageTable::from_scans(&scans);
    let system = if cfg.system {
        let c = census(&cfg.root, cfg.expr, cfg.list, cfg.threads)?;
        let list = c
            .runs
            .iter()
            .flatten()
            .map(|r| ListedRun {
                pfn: r.pfn,
                count: r.count,
                flags: kpf_describe(r.flags),
                owners: (r.pfn..r.pfn + r.count)
                    .flat_map(|pfn| table.owners(pfn))
                    .take(8)
                    .map(|o| format!("{}@{:x}", o.pid, o.va))
                    .collect(),
            })
            .collect();
        Some(SystemOut {
            census: c,
            list,
            state: system_state(&cfg.root),
        })
    } else {
        None
    };
    let out = Output {
        processes: reports,
        system,
        working_set: working,
        cont: conts,
        page_table: cfg.list.then(|| PageTableSummary {
            pages: table.len(),
            bytes_per_page: table.bytes_per_page(),
        }),
        notes,
    };
    match cfg.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
        Format::Table => print_table(&out),
    }
    Ok(())
}

/// `--cont SIZE`: a power of two of at least one page.
fn parse_cont(text: &str) -> Result<u64, String> {
    let size = super::parse_size(text)?;
    if !size.is_power_of_two() || size < 4096 {
        return Err(format!(
            "{text:?}: the block size must be a power of two of at least 4K"
        ));
    }
    Ok(size)
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "?".into(), |v| v.to_string())
}

fn usage_row(label: &str, u: &Usage) -> String {
    format!(
        "{label:<40} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>8}",
        u.rss,
        opt(u.pss),
        u.uss,
        u.anonymous,
        u.file,
        opt(u.shmem),
        u.swap,
        opt(u.anon_huge_pages),
        opt(u.private_hugetlb.zip(u.shared_hugetlb).map(|(a, b)| a + b)),
    )
}

fn print_table(o: &Output) {
    if !o.processes.is_empty() {
        println!(
            "{:<40} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>8}",
            "PROCESS / VMA (kB)",
            "RSS",
            "PSS",
            "USS",
            "ANON",
            "FILE",
            "SHMEM",
            "SWAP",
            "ANONHUGE",
            "HUGETLB"
        );
    }
    for p in &o.processes {
        let mut label = format!("{} {}", p.pid, p.comm);
        if p.partial {
            label.push_str(" (partial)");
        }
        println!("{}", usage_row(&label, &p.total));
        let t = &p.total;
        println!(
            "    dirty: private {} shared {} | clean: private {} shared {} | ksm {} | zero-page pages {} | soft-dirty pages {} | exclusive pages {} | VMAs via {}",
            opt(t.private_dirty),
            opt(t.shared_dirty),
            opt(t.private_clean),
            opt(t.shared_clean),
            opt(t.ksm),
            opt(t.zero_pages),
            t.soft_dirty_pages,
            t.exclusive_pages,
            match p.vma_source {
                VmaSource::ProcmapQuery => "PROCMAP_QUERY",
                VmaSource::MapsText => "maps text",
            }
        );
        if !p.memcg.is_empty() {
            let m: Vec<String> = p.memcg.iter().map(|(k, v)| format!("{k} {v} kB")).collect();
            println!("    memcg: {}", m.join(", "));
        }
        for (sz, kb) in &p.hugetlb_by_size {
            println!("    hugetlb {sz} kB pages: {kb} kB");
        }
        for (kind, map) in [("anon", &p.folios.anon), ("file", &p.folios.file)] {
            for (sz, b) in map {
                println!(
                    "    {kind} folios {sz} kB: {} folios, {} kB (pmd {} kB, pte {} kB, aligned {} kB, unaligned {} kB)",
                    b.folios,
                    b.bytes >> 10,
                    b.pmd_mapped >> 10,
                    b.pte_mapped >> 10,
                    b.aligned >> 10,
                    b.unaligned >> 10
                );
            }
        }
        for v in p.vmas.iter().flatten() {
            let label = format!("  {}-{} {} {}", v.start, v.end, v.perms, v.name);
            println!("{}", usage_row(&label, &v.usage));
        }
    }
    for c in &o.cont {
        println!(
            "\n{} {}: in naturally aligned contiguous {} kB blocks: anon {} kB ({} kB in large folios), file {} kB ({} kB in large folios)",
            c.pid,
            c.comm,
            c.size >> 10,
            c.total.anon >> 10,
            c.total.anon_thp >> 10,
            c.total.file >> 10,
            c.total.file_thp >> 10
        );
        for v in &c.vmas {
            println!(
                "  {}-{} anon {:>10} kB ({:>10} kB) file {:>10} kB ({:>10} kB)  {}",
                v.start,
                v.end,
                v.usage.anon >> 10,
                v.usage.anon_thp >> 10,
                v.usage.file >> 10,
                v.usage.file_thp >> 10,
                v.name
            );
        }
    }
    for w in &o.working_set {
        println!(
            "\nworking set of pid {} over {:.1}s (kB):",
            w.pid, w.seconds
        );
        println!(
            "  {:<16} {:>10} {:>12} {:>12} {:>12}  NAME",
            "START", "RSS", "REFERENCED", "SOFT-DIRTY", "NOT-IDLE"
        );
        for v in &w.vmas {
            println!(
                "  {:<16} {:>10} {:>12} {:>12} {:>12}  {}",
                v.start,
                v.rss_kb,
                v.referenced_kb,
                opt(v.soft_dirty_kb),
                opt(v.accessed_idle_kb),
                v.name
            );
        }
    }
    if let Some(s) = &o.system {
        let c = &s.census;
        println!(
            "\nsystem census: {} PFNs read (zoneinfo end of memory {}), {} pages ({:.1} MiB) match",
            c.pfns_read,
            c.zoneinfo_end_pfn,
            c.matched_pages,
            c.matched_pages as f64 / 256.0
        );
        println!("{:>18} {:>10} {:>10}  FLAGS", "RAW", "PAGES", "MiB");
        for k in &c.combos {
            println!(
                "{:>#18x} {:>10} {:>10.1}  {}",
                k.flags, k.pages, k.mib, k.names
            );
        }
        for r in &s.list {
            println!(
                "pfn {:#x}+{} {} {}",
                r.pfn,
                r.count,
                r.flags,
                r.owners.join(" ")
            );
        }
        println!("\nhugetlb pools (size kB, node, nr, free, surplus, resv):");
        for h in &s.state.hugetlb {
            println!(
                "  {:>8} {:>6} {:>6} {:>6} {:>6} {:>6}",
                h.size_kb,
                h.node.map_or_else(|| "all".into(), |n| n.to_string()),
                h.nr,
                h.free,
                h.surplus,
                opt(h.resv)
            );
        }
        println!(
            "THP: enabled={} defrag={}",
            s.state.thp.enabled, s.state.thp.defrag
        );
        for (sz, (mode, stats)) in &s.state.thp.sizes {
            let nz: Vec<String> = stats
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!("  {sz} kB: {mode} {}", nz.join(" "));
        }
        let vm: Vec<String> = s
            .state
            .vmstat
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("vmstat: {}", vm.join(" "));
    }
    for n in &o.notes {
        eprintln!("note: {n}");
    }
}
