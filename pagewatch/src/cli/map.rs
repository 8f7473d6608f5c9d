//! `pagewatch map`: physical memory per pageblock, per node and zone, with
//! each block's verdict (free huge page, huge page in use, could be
//! compacted, blocked) and what blocks it; as a table, JSON or an SVG grid.

use std::collections::HashMap;

use anyhow::Result;
use clap::{Args, ValueEnum};
use serde::Serialize;

use pagewatch::snapshot::map::{
    PhysMap, ZoneMap, build,
    classify::{PageClass, Verdict},
    nonzero,
    owners::{Owner, owners},
    svg::draw,
};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Per-zone totals and the nearly free blocks.
    Table,
    /// Every block, as one JSON document.
    Json,
    /// A picture: one cell per block coloured by verdict, zones, a legend.
    Svg,
}

/// Physical memory map per pageblock: why a huge page cannot be had.
#[derive(Debug, Args)]
pub struct MapArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Name the processes mapping the pages of compactable and blocked blocks (reads every process's pagemap).
    #[arg(long)]
    pub owners: bool,
    /// Nearly free blocks to list in the table (most free pages first).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub blocks: usize,
    #[command(flatten)]
    pub source: super::SourceArgs,
}

/// One block in the JSON.
#[derive(Debug, Serialize)]
struct BlockOut<'a> {
    pfn: u64,
    node: u32,
    zone: &'a str,
    verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocker: Option<PageClass>,
    pages: std::collections::BTreeMap<&'static str, u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owners: Option<&'a [Owner]>,
}

/// The JSON document.
#[derive(Debug, Serialize)]
struct Output<'a> {
    pageblock_order: u32,
    pages_per_block: u64,
    orders: u32,
    seconds: f64,
    zones: &'a [ZoneMap],
    blocks: Vec<BlockOut<'a>>,
    notes: &'a [String],
}

/// Run `pagewatch map`.
pub fn run(args: MapArgs) -> Result<()> {
    let (root, threads) = args.source.split();
    let mut map = build(&root, threads)?;
    let owned = if args.owners {
        let (o, notes) = owners(&root, &map, 8)?;
        map.notes.extend(notes);
        o
    } else {
        HashMap::new()
    };
    match args.format {
        Format::Json => {
            let blocks = map
                .blocks
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let z = &map.zones[b.zone].zone;
                    BlockOut {
                        pfn: b.pfn,
                        node: z.node,
                        zone: &z.name,
                        verdict: b.verdict,
                        blocker: b.blocker,
                        pages: b.class_pages(),
                        owners: args.owners.then(|| owned.get(&i).map_or(&[][..], |v| v)),
                    }
                })
                .collect();
            let out = Output {
                pageblock_order: map.pageblock_order,
                pages_per_block: map.block_pages(),
                orders: map.orders,
                seconds: map.seconds,
                zones: &map.zones,
                blocks,
                notes: &map.notes,
            };
            println!("{}", serde_json::to_string(&out)?);
        }
        Format::Svg => {
            print!("{}", draw(&map).render());
            for n in &map.notes {
                eprintln!("note: {n}");
            }
        }
        Format::Table => print_table(&map, &owned, args.blocks),
    }
    Ok(())
}

fn orders_row(v: &[u64]) -> String {
    v.iter().map(|n| format!("{n:>6}")).collect::<String>()
}

fn print_table(map: &PhysMap, owned: &HashMap<usize, Vec<Owner>>, nearly: usize) {
    println!(
        "pageblocks of {} KiB (order {}), read in {:.2}s",
        map.block_pages() * 4,
        map.pageblock_order,
        map.seconds
    );
    for (zi, z) in map.zones.iter().enumerate() {
        println!(
            "\nnode {} zone {} (PFN {:#x}-{:#x}): {} blocks (pagetypeinfo: {}): {}",
            z.zone.node,
            z.zone.name,
            z.zone.start_pfn,
            z.zone.end_pfn(),
            z.blocks,
            z.pagetypeinfo_blocks
                .map_or_else(|| "?".into(), |n| n.to_string()),
            nonzero(&z.verdicts)
        );
        println!("  pages: {}", nonzero(&z.pages));
        if z.pages.get("kernel").is_some_and(|n| *n > 0) {
            println!(
                "  of the kernel pages, free on per-CPU lists (zoneinfo before/after): {}/{}",
                z.zone.pcp_free,
                z.pcp_free_after
                    .map_or_else(|| "?".into(), |n| n.to_string())
            );
        }
        println!("  free blocks per order  {}", orders_row(&z.free_by_order));
        if let Some(b) = &z.buddyinfo_before {
            println!("  buddyinfo before       {}", orders_row(b));
        }
        if let Some(b) = &z.buddyinfo_after {
            println!("  buddyinfo after        {}", orders_row(b));
        }
        let mut blockers: HashMap<&str, u64> = HashMap::new();
        for b in map.blocks.iter().filter(|b| b.zone == zi) {
            if let Some(k) = b.blocker {
                *blockers.entry(k.name()).or_default() += 1;
            }
        }
        if !blockers.is_empty() {
            let mut v: Vec<_> = blockers.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            let v: Vec<String> = v.iter().map(|(k, n)| format!("{k} {n}")).collect();
            println!("  blocked blocks by main blocker: {}", v.join(", "));
        }
    }
    let mut near: Vec<(usize, &pagewatch::snapshot::map::Block)> = map
        .blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| matches!(b.verdict, Verdict::Compactable | Verdict::Blocked))
        .collect();
    near.sort_by_key(|(_, b)| (std::cmp::Reverse(b.count(PageClass::Free)), b.pfn));
    if nearly > 0 && !near.is_empty() {
        println!("\nnearly free blocks (most free pages first):");
    }
    for (i, b) in near.into_iter().take(nearly) {
        let who: Vec<String> = owned
            .get(&i)
            .into_iter()
            .flatten()
            .map(|o| format!("{}/{} {}", o.pid, o.comm, o.pages))
            .collect();
        println!(
            "  {}{}",
            b.describe(),
            if who.is_empty() {
                String::new()
            } else {
                format!("; owners {}", who.join(", "))
            }
        );
    }
    for n in &map.notes {
        eprintln!("note: {n}");
    }
}
