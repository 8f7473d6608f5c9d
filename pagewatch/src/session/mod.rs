//! The tracing session shared by `top` and `record`: load the hooks, stream
//! the ring buffer through tokio's AsyncFd, fold events into per-interval
//! tallies and correlator evidence, snapshot the tracked processes every
//! interval (reading again only those that may have changed, see
//! [`crate::correlate::rescan`]) and diff them into attributed
//! transitions, and hand each
//! interval to a [`Sink`] (a table, JSON lines, a recording) until Ctrl-C,
//! SIGTERM, the configured duration or the caller's own stop condition.
//!
//! Any front end runs one: build a [`SessionConfig`], [`Session::start`] it,
//! and [`Session::run`] it with a [`Sink`] of its own.

mod interval;
mod output;

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use pagewatch_common::hook::Hook;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    time::MissedTickBehavior,
};

pub use interval::IntervalAssembly;
pub use output::{IntervalReport, SessionView, Sink, SnapshotWork, Summary, ThpScans};

use crate::{
    aggregate::Aggregator,
    correlate::{
        self, ProcessCounters,
        evidence::Evidence,
        hugepages::{HugepageTracker, PoolSample, VmaThp},
        numa::NodeMap,
        rescan::{ForeignCounters, ProcessStamp, RescanRule},
        swap::SwapLedger,
    },
    error::Error,
    event::{Decoder, EventKind},
    hooks::Family,
    kernel::{monotonic_ns, page_size, quirks::exact_rss_counters},
    note::{Note, Severity},
    privileges,
    probe::{Probe, ProbeOptions},
    proc::{CommCache, ProcRoot, ProcessKey},
    snapshot::{
        self,
        columns::{PageTable, ProcessTable, ProcessTableBuilder},
        scan::{KpageFiles, ScanOptions, scan_process_with},
        sysfs::Vmstat,
    },
};

/// Which processes to show, snapshot and record.
#[derive(Debug, Clone)]
pub enum Target {
    All,
    Pids(BTreeSet<u32>),
    Comm(String),
}

/// What a session traces and snapshots (built and checked by the front
/// end).
#[derive(Debug)]
pub struct SessionConfig {
    /// Time between reports and snapshots.
    pub interval: Duration,
    /// Stop after this long (None: until a signal or the caller's stop).
    pub duration: Option<Duration>,
    pub target: Target,
    pub probe: ProbeOptions,
    /// Snapshot the followed processes (all, when tracing everything) each
    /// interval and report transitions.
    pub snapshots: bool,
    /// The /proc and /sys the session reads.
    pub proc: ProcRoot,
}

/// A running session.
pub struct Session {
    config: SessionConfig,
    probe: Probe,
    ring: Option<RingBuf<MapData>>,
    decoder: Decoder,
    /// Per-process tallies by pid and start time: a reused pid is a new
    /// process.
    aggregator: Aggregator<ProcessKey>,
    evidence: Evidence,
    comms: CommCache,
    proc: ProcRoot,
    tracked: BTreeSet<u32>,
    /// Every process followed at some point (for output; `tracked` loses
    /// processes as they exit).
    followed: BTreeSet<u32>,
    /// Processes whose last thread exited in the current interval.
    exited: Vec<u32>,
    /// Whether exit events mark the exit that ends a process (`group_dead`,
    /// Linux 6.10+). Before, a process that had a thread exit in the
    /// interval is looked up at its end: it ended if no thread of it is
    /// alive (see [`ProcRoot::live_thread`]).
    group_dead_known: bool,
    /// Processes with a thread exit, on kernels without `group_dead`.
    maybe_ended: BTreeSet<u32>,
    /// Followed processes whose first snapshot is due, and whether it is
    /// their baseline (new processes that have not execed since their fork)
    /// or only a sample (just execed: see [`Session::first_snapshots`]).
    first_due: BTreeMap<u32, bool>,
    /// Counters of those first snapshots, reported with the interval's
    /// (for processes its closing snapshot no longer finds).
    first_counters: Vec<ProcessCounters>,
    kpage: KpageFiles,
    nodes: NodeMap,
    /// /proc/vmstat at the last interval.
    vmstat: Vmstat,
    last_snapshot: Option<PageTable>,
    swaps: SwapLedger,
    hugepages: HugepageTracker,
    /// The pools and THP coverage at the start, reported with the first
    /// interval.
    initial_hugepages: (Vec<PoolSample>, Vec<VmaThp>),
    /// How long the last snapshot took, and what it read.
    snapshot_time: Option<Duration>,
    snapshot_work: Option<SnapshotWork>,
    /// Which processes the next snapshot reads again.
    rescan: RescanRule,
    /// Whether /proc/PID/status shows RSS and swap exactly (else reclaim
    /// and swap anywhere make every process be read again).
    exact_rss: bool,
    transitions: u64,
    started: Instant,
    intervals: u64,
    decode_errors: u64,
    dropped_reported: u64,
    /// Notes gathered before the sink was at hand (start, privileges).
    notes: Vec<Note>,
    /// Whether the note on scan events without a page was given.
    said_scan_without_page: bool,
    /// Unexplained transitions of the last interval, waiting for the next
    /// interval's events (page moves, populated pages).
    assembly: IntervalAssembly,
}

