//! `pagewatch top` on a terminal: a screen redrawn in place, like `top`.
//! A header with the system's reclaim, THP, compaction, migration, KSM and
//! balloon counts of the last interval; a table of the processes seen,
//! sorted by a column the user picks and filtered by command name; the
//! attributed transitions of the followed processes (`--pid`/`--comm`) in
//! a pane; the keys in a footer. Keys and resizes are read from crossterm's
//! event stream inside the future that ends the session, so the session's
//! loop never blocks on the keyboard; `q` (or Ctrl-C) ends the session
//! cleanly and the summary is printed on the normal screen. The terminal is
//! restored on every way out: the session's end, an error (a guard dropped)
//! and a panic (ratatui's panic hook).

use std::{
    cell::RefCell,
    collections::{BTreeMap, VecDeque},
    pin::Pin,
    rc::Rc,
};

use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use pagewatch::{
    aggregate::ProcessStats,
    note::Note,
    proc::{ProcRoot, ProcessKey},
    session::{IntervalReport, SessionConfig, SessionView, Sink, Summary, Target},
};
use ratatui::{
    DefaultTerminal, Frame,
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Cell, Paragraph, Row, Table},
};

use super::{
    session::{print_note, start},
    top::{TopSink, ms, page_events_line, reclaim_line, rows},
};

/// Runs `top` as a live screen; `lines` prints the summary at the end.
pub(super) fn run(config: SessionConfig, lines: TopSink) -> anyhow::Result<()> {
    let screen = Rc::new(RefCell::new(Screen {
        shown: None,
        state: State {
            follow: !matches!(config.target, Target::All),
            sort: FAULTS_COLUMN,
            ..State::default()
        },
    }));
    let mut sink = ScreenSink {
        screen: Rc::clone(&screen),
        lines,
        proc: config.proc.clone(),
    };
    let done = super::block_on(async {
        let mut session = start(config)?;
        session.drop_privileges();
        session.run(&mut sink, keys(Rc::clone(&screen))).await
    });
    // An error or a key reader's failure: the terminal is restored (the
    // guard is dropped) before the error is printed.
    let failed = screen.borrow_mut().close();
    done?;
    failed.map_or(Ok(()), Err)
}

/// Restores the terminal when dropped: raw mode off, the normal screen back.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// The terminal while the screen is up, and what it shows.
struct Screen {
    /// Dropped in order: the terminal (which shows the cursor again), then
    /// the guard.
    shown: Option<(DefaultTerminal, Restore)>,
    state: State,
}

/// A process seen in the session: its last interval and its faults since
/// the screen started.
#[derive(Clone)]
struct Process {
    comm: String,
    last: ProcessStats,
    total_faults: u64,
}

/// The header lines and rows of one interval, as drawn.
#[derive(Default)]
struct Shown {
    header: Vec<String>,
    rows: Vec<(ProcessKey, Process)>,
}

#[derive(Default)]
struct State {
    /// Whether processes are followed (`--pid`/`--comm`), so that
    /// transitions are attributed.
    follow: bool,
    processes: BTreeMap<ProcessKey, Process>,
    /// What is on the screen; while paused, intervals go to `held`.
    shown: Shown,
    held: Option<Shown>,
    /// Transitions and other per-process lines, newest first; while
    /// paused, the newest `log_held` are not drawn yet.
    log: VecDeque<String>,
    log_held: usize,
    sort: usize,
    filter: String,
    /// Typing a filter.
    editing: bool,
    paused: bool,
    /// Intervals that ended while paused.
    missed: u64,
    /// Notes said while the screen is up, printed when it closes.
    notes: Vec<Note>,
    /// A failure of drawing or reading keys; it ends the session.
    error: Option<anyhow::Error>,
}

/// Lines kept in the transitions pane.
const LOG_LINES: usize = 500;

/// What a column shows and sorts by.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Value<'a> {
    Text(&'a str),
    Count(u64),
    /// Nanoseconds, shown as milliseconds.
    Ns(u64),
}

type RowRef<'a> = &'a (ProcessKey, Process);

/// Where a column's value comes from.
enum Source {
    Pid,
    Comm,
    Count(fn(&Process) -> u64),
    Ns(fn(&Process) -> u64),
}

/// A column of the process table.
struct Column {
    name: &'static str,
    width: u16,
    source: Source,
}

