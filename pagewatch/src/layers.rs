//! The library's layers, checked: every `crate::` path in a module's
//! source (imports and paths in code; comments are not read) must name a
//! module of the same layer or a lower one, and the modules must not
//! import each other in a cycle; nor may the files of one module
//! (`snapshot/maps.rs`, `snapshot/scan.rs`...) name each other through
//! `super::` in a cycle. ARCHITECTURE.md describes the layers.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// The top-level modules, bottom layer first.
const LAYERS: &[&[&str]] = &[
    // Common types and kernel facts: clocks, page size, page flag bits,
    // kernel quirk probes, /proc readers, tracefs formats, the hook table
    // and hook layouts, capabilities, transition kinds and causes, notes.
    &[
        "error",
        "kernel",
        "note",
        "proc",
        "privileges",
        "tracefs",
        "hooks",
        "transition",
    ],
    // Event sources (the eBPF object, event decoding) and snapshots.
    &["probe", "event", "snapshot"],
    // Per-interval tallies and the correlator.
    &["aggregate", "correlate"],
    // The engine: a session over all of the above.
    &["session"],
    // Recordings (written by a front end's sink, read by `report`) and
    // the typed JSON lines front ends write.
    &["record", "output"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level modules named by `crate::` paths in `source`.
fn crate_paths(source: &str) -> BTreeSet<String> {
    paths_after(source, "crate::")
}

/// The first segments of the paths that start with `prefix` (`crate::`,
/// `super::`) in `source`, its comments left out.
fn paths_after(source: &str, prefix: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find(prefix) {
        // `$crate::` and `pagewatch_crate::` are not this crate's root.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            out.extend(group_heads(group));
        } else {
            out.insert(ident(rest).to_owned());
        }
    }
    out.retain(|m| !m.is_empty() && m != "self" && m != "super");
    out
}

/// The first identifier of each item of a `{a::b, c, d::{e, f}}` group
/// (`group` starts after the opening brace).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && (c.is_alphanumeric() || c == '_') => {
                heads.push(ident(&group[i..]).to_owned());
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

fn ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Each top-level module of the library and the top-level modules its
/// files name; and each file of a module's folder (`snapshot::maps`) and
/// the files of the same folder it names through `super::`.
fn module_imports(src: &Path) -> (Graph, Graph) {
    let mut graph = Graph::new();
    let mut files = Graph::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("reading src/") {
            let path = entry.expect("reading src/").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src/");
            let top = rel
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .expect("a file name")
                .trim_end_matches(".rs")
                .to_owned();
            // The crate roots and the binary's CLI are above every layer.
            if ["lib", "main", "cli", "layers"].contains(&top.as_str()) {
                continue;
            }
            let source = std::fs::read_to_string(&path).expect("reading a source file");
            let deps = crate_paths(&source);
            let entry = graph.entry(top.clone()).or_default();
            entry.extend(deps.into_iter().filter(|d| *d != top));
            // A file of a folder other than its mod.rs (which declares and
            // re-exports the others).
            if let (Some(folder), Some(name)) = (
                rel.parent().filter(|p| !p.as_os_str().is_empty()),
                rel.file_stem().and_then(|n| n.to_str()),
            ) && name != "mod"
            {
                let folder = folder.to_string_lossy().replace('/', "::");
                let siblings = paths_after(&source, "super::")
                    .into_iter()
                    .filter(|s| s != name && dir.join(format!("{s}.rs")).is_file())
                    .map(|s| format!("{folder}::{s}"));
                files
                    .entry(format!("{folder}::{name}"))
                    .or_default()
                    .extend(siblings);
            }
        }
    }
    (graph, files)
}

/// What is wrong with `graph`: modules in no layer, imports from a higher
/// layer, and cycles.
fn violations(graph: &Graph) -> Vec<String> {
    let mut wrong = Vec::new();
    for (module, deps) in graph {
        let Some(layer) = layer_of(module) else {
            wrong.push(format!("module {module} is in no layer of LAYERS"));
            continue;
        };
        for dep in deps {
            match layer_of(dep) {
                Some(l) if l > layer => wrong.push(format!(
                    "{module} (layer {layer}) imports {dep} (layer {l}), a layer above it"
                )),
                Some(_) => {}
                None => wrong.push(format!("{module} imports {dep}, which is in no layer")),
            }
        }
    }
    wrong.extend(cycles(graph));
    wrong
}

/// The import cycles of `graph`, each once.
fn cycles(graph: &Graph) -> Vec<String> {
    // A cycle is a path back to where it started (depth-first search).
    let mut cycles = BTreeSet::new();
    for start in graph.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for dep in graph.get(&node).into_iter().flatten() {
                if dep == start {
                    let mut cycle = path.clone();
                    // One report per cycle, whichever module it starts at.
                    let min = cycle.iter().min().expect("not empty").clone();
                    let at = cycle.iter().position(|m| *m == min).expect("present");
                    cycle.rotate_left(at);
                    cycles.insert(cycle);
                } else if seen.insert(dep.clone()) {
                    let mut next = path.clone();
                    next.push(dep.clone());
                    stack.push((dep.clone(), next));
                }
            }
        }
    }
    cycles
        .into_iter()
        .map(|cycle: Vec<String>| format!("import cycle: {} -> {}", cycle.join(" -> "), cycle[0]))
        .collect()
}

#[test]
fn no_module_imports_from_a_layer_above_it_or_in_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (graph, files) = module_imports(&src);
    assert!(graph.len() >= 10, "found only {graph:?}");
    assert!(files.len() >= 20, "found only {files:?}");
    let mut wrong = violations(&graph);
    wrong.extend(cycles(&files));
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_check_sees_grouped_and_inline_paths_and_catches_both_faults() {
    let source = "use crate::{\n    event::{Decoder, Event},\n    proc::ProcRoot,\n};\n\
                  // crate::session in a comment is not an import\n\
                  fn f() { crate::kernel::page_size(); $crate::x; }\n";
    let found: Vec<String> = crate_paths(source).into_iter().collect();
    assert_eq!(found, ["event", "kernel", "proc"]);
    let found: Vec<String> =
        paths_after("use super::{maps::Vma, error};\nuse super::*;", "super::")
            .into_iter()
            .collect();
    assert_eq!(found, ["error", "maps"]);

    let graph = |edges: &[(&str, &str)]| {
        let mut g = Graph::new();
        for (from, to) in edges {
            g.entry((*from).to_owned())
                .or_default()
                .insert((*to).to_owned());
            g.entry((*to).to_owned()).or_default();
        }
        g
    };
    assert!(violations(&graph(&[("session", "probe"), ("probe", "kernel")])).is_empty());
    let upward = violations(&graph(&[("proc", "record")]));
    assert_eq!(
        upward,
        ["proc (layer 0) imports record (layer 4), a layer above it"]
    );
    let cycle = violations(&graph(&[("proc", "kernel"), ("kernel", "proc")]));
    assert_eq!(cycle, ["import cycle: kernel -> proc -> kernel"]);
}