impl Session {
    /// Loads and attaches the hooks (what was attached and skipped, and
    /// why, is in [`Session::probe`]); what the snapshots cannot see here
    /// is in notes handed to the sink when the session runs.
    pub fn start(config: SessionConfig) -> anyhow::Result<Self> {
        let proc = config.proc.clone();
        let (probe, ring) = Probe::load(&config.probe)?;
        let mut notes = Vec::new();
        let kpage = KpageFiles::for_snapshots(&proc);
        if let Some(note) = &kpage.ksm_unreliable {
            notes.push(Note::now(Severity::Warning, note.clone()));
        }
        if config.snapshots
            && let Some(why) = &kpage.missing
        {
            notes.push(Note::now(Severity::Warning, why.clone()));
        }
        let mut session = Self {
            decoder: Decoder::new(&probe.attached),
            probe,
            ring: Some(ring),
            aggregator: Aggregator::default(),
            evidence: Evidence::default(),
            comms: CommCache::new(proc.clone()),
            proc,
            tracked: BTreeSet::new(),
            followed: BTreeSet::new(),
            exited: Vec::new(),
            group_dead_known: false,
            maybe_ended: BTreeSet::new(),
            first_due: BTreeMap::new(),
            first_counters: Vec::new(),
            kpage: KpageFiles {
                // The correlator compares pagemap entries, PMD mappings and
                // kpageflags only: mapcounts (kpagecount) and memcgs
                // (kpagecgroup) would be read every interval for nothing.
                count: None,
                cgroup: None,
                ..kpage
            },
            nodes: NodeMap::read(&config.proc.sys),
            vmstat: Vmstat::read(&config.proc),
            last_snapshot: None,
            swaps: SwapLedger::default(),
            hugepages: HugepageTracker::default(),
            initial_hugepages: (Vec::new(), Vec::new()),
            snapshot_time: None,
            snapshot_work: None,
            rescan: RescanRule::default(),
            exact_rss: exact_rss_counters(),
            transitions: 0,
            started: Instant::now(),
            intervals: 0,
            decode_errors: 0,
            dropped_reported: 0,
            notes,
            said_scan_without_page: false,
            assembly: IntervalAssembly::default(),
            config,
        };
        session.group_dead_known = session.decoder.has_field(Hook::ProcessExit, "group_dead");
        if session.config.probe.filter_tgids
            && session.config.probe.families.contains(&Family::Process)
            && !session.decoder.attached(Hook::TaskNewtask)
        {
            session.notes.push(Note::now(
                Severity::Warning,
                "task/task_newtask is not attached, so the new processes of followed processes \
                 are not followed",
            ));
        }
        if session.config.snapshots && !session.exact_rss {
            session.notes.push(Note::now(
                Severity::Warning,
                "this kernel's per-process RSS counters are approximate, so reclaim or swap \
                 anywhere on the machine makes every followed process be read again",
            ));
        }
        session.refresh_targets(true)?;
        let ts_ns = monotonic_ns();
        if session.config.snapshots {
            let first = session.snapshot();
            session.initial_hugepages.1 = session.hugepages.thp(&first, ts_ns);
            session.last_snapshot = Some(first);
        }
        session.initial_hugepages.0 = session
            .hugepages
            .pools(snapshot::sysfs::hugetlb_pools(&session.proc), ts_ns);
        Ok(session)
    }