impl Column {
    fn value<'a>(&self, (key, p): RowRef<'a>) -> Value<'a> {
        match self.source {
            Source::Pid => Value::Count(key.pid.into()),
            Source::Comm => Value::Text(&p.comm),
            Source::Count(f) => Value::Count(f(p)),
            Source::Ns(f) => Value::Ns(f(p)),
        }
    }

    /// Counts sort largest first, pid and name smallest first.
    fn descending(&self) -> bool {
        matches!(self.source, Source::Count(_) | Source::Ns(_))
    }
}

const fn column(name: &'static str, width: u16, source: Source) -> Column {
    Column {
        name,
        width,
        source,
    }
}

/// The process table's columns: the line output's, with TOTAL (faults
/// since the screen started) after FAULTS (the last interval's).
const COLUMNS: &[Column] = &[
    column("PID", 8, Source::Pid),
    column("COMM", 16, Source::Comm),
    column("FAULTS", 9, Source::Count(|p| p.last.faults.faults)),
    column("TOTAL", 10, Source::Count(|p| p.total_faults)),
    column("READ", 9, Source::Count(|p| p.last.faults.read)),
    column("WRITE", 9, Source::Count(|p| p.last.faults.write)),
    column("IFETCH", 7, Source::Count(|p| p.last.faults.ifetch)),
    column("PROT", 7, Source::Count(|p| p.last.faults.protection)),
    column("KADDR", 6, Source::Count(|p| p.last.faults.kernel_addr)),
    column(
        "DIRECT_MS",
        10,
        Source::Ns(|p| p.last.reclaim.direct_reclaim_ns),
    ),
    column(
        "MEMCG_MS",
        10,
        Source::Ns(|p| p.last.reclaim.memcg_reclaim_ns),
    ),
    column("THP_COLL", 8, Source::Count(|p| p.last.thp_collapses)),
];

/// The default sort column.
const FAULTS_COLUMN: usize = 2;

impl Screen {
    /// Raw mode and the alternate screen, with the guard that undoes them.
    fn open(&mut self) -> anyhow::Result<()> {
        let guard = Restore;
        let terminal = ratatui::try_init()?;
        self.shown = Some((terminal, guard));
        self.draw();
        Ok(())
    }

    /// Restores the terminal and prints the notes said meanwhile; returns
    /// the failure that ended the screen, if any.
    fn close(&mut self) -> Option<anyhow::Error> {
        self.shown = None;
        for note in self.state.notes.drain(..) {
            print_note(&note);
        }
        self.state.error.take()
    }

    /// Redraws, keeping a failure to end the session with.
    fn draw(&mut self) {
        let Some((terminal, _)) = &mut self.shown else {
            return;
        };
        if let Err(e) = terminal.draw(|f| self.state.render(f)) {
            self.state.error.get_or_insert(e.into());
        }
    }

    /// Handles a key; true when it quits.
    fn key(&mut self, key: KeyEvent) -> bool {
        let s = &mut self.state;
        let ctrl_c =
            key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c');
        if ctrl_c {
            return true;
        }
        if s.editing {
            match key.code {
                KeyCode::Enter => s.editing = false,
                KeyCode::Esc => {
                    s.editing = false;
                    s.filter.clear();
                }
                KeyCode::Backspace => {
                    s.filter.pop();
                }
                KeyCode::Char(c) => s.filter.push(c),
                _ => {}
            }
        } else {
            match key.code {
                KeyCode::Char('q') => return true,
                KeyCode::Char('<') | KeyCode::Left => {
                    s.sort = (s.sort + COLUMNS.len() - 1) % COLUMNS.len();
                }
                KeyCode::Char('>') | KeyCode::Right => s.sort = (s.sort + 1) % COLUMNS.len(),
                KeyCode::Char('/' | 'f') => {
                    s.editing = true;
                    s.filter.clear();
                }
                KeyCode::Esc => s.filter.clear(),
                KeyCode::Char(' ' | 'p') => s.pause(),
                _ => return false,
            }
        }
        self.draw();
        false
    }
}

impl State {
    fn pause(&mut self) {
        self.paused = !self.paused;
        if !self.paused {
            if let Some(held) = self.held.take() {
                self.shown = held;
            }
            self.log_held = 0;
            self.missed = 0;
        }
    }

