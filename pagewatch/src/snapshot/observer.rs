//! Taking pagewatch's own mappings out of the mapcounts it reads.
//!
//! pagewatch maps the same shared-library pages (libc, libm, ld.so,
//! libgcc_s) and the vdso as the processes it looks at, so while it runs
//! those pages have one more mapping each: kpagecount and pagemap's
//! exclusive bit include it, and a Pss computed from them is lower than
//! the Pss smaps shows before and after (a page mapped by the target and
//! pagewatch only: half). [`OwnPages`] counts, per PFN, the PTEs of
//! pagewatch's own mappings of the files (by device and inode) the target
//! maps too; the scan subtracts them, so figures are the target's as they
//! are without pagewatch running.
//!
//! Exact only where the kernel's mapcount is per page. From 6.15 a kernel
//! built with CONFIG_NO_PAGE_MAPCOUNT keeps one mapcount per folio:
//! kpagecount is then the folio's *average* page mapcount (rounded) and
//! the exclusive bit `!folio_maybe_mapped_shared()`, which is what smaps
//! divides by and tests there; pagewatch's share of such an average cannot
//! be taken out from userspace, so on those kernels only small folios are
//! corrected. [`MapcountMode::detect`] tells the two apart at run time.

use std::{collections::HashSet, sync::OnceLock};

use super::{
    flags::{PM_EXCLUSIVE, PagemapEntry, has, kpf},
    maps::{Vma, VmaSource, read_vmas},
    source::{ProcRoot, U64Table},
};
use crate::kernel::quirks;

/// How the running kernel counts mappings of a large folio's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapcountMode {
    /// Every page has its own mapcount (all kernels before 6.15; later
    /// ones with CONFIG_PAGE_MAPCOUNT).
    PerPage,
    /// One per folio: kpagecount is the folio's average page mapcount
    /// (CONFIG_NO_PAGE_MAPCOUNT, 6.15+).
    FolioAverage,
    /// 6.15+ where the probe could not run (no THP): taken as per page,
    /// the default configuration.
    Assumed,
}

/// Said once, on the first process report, when the mode is assumed.
pub const ASSUMED_NOTE: &str = "cannot tell whether this kernel (6.15+) keeps per-page mapcounts or only folio averages (CONFIG_NO_PAGE_MAPCOUNT): the probe needs a transparent huge page; pagewatch's own mappings are taken out of Pss as per page (the default configuration)";

impl MapcountMode {
    /// The live kernel's mode, probed once: kernels before 6.15 count per
    /// page; later ones are asked with
    /// [`quirks::kpagecount_is_folio_average`].
    pub fn detect() -> Self {
        static MODE: OnceLock<MapcountMode> = OnceLock::new();
        *MODE.get_or_init(|| {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            if release_before(&release, (6, 15)) {
                return MapcountMode::PerPage;
            }
            match quirks::kpagecount_is_folio_average() {
                Some(true) => MapcountMode::FolioAverage,
                Some(false) => MapcountMode::PerPage,
                None => MapcountMode::Assumed,
            }
        })
    }
}

/// Whether kernel release text `r` ("6.12.95+deb12-amd64") is older than
/// `(major, minor)`; unparsable text counts as not older.
pub fn release_before(r: &str, want: (u32, u32)) -> bool {
    let mut it = r.trim().split(['.', '-', '+']).map(|x| x.parse::<u32>());
    match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b))) => (a, b) < want,
        _ => false,
    }
}

/// PTE counts of pagewatch's own mappings, by PFN, of the files a target
/// maps too (and of the vdso).
#[derive(Debug, Default)]
pub struct OwnPages {
    /// (PFN, own PTEs mapping it), sorted by PFN.
    by_pfn: Vec<(u64, u32)>,
    mode: Option<MapcountMode>,
}