    /// Drops the capabilities the rest of the session does not need (see
    /// [`crate::privileges`]): call it once the output is open, before
    /// the session starts any thread. What was dropped, or a failure
    /// (tracing goes on; it only loses the hardening), is a note.
    pub fn drop_privileges(&mut self) {
        let note = match privileges::drop_unneeded() {
            Ok(d) => Note::now(
                Severity::Info,
                format!(
                    "dropped every capability but {}{}; no_new_privs set",
                    d.kept.join(", "),
                    if d.bounding {
                        ""
                    } else {
                        " (the bounding set is unchanged: no CAP_SETPCAP)"
                    }
                ),
            ),
            Err(e) => Note::now(Severity::Warning, format!("cannot drop capabilities: {e}")),
        };
        self.notes.push(note);
    }

    /// The probe (hooks attached and skipped).
    pub fn probe(&self) -> &Probe {
        &self.probe
    }

    fn view(&mut self) -> SessionView<'_> {
        SessionView {
            probe: &self.probe,
            decoder: &self.decoder,
            comms: &mut self.comms,
            tracked: &self.followed,
            target: &self.config.target,
        }
    }

    /// Adds matching processes to the in-kernel filter: `--pid`s once, at
    /// the start (afterwards their children join at fork, and a pid that
    /// exits is not followed again if reused), `--comm` every interval.
    fn refresh_targets(&mut self, initial: bool) -> anyhow::Result<()> {
        let wanted: Vec<u32> = match &self.config.target {
            Target::All => return Ok(()),
            Target::Pids(pids) if initial => pids.iter().copied().collect(),
            Target::Pids(_) => return Ok(()),
            Target::Comm(name) => self.proc.pids_named(name),
        };
        for pid in wanted {
            self.track(pid)?;
        }
        Ok(())
    }

    fn track(&mut self, pid: u32) -> anyhow::Result<()> {
        self.followed.insert(pid);
        if self.tracked.insert(pid) {
            self.probe.track_tgid(pid)?;
            self.comms.get(pid);
        }
        Ok(())
    }

    /// Snapshot of the tracked processes (every process when tracing all)
    /// that still exist, in pid order. One that exits mid-scan is normal:
    /// it is left out, or kept with what was read before it went (and
    /// dropped once its exit is drained: [`IntervalAssembly::without_ended`]). A
    /// process that cannot have changed since the last snapshot (see
    /// [`crate::correlate::rescan`]) is carried over without a read;
    /// the others are read VMA batch by VMA batch straight into their
    /// tables.
    fn snapshot(&mut self) -> PageTable {
        let root = self.proc.clone();
        let pids: Vec<u32> = match self.config.target {
            Target::All => snapshot::select::all_pids(&root).unwrap_or_default(),
            _ => self.tracked.iter().copied().collect(),
        };
        let all_because = self
            .rescan
            .begin(ForeignCounters::read(&root, !self.exact_rss));
        let mut work = SnapshotWork {
            all_because,
            ..SnapshotWork::default()
        };
        let mut procs = Vec::with_capacity(pids.len());
        for pid in pids {
            // A process whose threads have all exited has no memory left.
            let Some(reader) = root.live_thread(pid) else {
                continue;
            };
            let stamp = ProcessStamp::read(&root, reader);
            let last = self.last_snapshot.as_ref().and_then(|t| t.process(pid));
            let rescan =
                self.rescan
                    .must_rescan(pid, stamp, work.all_because.is_some(), last.is_some());
            if let Some(table) = last.filter(|_| !rescan) {
                work.carried += 1;
                work.carried_pages += table.len() as u64;
                procs.push(Arc::clone(table));
                continue;
            }
            if let Some(table) = self.read_process(&root, pid, reader, stamp) {
                if work.all_because.is_none() {
                    work.rescanned_pids.push(pid);
                }
                work.rescanned += 1;
                work.rescanned_pages += table.len() as u64;
                procs.push(Arc::new(table));
            }
        }
        self.snapshot_work = Some(work);
        PageTable::from_processes(procs)
    }

    /// Reads process `pid` (a thread group) through its live thread
    /// `reader` into a table, sized by its `stamp`; None if it went first.
    fn read_process(
        &self,
        root: &ProcRoot,
        pid: u32,
        reader: u32,
        stamp: Option<ProcessStamp>,
    ) -> Option<ProcessTable> {
        let page_kb = (page_size() / 1024).max(1);
        let pages = stamp.map_or(0, |s| {
            (s.rss_anon_kb + s.rss_file_kb + s.rss_shmem_kb + s.swap_kb) / page_kb
        });
        let mut table = ProcessTableBuilder::new(pid, pages as usize);
        let mut info = scan_process_with(
            root,
            &self.kpage,
            reader,
            &ScanOptions::default(),
            |vi, b, _| table.add(vi, b),
        )
        .ok()?;
        // Read through a thread, kept as the process.
        info.pid = pid;
        Some(table.finish(&info))
    }

    /// The first snapshot of each process followed (or execed) since the
    /// last drain, taken now rather than at the next interval so that a
    /// process shorter than an interval is seen (its counters are that
    /// interval's sample if it is gone by the interval's end). A new
    /// process's snapshot is also its baseline in the last snapshot, so the
    /// pages it shares with its parent are not reported as its faults. An
    /// exec's is not: the process's baseline stays what it was before the
    /// exec, so every page of the new image is still reported, as faulted
    /// in, at the interval's end (and the old image's as unmapped). A
    /// process already gone has no snapshot; what it did is still counted
    /// from its events.
    fn first_snapshots(&mut self) {
        if self.first_due.is_empty() {
            return;
        }
        let due = std::mem::take(&mut self.first_due);
        let Some(last) = self.last_snapshot.take() else {
            return;
        };
        let root = self.proc.clone();
        let mut procs: Vec<Arc<ProcessTable>> = last
            .processes()
            .iter()
            .filter(|p| due.get(&p.pid) != Some(&true))
            .cloned()
            .collect();
        for (pid, baseline) in due {
            let Some(reader) = root.live_thread(pid) else {
                continue;
            };
            let stamp = ProcessStamp::read(&root, reader);
            if let Some(table) = self.read_process(&root, pid, reader, stamp) {
                let table = Arc::new(table);
                let alone = PageTable::from_processes(vec![Arc::clone(&table)]);
                self.first_counters.retain(|c| c.pid != pid);
                self.first_counters
                    .extend(correlate::counters(&alone, &self.nodes));
                if baseline {
                    procs.push(table);
                }
            }
        }
        self.last_snapshot = Some(PageTable::from_processes(procs));
    }

    /// Runs until a signal, `--duration`, or `stop` completes.
    pub async fn run(
        mut self,
        sink: &mut impl Sink,
        stop: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
        let mut sigterm =
            signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.interval,
            self.config.interval,
        );
        // A snapshot longer than the interval delays the next tick rather
        // than making the missed ones fire back to back.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let stop_at = self
            .config
            .duration
            .map(|d| tokio::time::Instant::now() + d);
        let deadline = async {
            match stop_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        tokio::pin!(stop);
        let ring = self
            .ring
            .take()
            .context("internal: ring buffer already polled")?;
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged,
        // for as long as the AsyncFd owns the RingBuf.
        let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| Error::Poll(e.into_parts().1))?;
        self.flush_notes(sink)?;
        sink.tracing()?;
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard.map_err(Error::Poll)?;
                    // Still readable when the drain stopped short: the
                    // next turn (or a tick, picked as fairly) goes on.
                    if self.drain(guard.get_inner_mut(), sink)? {
                        guard.clear_ready();
                    }
                    self.first_snapshots();
                }
                _ = ticker.tick() => {
                    let after = self.next_snapshot();
                    // What a flood adds after the snapshot waits for the
                    // next interval.
                    self.drain(ring.get_mut(), sink)?;
                    self.end_interval(sink, after, false)?;
                    self.refresh_targets(false)?;
                    self.first_snapshots();
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                () = &mut deadline => break,
                () = &mut stop => break,
            }
        }
        let after = self.next_snapshot();
        self.drain(ring.get_mut(), sink)?;
        // The last, partial interval, unless the stop fell on a tick (and
        // nothing is left to report).
        if self.aggregator.has_events()
            || self.assembly.is_waiting()
            || self.dropped_reported != self.drops_per_cpu()?.iter().sum::<u64>()
        {
            self.end_interval(sink, after, true)?;
        }
        self.finish(sink)
    }

    /// Reads the ring buffer until it is empty (true) or one buffer's
    /// worth of records has been read (false): under a flood that the
    /// kernel refills as fast as this reads, an unbounded drain never
    /// returned, so no interval ended (a 12 s interval in a 7.3 guest whose
    /// NUMA balancing migrated a swapping process's pages), and the
    /// snapshots that tell a swap-out from a refault were not taken.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, sink: &mut impl Sink) -> anyhow::Result<bool> {
        let mut budget = self.config.probe.ring_buffer_bytes as usize;
        loop {
            if budget == 0 {
                return Ok(false);
            }
            let Some(item) = ring.next() else {
                return Ok(true);
            };
            // Each record also takes an 8-byte header in the buffer.
            budget = budget.saturating_sub(item.len() + 8);
            let event = match self.decoder.decode(&item) {
                Ok(event) => event,
                Err(e) => {
                    self.decode_errors += 1;
                    log::debug!("undecodable record: {e}");
                    continue;
                }
            };
            // Look the process (start time and name) up on first sight,
            // while it most likely still exists; an exit event names those
            // already gone.
            let process = self.comms.key_at(event.tgid, event.ts_ns);
            match event.kind {
                EventKind::ProcessExit {
                    pid,
                    group_dead,
                    comm,
                } => {
                    if pid == i64::from(event.tgid) {
                        self.comms.learn(event.tgid, &comm);
                    }
                    // A process ends with its last thread, not its leader.
                    if !self.group_dead_known {
                        self.maybe_ended.insert(event.tgid);
                    } else if group_dead != 0 {
                        self.exited.push(event.tgid);
                    }
                }
                // Exec keeps the process and renames it (and replaces its
                // memory: it is read again at once, see first_snapshots).
                EventKind::ProcessExec { .. } => {
                    self.comms.refresh(event.tgid);
                    self.rescan.touch(event.tgid);
                    if self.tracked.contains(&event.tgid) {
                        self.first_due.insert(event.tgid, false);
                    }
                }
                EventKind::ScanPmd { pfn: u64::MAX, .. } if !self.said_scan_without_page => {
                    self.said_scan_without_page = true;
                    sink.note(&Note::now(
                        Severity::Warning,
                        "this kernel's mm_khugepaged_scan_pmd events name no page \
                         (scan_pfn -1): scan results are tallied system-wide \
                         (thp_scan_results) but not per process and VMA; collapses are still \
                         attributed through their isolation events",
                    ))?;
                }
                // A new process (a new thread is part of its process and
                // changes nothing here). The kernel filter already took
                // the child of a followed process in; it is followed too.
                EventKind::TaskNew { pid, .. } if !event.kind.is_new_thread() => {
                    self.rescan.touch(event.tgid);
                    if let Ok(child) = u32::try_from(pid) {
                        // If its pid was used before, it is not the process
                        // that had it (this event precedes every event of
                        // the child in the ring).
                        self.comms.forked(child, event.ts_ns);
                        if !matches!(self.config.target, Target::All)
                            && self.tracked.contains(&event.tgid)
                        {
                            self.tracked.insert(child);
                            self.followed.insert(child);
                            self.first_due.insert(child, true);
                        }
                    }
                }
                // Pages move before pgmigrate_success does (it counts a
                // whole migrate_pages() call at its end): every process is
                // read again while they move.
                EventKind::MigratePagesStart { .. }
                | EventKind::SetMigrationPte { .. }
                | EventKind::RemoveMigrationPte { .. } => {
                    self.rescan.foreign_event("migration");
                }
                // The kernel names the victim's thread: count its process.
                EventKind::OomVictim { pid, .. } => {
                    if let Ok(tid) = u32::try_from(pid) {
                        let tgid = self.proc.tgid_of(tid).unwrap_or(tid);
                        let victim = self.comms.key_at(tgid, event.ts_ns);
                        self.aggregator.add_oom_victim(victim);
                    }
                }
                _ => {}
            }
            let comms = &mut self.comms;
            self.evidence
                .add(&event, &self.decoder, |tgid| comms.get(tgid).to_owned());
            self.aggregator.add_for(&event, process);
            sink.event(&item, &event)?;
        }
    }

    /// Drops per CPU summed over every hook.
    fn drops_per_cpu(&self) -> anyhow::Result<Vec<u64>> {
        let mut per_cpu: Vec<u64> = Vec::new();
        for hook in Hook::ALL {
            for (cpu, n) in self.probe.drops(hook)?.into_iter().enumerate() {
                if per_cpu.len() <= cpu {
                    per_cpu.resize(cpu + 1, 0);
                }
                per_cpu[cpu] += n;
            }
        }
        Ok(per_cpu)
    }

    /// The snapshot that ends an interval, taken before the interval's last
    /// drain of the ring buffer: an event emitted while the (slow) scan ran
    /// then belongs to this interval, and its PFN resolves against the
    /// previous snapshot, where the page it names was still mapped. (The
    /// collapse tracepoints fire after the PMD is installed; draining first
    /// would leave such an event to the next interval, whose previous
    /// snapshot already shows the THP.)
    fn next_snapshot(&mut self) -> Option<PageTable> {
        let started = Instant::now();
        let after = self.last_snapshot.is_some().then(|| self.snapshot());
        self.snapshot_time = after.as_ref().map(|_| started.elapsed());
        after
    }

    /// Ends an interval with the snapshot `after` (taken by the caller);
    /// `last` when the session stops after it.
    fn end_interval(
        &mut self,
        sink: &mut impl Sink,
        after: Option<PageTable>,
        last: bool,
    ) -> anyhow::Result<()> {
        // The snapshot (taken by the caller) first, then vmstat: a change
        // the snapshot shows was counted by this read or an earlier one.
        let now = Vmstat::read(&self.proc);
        let delta = now.since(&self.vmstat);
        self.vmstat = now;
        // Balloon activity from vmstat: counted, and evidence of balloon
        // pressure even where the balloon hooks cannot attach.
        self.aggregator
            .add_balloon_vmstat(delta.balloon_inflate, delta.balloon_deflate);
        if delta.balloon_inflate > 0 {
            self.evidence.set_balloon_inflating();
        }
        self.evidence
            .set_thp_splits(delta.thp_split_pmd, delta.thp_split_page);
        let tally = self.aggregator.take_interval();
        self.intervals += 1;
        // Kernels before 6.10: a process with a thread exit ended if none
        // of its threads is alive now (or its pid is another process's).
        let ended: Vec<u32> = self
            .maybe_ended
            .iter()
            .copied()
            .filter(|&tgid| {
                let start = self.comms.key(tgid).start_ticks;
                self.proc.live_thread(tgid).is_none()
                    || self.proc.stat_fields(tgid).is_some_and(|s| s.1 != start)
            })
            .collect();
        for tgid in ended {
            self.maybe_ended.remove(&tgid);
            self.exited.push(tgid);
        }
        let dropped_per_cpu = self.drops_per_cpu()?;
        let dropped_total: u64 = dropped_per_cpu.iter().sum();
        let dropped = dropped_total - self.dropped_reported;
        self.dropped_reported = dropped_total;
        let ts_ns = monotonic_ns();
        let mut evidence = std::mem::take(&mut self.evidence);
        let mut thp_scans = Vec::new();
        let mut counters = Vec::new();
        let (mut hugetlb_pools, mut thp_coverage) = std::mem::take(&mut self.initial_hugepages);
        hugetlb_pools.extend(
            self.hugepages
                .pools(snapshot::sysfs::hugetlb_pools(&self.proc), ts_ns),
        );
        let snapshot_time = self.snapshot_time.take();
        let snapshot_work = self.snapshot_work.take();
        let found = match (self.last_snapshot.take(), after) {
            (Some(before), Some(after)) => {
                // A process inside a MAP_POPULATE mmap() is diffed once the
                // call has returned: its table stays the one before until
                // then, so the populated pages get their cause page by page.
                let after = IntervalAssembly::without_ended(after, &self.exited);
                let after =
                    IntervalAssembly::hold(&before, after, &evidence.populating_processes(ts_ns));
                evidence.resolve_pfns(&before, &after);
                thp_scans = IntervalAssembly::thp_scans(&evidence, &self.decoder, &before, &after);
                let mut t = correlate::diff(
                    &before,
                    &after,
                    &evidence,
                    &self.nodes,
                    &mut self.swaps,
                    ts_ns,
                );
                let followed =
                    (!matches!(self.config.target, Target::All)).then_some(&self.followed);
                t.extend(correlate::unseen_collapses(&evidence, followed, ts_ns));
                self.evidence.inherit(&evidence);
                counters = correlate::counters(&after, &self.nodes);
                // First snapshots of processes gone by the interval's end.
                let gone: Vec<ProcessCounters> = std::mem::take(&mut self.first_counters)
                    .into_iter()
                    .filter(|c| after.process(c.pid).is_none())
                    .collect();
                counters.extend(gone);
                thp_coverage.extend(self.hugepages.thp(&after, ts_ns));
                self.last_snapshot = Some(after);
                t
            }
            _ => Vec::new(),
        };
        // Transitions whose evidence can come late and that no event of their
        // interval explains wait one interval (see Evidence::can_arrive_late):
        // mm_migrate_pages fires when a whole migrate_pages() call ends, mmap
        // returns after MAP_POPULATE filled the range. Those still
        // unexplained then are reported unexplained.
        let transitions = self.assembly.settle(found, &evidence, last);
        self.transitions += transitions.len() as u64;
        let report = IntervalReport {
            index: self.intervals,
            t: self.started.elapsed().as_secs_f64(),
            ts_ns,
            tally,
            dropped,
            dropped_total,
            dropped_per_cpu,
            transitions,
            thp_scans,
            counters,
            swap_returns: self.swaps.take(ts_ns),
            hugetlb_pools,
            thp_coverage,
            snapshot_time,
            snapshot_work,
        };
        let mut view = self.view();
        sink.interval(&mut view, &report)?;
        // Exited processes leave the filter, the followed set and the name
        // cache after their last report, so a reused pid is a new process.
        for pid in std::mem::take(&mut self.exited) {
            if self.tracked.remove(&pid) {
                self.probe.untrack_tgid(pid)?;
            }
            self.comms.forget(pid);
        }
        let tracked = &self.tracked;
        self.rescan.retain(|pid| tracked.contains(&pid));
        self.maybe_ended.retain(|pid| tracked.contains(pid));
        self.comms.end_interval();
        Ok(())
    }

    fn finish(mut self, sink: &mut impl Sink) -> anyhow::Result<()> {
        let dropped_per_cpu = self.drops_per_cpu()?;
        let mut dropped_per_hook = BTreeMap::new();
        for hook in Hook::ALL {
            let n: u64 = self.probe.drops(hook)?.iter().sum();
            if n > 0 {
                dropped_per_hook.insert(crate::hooks::spec(hook).program, n);
            }
        }
        let summary = Summary {
            end_ns: monotonic_ns(),
            total: self.aggregator.total().clone(),
            dropped_per_cpu,
            dropped_per_hook,
            decode_errors: self.decode_errors,
            intervals: self.intervals,
            duration_s: self.started.elapsed().as_secs_f64(),
            transitions: self.transitions,
        };
        let dropped: u64 = summary.dropped_per_cpu.iter().sum();
        if dropped > 0 {
            sink.note(&Note::now(
                Severity::Warning,
                format!(
                    "{dropped} events were dropped because the ring buffer was full; \
                     raise --ring-buffer-size"
                ),
            ))?;
        }
        let mut view = self.view();
        sink.finish(&mut view, &summary)
    }

    /// Hands the notes gathered while no sink was at hand to `sink`.
    fn flush_notes(&mut self, sink: &mut impl Sink) -> anyhow::Result<()> {
        for note in std::mem::take(&mut self.notes) {
            sink.note(&note)?;
        }
        Ok(())
    }
}