    /// Takes in one interval: its processes, header and transitions.
    fn interval(
        &mut self,
        view: &mut SessionView<'_>,
        r: &IntervalReport,
        hidden: Option<u32>,
        proc: &ProcRoot,
    ) {
        for p in self.processes.values_mut() {
            p.last = ProcessStats::default();
        }
        for (key, stats) in rows(view, &r.tally.processes, hidden) {
            let p = self.processes.entry(key).or_insert_with(|| Process {
                comm: view.comms.name(key).to_owned(),
                last: ProcessStats::default(),
                total_faults: 0,
            });
            p.last = stats;
            p.total_faults += stats.faults.faults;
        }
        // Exited processes leave the table once they are idle.
        self.processes
            .retain(|key, p| p.last.faults.faults > 0 || proc.pid_exists(key.pid));
        let scans = view.scan_results(&r.tally);
        let mut header = vec![
            format!(
                "pagewatch top  {:.1}s  interval {}  events {}  dropped {}  processes {}",
                r.t,
                r.index,
                r.tally.events,
                r.dropped,
                self.processes.len()
            ),
            reclaim_line(&r.tally.system),
        ];
        header.push(
            page_events_line(&r.tally.system, &scans).unwrap_or_else(|| {
                "thp, compaction, migration, ksm, oom, balloon: none".to_owned()
            }),
        );
        let shown = Shown {
            header,
            rows: self
                .processes
                .iter()
                .map(|(key, p)| (*key, p.clone()))
                .collect(),
        };
        let mut lines: Vec<String> = r
            .transitions
            .iter()
            .map(|g| g.describe(view.comms.get(g.pid)))
            .collect();
        lines.extend(
            r.swap_returns
                .iter()
                .map(|s| s.describe(view.comms.get(s.pid))),
        );
        lines.extend(
            r.thp_coverage
                .iter()
                .map(|c| c.describe(view.comms.get(c.pid))),
        );
        lines.extend(r.hugetlb_pools.iter().map(|p| p.describe()));
        let new = lines.len();
        for line in lines {
            self.log.push_front(format!("{:>7.1}s {line}", r.t));
        }
        self.log.truncate(LOG_LINES);
        if self.paused {
            self.held = Some(shown);
            self.log_held = (self.log_held + new).min(self.log.len());
            self.missed += 1;
        } else {
            self.shown = shown;
        }
    }

    fn render(&self, f: &mut Frame<'_>) {
        let area = f.area();
        let header: Vec<Line<'_>> = self
            .shown
            .header
            .iter()
            .flat_map(|l| pack(l, area.width.into()))
            .map(Line::from)
            .collect();
        let pane = if self.follow {
            (area.height / 3).max(3)
        } else {
            3
        };
        let [head, table, log, foot] = Layout::vertical([
            Constraint::Length(u16::try_from(header.len()).unwrap_or(u16::MAX)),
            Constraint::Min(3),
            Constraint::Length(pane),
            Constraint::Length(1),
        ])
        .areas(area);
        f.render_widget(Paragraph::new(header), head);
        self.render_table(f, table);
        let log_lines: Vec<Line<'_>> = if self.follow {
            self.log
                .iter()
                .skip(if self.paused { self.log_held } else { 0 })
                .map(|l| Line::from(l.as_str()))
                .collect()
        } else {
            vec![Line::from(
                "follow processes with --pid or --comm to see their page transitions here",
            )]
        };
        f.render_widget(
            Paragraph::new(log_lines).block(
                Block::default()
                    .borders(Borders::TOP)
                    .title(" transitions of followed processes "),
            ),
            log,
        );
        f.render_widget(
            Paragraph::new(self.footer()).style(Style::default().add_modifier(Modifier::REVERSED)),
            foot,
        );
    }

    fn render_table(&self, f: &mut Frame<'_>, area: ratatui::layout::Rect) {
        let column = &COLUMNS[self.sort];
        let mut rows: Vec<RowRef<'_>> = self
            .shown
            .rows
            .iter()
            .filter(|(_, p)| p.comm.contains(self.filter.as_str()))
            .collect();
        rows.sort_by(|a, b| {
            let order = column.value(a).cmp(&column.value(b));
            let order = if column.descending() {
                order.reverse()
            } else {
                order
            };
            // Ties: most faults first, then by pid.
            order
                .then_with(|| b.1.last.faults.faults.cmp(&a.1.last.faults.faults))
                .then_with(|| a.0.cmp(&b.0))
        });
        let heading = Row::new(COLUMNS.iter().enumerate().map(|(i, c)| {
            let cell = Cell::from(c.name);
            if i == self.sort {
                cell.style(Style::default().add_modifier(Modifier::REVERSED))
            } else {
                cell
            }
        }))
        .style(Style::default().add_modifier(Modifier::BOLD));
        let body = rows.iter().map(|r| {
            Row::new(COLUMNS.iter().map(|c| match c.value(r) {
                Value::Text(t) => Cell::from(t.to_owned()),
                Value::Count(n) => Cell::from(Line::from(n.to_string()).right_aligned()),
                Value::Ns(ns) => Cell::from(Line::from(format!("{:.1}", ms(ns))).right_aligned()),
            }))
        });
        let widths = COLUMNS.iter().map(|c| Constraint::Length(c.width));
        f.render_widget(Table::new(body, widths).header(heading), area);
    }

    fn footer(&self) -> String {
        let mut footer = format!(
            " q quit  </> sort: {}  / filter  space pause",
            COLUMNS[self.sort].name
        );
        if self.editing {
            footer.push_str(&format!(
                "  filter: {}_ (Enter done, Esc clear)",
                self.filter
            ));
        } else if !self.filter.is_empty() {
            footer.push_str(&format!("  filter: {} (Esc clear)", self.filter));
        }
        if self.paused {
            footer.push_str(&format!("  PAUSED ({} intervals held)", self.missed));
        }
        footer
    }
}

