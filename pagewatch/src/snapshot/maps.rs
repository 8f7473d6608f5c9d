//! /proc/PID/maps: the mapped ranges whose pagemap entries are read, with
//! what kind of mapping each is. The parser takes text so it is tested on
//! captured files (test_data/snapshot/).

use std::{fs::File, path::Path, sync::OnceLock};

use serde::Serialize;

pub use super::vma::Vma;
use super::{
    ProcRoot,
    error::{Result, SnapshotError},
    procmap_query::query_vmas,
};

/// How a VMA list is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmaSource {
    /// The PROCMAP_QUERY ioctl on /proc/PID/maps (6.11+).
    ProcmapQuery,
    /// The text of /proc/PID/maps.
    MapsText,
}

/// Read the VMAs of `pid`: with PROCMAP_QUERY when `want` is
/// [`VmaSource::ProcmapQuery`] and the kernel has it (else, and for
/// captured trees, from the text), saying which was used.
pub fn read_vmas(root: &ProcRoot, pid: u32, want: VmaSource) -> Result<(Vec<Vma>, VmaSource)> {
    let path = root.pid_file(pid, "maps");
    let err = |e| SnapshotError::of_process(pid, &path, e);
    let file = File::open(&path).map_err(err)?;
    if want == VmaSource::ProcmapQuery
        && let Ok(mut vmas) = query_vmas(&file)
    {
        // The gate VMA is not one of the mm's: add it as maps shows it, for
        // 64-bit processes (it exists for those only).
        if vmas.last().is_some_and(|v| v.end > 1 << 32)
            && let Some(gate) = gate_vma(root)
        {
            vmas.push(gate.clone());
        }
        return Ok((vmas, VmaSource::ProcmapQuery));
    }
    let text = std::io::read_to_string(file).map_err(err)?;
    Ok((parse_maps(&text, &path)?, VmaSource::MapsText))
}

/// The x86-64 gate VMA (`[vsyscall]`, above the user address space) as
/// this kernel lists it in maps, taken once from our own maps (None with
/// `vsyscall=none` or on other architectures).
fn gate_vma(root: &ProcRoot) -> Option<&'static Vma> {
    static GATE: OnceLock<Option<Vma>> = OnceLock::new();
    GATE.get_or_init(|| {
        let text = std::fs::read_to_string(root.proc.join("self/maps")).ok()?;
        text.lines()
            .filter_map(parse_line)
            .find(|v| v.start >= 1 << 47)
    })
    .as_ref()
}

/// Parse the text of /proc/PID/maps (`path` only names it in errors).
pub fn parse_maps(text: &str, path: &Path) -> Result<Vec<Vma>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            parse_line(line).ok_or_else(|| SnapshotError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                text: line.to_string(),
            })
        })
        .collect()
}

fn parse_line(line: &str) -> Option<Vma> {
    let mut it = line.splitn(6, ' ');
    let (range, perms, offset, dev, inode) =
        (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    let name = it.next().unwrap_or("").trim_start().to_string();
    let (start, end) = range.split_once('-')?;
    Some(Vma {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms: perms.to_string(),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: dev.to_string(),
        inode: inode.parse().ok()?,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_captured_maps() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/test_data/snapshot/maps"
        ));
        let text = std::fs::read_to_string(path).unwrap();
        let vmas = parse_maps(&text, path).unwrap();
        assert_eq!(vmas.len(), text.lines().count());
        assert!(vmas.iter().any(|v| v.name == "[stack]"));
        assert!(vmas.iter().all(|v| v.start < v.end && v.start % 4096 == 0));
        let anon = vmas.iter().find(|v| v.name.is_empty()).unwrap();
        assert_eq!(anon.inode, 0);
    }

    #[test]
    fn procmap_query_and_maps_text_list_the_same_vmas() {
        // A real process whose mappings do not change while we look.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let root = ProcRoot::default();
        // Compare once sleep is asleep (in clock_nanosleep or nanosleep,
        // x86-64 syscalls 230 and 35, per /proc/PID/syscall), its loader
        // done: a 6.12 TCG guest's was still mapping libraries 100 ms
        // after the spawn.
        for _ in 0..600 {
            let call = std::fs::read_to_string(format!("/proc/{}/syscall", child.id()));
            if call.is_ok_and(|c| c.starts_with("230 ") || c.starts_with("35 ")) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let (text, src) = read_vmas(&root, child.id(), VmaSource::MapsText).unwrap();
        assert_eq!(src, VmaSource::MapsText);
        let (ioctl, src) = read_vmas(&root, child.id(), VmaSource::ProcmapQuery).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut v = release
            .split(['.', '-'])
            .map(|x| x.parse::<u32>().unwrap_or(0));
        let (major, minor) = (v.next().unwrap(), v.next().unwrap());
        if (major, minor) < (6, 11) {
            assert_eq!(src, VmaSource::MapsText, "no PROCMAP_QUERY before 6.11");
            eprintln!("skipping the comparison - kernel {major}.{minor} has no PROCMAP_QUERY");
            return;
        }
        assert_eq!(src, VmaSource::ProcmapQuery);
        assert!(text.len() > 5 && text.iter().any(|v| !v.name.is_empty() && v.inode != 0));
        assert_eq!(ioctl, text);
        // An unknown process is a clear error on either path.
        for want in [VmaSource::MapsText, VmaSource::ProcmapQuery] {
            assert!(matches!(
                read_vmas(&root, u32::MAX - 1, want),
                Err(SnapshotError::NoSuchProcess(_))
            ));
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_maps("zzz\n", Path::new("x")).is_err());
    }
}