impl OwnPages {
    /// Own mappings shared with a process whose VMAs are `target`; empty
    /// when reading a captured tree or the target is pagewatch itself, or
    /// when its own pagemap cannot be read.
    pub fn read(root: &ProcRoot, pid: u32, target: &[Vma]) -> Self {
        let me = std::process::id();
        if root.proc != std::path::Path::new("/proc") || pid == me {
            return OwnPages::default();
        }
        let key = |v: &Vma| (v.inode != 0).then(|| (v.dev.clone(), v.inode));
        let files: HashSet<(String, u64)> = target.iter().filter_map(key).collect();
        let vdso = target.iter().any(|v| v.name == "[vdso]");
        let Ok((mine, _)) = read_vmas(root, me, VmaSource::MapsText) else {
            return OwnPages::default();
        };
        let Ok(pm) = U64Table::open(root.pid_file(me, "pagemap")) else {
            return OwnPages::default();
        };
        let mut pfns = Vec::new();
        for v in mine
            .iter()
            .filter(|v| key(v).is_some_and(|k| files.contains(&k)) || (vdso && v.name == "[vdso]"))
        {
            let Ok(entries) = pm.read(v.start / 4096, (v.len() / 4096) as usize) else {
                continue;
            };
            for e in entries {
                // An exclusive page is mapped by pagewatch alone.
                let pe = PagemapEntry(e);
                if let Some(pfn) = pe.pfn()
                    && pfn != 0
                    && !pe.exclusive()
                {
                    pfns.push(pfn);
                }
            }
        }
        pfns.sort_unstable();
        let mut by_pfn: Vec<(u64, u32)> = Vec::with_capacity(pfns.len());
        for pfn in pfns {
            match by_pfn.last_mut() {
                Some((p, n)) if *p == pfn => *n += 1,
                _ => by_pfn.push((pfn, 1)),
            }
        }
        OwnPages {
            mode: (!by_pfn.is_empty()).then(MapcountMode::detect),
            by_pfn,
        }
    }

    /// A note for the report when the mapcount mode had to be assumed,
    /// given once per run.
    pub fn note(&self) -> Option<&'static str> {
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        (self.mode == Some(MapcountMode::Assumed)
            && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed))
        .then_some(ASSUMED_NOTE)
    }

    /// Whether pagewatch maps none of the target's pages.
    pub fn is_empty(&self) -> bool {
        self.by_pfn.is_empty()
    }

    /// Take pagewatch's own mappings out of page `pm`'s mapcount `count`
    /// (kpageflags `flags`): returns the corrected pagemap entry (exclusive
    /// when the target alone is left mapping a page whose mapcount is per
    /// page) and mapcount.
    pub fn discount(&self, pm: u64, flags: u64, count: u32) -> (u64, u32) {
        let Some(pfn) = PagemapEntry(pm).pfn() else {
            return (pm, count);
        };
        let Ok(i) = self.by_pfn.binary_search_by_key(&pfn, |&(p, _)| p) else {
            return (pm, count);
        };
        let mine = self.by_pfn[i].1;
        let large = has(flags, kpf::COMPOUND_HEAD) || has(flags, kpf::COMPOUND_TAIL);
        if large && self.mode == Some(MapcountMode::FolioAverage) {
            return (pm, count);
        }
        let left = count.saturating_sub(mine);
        if left <= 1 {
            (pm | PM_EXCLUSIVE, 1)
        } else {
            (pm, left)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::flags::PM_PRESENT;

    #[test]
    fn releases_compare_by_major_and_minor() {
        assert!(release_before("6.1.0-50-amd64", (6, 15)));
        assert!(release_before("6.12.95+deb12-amd64", (6, 15)));
        assert!(!release_before("6.18.44-fc-v1272", (6, 15)));
        assert!(!release_before("7.3.4+deb13-amd64", (6, 15)));
        assert!(!release_before("garbage", (6, 15)));
    }

    #[test]
    fn own_mappings_come_off_per_page_mapcounts() {
        let own = OwnPages {
            by_pfn: vec![(7, 1), (9, 2)],
            mode: Some(MapcountMode::PerPage),
        };
        let pm = PM_PRESENT | 7;
        assert_eq!(own.discount(pm, 0, 3), (pm, 2));
        assert_eq!(own.discount(pm, 0, 2), (pm | PM_EXCLUSIVE, 1));
        assert_eq!(
            own.discount(PM_PRESENT | 9, 0, 3),
            (PM_PRESENT | 9 | PM_EXCLUSIVE, 1)
        );
        assert_eq!(own.discount(PM_PRESENT | 8, 0, 3), (PM_PRESENT | 8, 3));
        // A large folio's average cannot be corrected; a small one can.
        let avg = OwnPages {
            mode: Some(MapcountMode::FolioAverage),
            ..own
        };
        let tail = 1 << kpf::COMPOUND_TAIL;
        assert_eq!(avg.discount(pm, tail, 3), (pm, 3));
        assert_eq!(avg.discount(pm, 0, 3), (pm, 2));
    }
}