/// `line`'s ` | `-separated parts packed into lines of at most `width`
/// columns (a part wider than that on its own line).
fn pack(line: &str, width: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in line.split(" | ") {
        match out.last_mut() {
            Some(last) if last.len() + 3 + part.len() <= width => {
                last.push_str(" | ");
                last.push_str(part);
            }
            _ => out.push(part.to_owned()),
        }
    }
    out
}

/// The sink of the screen: intervals update it, the summary goes to the
/// normal screen after it closes.
struct ScreenSink {
    screen: Rc<RefCell<Screen>>,
    lines: TopSink,
    proc: ProcRoot,
}

impl Sink for ScreenSink {
    fn tracing(&mut self) -> anyhow::Result<()> {
        self.screen.borrow_mut().open()
    }

    fn note(&mut self, note: &Note) -> anyhow::Result<()> {
        let mut screen = self.screen.borrow_mut();
        if screen.shown.is_some() {
            screen.state.notes.push(note.clone());
        } else {
            print_note(note);
        }
        Ok(())
    }

    fn interval(&mut self, view: &mut SessionView<'_>, r: &IntervalReport) -> anyhow::Result<()> {
        let mut screen = self.screen.borrow_mut();
        screen
            .state
            .interval(view, r, self.lines.hidden, &self.proc);
        screen.draw();
        Ok(())
    }

    fn finish(&mut self, view: &mut SessionView<'_>, s: &Summary) -> anyhow::Result<()> {
        let failed = self.screen.borrow_mut().close();
        self.lines.finish(view, s)?;
        failed.map_or(Ok(()), Err)
    }
}

/// The future that ends the session: reads keys and resizes, redrawing,
/// until `q` or Ctrl-C, or until reading fails (kept as the screen's error).
async fn keys(screen: Rc<RefCell<Screen>>) {
    use futures_core::Stream as _;
    let mut events = EventStream::new();
    loop {
        let event = std::future::poll_fn(|cx| Pin::new(&mut events).poll_next(cx)).await;
        let mut screen = screen.borrow_mut();
        match event {
            Some(Ok(Event::Key(key))) if key.kind == KeyEventKind::Press => {
                if screen.key(key) {
                    return;
                }
            }
            Some(Ok(Event::Resize(..))) => screen.draw(),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                screen.state.error = Some(anyhow::Error::new(e).context("reading the terminal"));
                return;
            }
            None => return,
        }
        if screen.state.error.is_some() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pack;

    #[test]
    fn header_lines_split_at_bars_to_fit() {
        let line = "reclaim: scanned 0 | kswapd 0 wakes 0.0ms | direct 0 0.0ms";
        assert_eq!(pack(line, 80), vec![line]);
        assert_eq!(
            pack(line, 41),
            vec![
                "reclaim: scanned 0 | kswapd 0 wakes 0.0ms",
                "direct 0 0.0ms"
            ]
        );
        // A part wider than the screen stands alone (ratatui clips it).
        assert_eq!(
            pack(line, 10),
            vec![
                "reclaim: scanned 0",
                "kswapd 0 wakes 0.0ms",
                "direct 0 0.0ms"
            ]
        );
    }
}
