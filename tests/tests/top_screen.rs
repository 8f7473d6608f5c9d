//! `pagewatch top`'s live screen, driven under tmux as a user would: keys
//! sent with `send-keys`, the screen read with `capture-pane`. Every wait
//! is for something on the screen (or the pane's end), bounded.

use std::time::{Duration, Instant};

use pagewatch_tests::{
    FaultWorkload, faults_of, no_numa_balancing, pagewatch_bin, skip, skip_unless_root,
};

/// The tmux session's name on the test's private server.
const SESSION: &str = "pw";

/// What the pane's shell prints after pagewatch, before its exit status.
const EXITED: &str = "pagewatch exited with status";

/// A private tmux server (`tmux -L pw-test-PID`), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `command` in a detached session of `cols` x `rows` whose
    /// pane stays after the command exits (to read what it left on the
    /// screen).
    fn start(command: &str, cols: u16, rows: u16) -> Self {
        let tmux = Self {
            socket: format!("pw-test-{}", std::process::id()),
        };
        tmux.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            SESSION,
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            command,
            ";",
            "set-option",
            "-t",
            SESSION,
            "remain-on-exit",
            "on",
        ]);
        tmux
    }

    /// Runs a tmux command on this server; its stdout.
    fn run(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The visible screen.
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", SESSION])
    }

    /// Sends tmux key names (`Enter`, `Space`, `q`) to the pane.
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", SESSION];
        args.extend(keys);
        self.run(&args);
    }

    /// A tmux format of the pane, e.g. `#{pane_dead}`.
    fn format(&self, format: &str) -> String {
        self.run(&["display-message", "-p", "-t", SESSION, format])
            .trim()
            .to_owned()
    }

    /// Polls the screen until `ok` holds (60 s at most); returns it.
    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not on the screen within 60 s; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// A row of the process table: pid, command name and the numbers under
/// each heading.
struct Row {
    pid: u32,
    comm: String,
    values: Vec<(String, f64)>,
}

impl Row {
    fn get(&self, heading: &str) -> f64 {
        self.values
            .iter()
            .find(|(h, _)| h == heading)
            .unwrap_or_else(|| panic!("no column {heading}"))
            .1
    }
}

/// The process table on a 120-column screen: PID is 8 columns wide and
/// COMM (which may hold spaces) the next 16 after a space.
fn table(screen: &str) -> Vec<Row> {
    let mut lines = screen
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("PID "));
    let headings: Vec<String> = lines
        .next()
        .expect("no table heading on the screen")
        .split_whitespace()
        .skip(2)
        .map(str::to_owned)
        .collect();
    lines
        .take_while(|l| !l.contains("transitions of followed processes"))
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let chars: Vec<char> = l.chars().collect();
            let text = |from: usize, to: usize| -> String {
                chars[from.min(chars.len())..to.min(chars.len())]
                    .iter()
                    .collect::<String>()
                    .trim()
                    .to_owned()
            };
            let numbers = text(25, chars.len());
            Row {
                pid: text(0, 8).parse().expect("pid"),
                comm: text(9, 25),
                values: headings
                    .iter()
                    .cloned()
                    .zip(
                        numbers
                            .split_whitespace()
                            .map(|n| n.parse().expect("number")),
                    )
                    .collect(),
            }
        })
        .collect()
}

/// The interval number in the status line.
fn interval(screen: &str) -> u64 {
    let status = screen.lines().next().unwrap_or_default();
    let mut words = status.split_whitespace();
    words.find(|&w| w == "interval");
    words
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no interval in the status line {status:?}"))
}

/// The number of intervals held, from the footer's `PAUSED (N intervals held)`.
fn held(screen: &str) -> Option<u64> {
    let rest = screen.split("PAUSED (").nth(1)?;
    rest.split(' ').next()?.parse().ok()
}

/// The screen without its last line (the footer).
fn body(screen: &str) -> String {
    let lines: Vec<&str> = screen.trim_end().lines().collect();
    lines[..lines.len() - 1].join("\n")
}

/// The screen as a user meets it: a fault workload's row, found with the
/// comm filter, counts the faults the kernel counted for it: at least
/// those of its window (/proc/PID/stat minflt+majflt around it, as in
/// events.rs), at most all since before pagewatch started;
/// `>` sorts by TOTAL; the filter hid other processes; a pause holds the
/// screen still across intervals; a resize redraws at the new size; `q`
/// ends pagewatch with status 0, back on the normal screen with the
/// summary.
#[test]
fn top_screen_under_tmux() {
    const TEST: &str = "top_screen_under_tmux";
    if skip_unless_root(TEST) {
        return;
    }
    if std::process::Command::new("tmux")
        .arg("-V")
        .output()
        .is_err()
    {
        skip(
            TEST,
            "tmux is not installed (cargo xtask setup installs it)",
        );
        return;
    }
    let _numa = no_numa_balancing();
    // Started (and its warm-up done) before pagewatch: its only faults
    // under pagewatch are the window's.
    let mut wl = FaultWorkload::start(env!("CARGO_BIN_EXE_pw-faults"), 64);
    // The kernel's count of the workload's faults from before pagewatch
    // starts: pagewatch counts at least the window's and at most these
    // (a 6.12 guest once showed 16,385 for a 16,384-page window: a fault
    // around the window, in the workload's own reading or printing).
    let kernel_faults = {
        let pid = wl.pid.to_string();
        let before = faults_of(&pid);
        move || {
            let now = faults_of(&pid);
            (now.0 + now.1) - (before.0 + before.1)
        }
    };
    // The shell that runs it says how it exited (tmux's own
    // #{pane_dead_status} was seen missing, the process left a zombie).
    let command = format!(
        "'{}' top --interval 500ms; echo {EXITED} $?",
        pagewatch_bin().display()
    );
    let tmux = Tmux::start(&command, 120, 40);
    tmux.wait("the screen", |s| {
        s.starts_with("pagewatch top") && s.contains("reclaim:") && s.contains("q quit")
    });

    // Filter by comm, then run the window.
    tmux.keys(&["/"]);
    tmux.keys(&["-l", "pw-faults"]);
    tmux.keys(&["Enter"]);
    tmux.wait("the filter", |s| {
        s.contains("filter: pw-faults (Esc clear)")
    });
    let (delta, pages) = wl.run_window();
    assert_eq!(
        delta, pages,
        "the kernel counted one fault per touched page"
    );
    let screen = tmux.wait("pw-faults' row with the kernel's count", |s| {
        table(s).iter().any(|r| {
            let total = r.get("TOTAL");
            r.pid == wl.pid && total >= delta as f64 && total <= kernel_faults() as f64
        })
    });
    let rows = table(&screen);
    assert!(
        rows.iter().all(|r| r.comm.contains("pw-faults")),
        "the filter shows only pw-faults:\n{screen}"
    );

    // Clear the filter (Esc on its own: ESC then `>` reads as Alt-`>`),
    // sort by TOTAL.
    tmux.keys(&["Escape"]);
    tmux.wait("no filter", |s| !s.contains("filter:"));
    tmux.keys(&[">"]);
    let screen = tmux.wait("other processes, sorted by TOTAL", |s| {
        s.contains("sort: TOTAL") && table(s).iter().any(|r| !r.comm.contains("pw-faults"))
    });
    let totals: Vec<f64> = table(&screen).iter().map(|r| r.get("TOTAL")).collect();
    assert!(
        totals.windows(2).all(|w| w[0] >= w[1]),
        "TOTAL is not sorted largest first: {totals:?}\n{screen}"
    );

    // Pause: two intervals pass (the footer counts them), the screen
    // above the footer stays; resumed, it moves on.
    tmux.keys(&["Space"]);
    let paused = tmux.wait("paused", |s| held(s).is_some());
    let n = held(&paused).expect("held");
    let later = tmux.wait("two intervals held", |s| {
        held(s).is_some_and(|m| m >= n + 2)
    });
    assert_eq!(body(&paused), body(&later), "the screen moved while paused");
    tmux.keys(&["Space"]);
    tmux.wait("resumed", |s| {
        held(s).is_none() && interval(s) > interval(&paused)
    });

    // Resize: redrawn at 80 x 24, the footer on the last line, and still
    // updating.
    tmux.run(&["resize-window", "-t", SESSION, "-x", "80", "-y", "24"]);
    let small = tmux.wait("the screen at 80 x 24", |s| {
        let lines: Vec<&str> = s.lines().collect();
        lines.len() == 24
            && lines[0].starts_with("pagewatch top")
            && lines[23].contains("q quit")
            && lines.iter().all(|l| l.chars().count() <= 80)
    });
    tmux.wait("an interval after the resize", |s| {
        interval(s) > interval(&small)
    });

    // Quit: exit status 0, the normal screen back with the summary.
    tmux.keys(&["q"]);
    let screen = tmux.wait("pagewatch's exit", |s| s.contains(EXITED));
    let status = screen
        .split(EXITED)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default();
    assert_eq!(status, "0", "pagewatch's exit status after q:\n{screen}");
    assert_eq!(tmux.format("#{alternate_on}"), "0");
    let all = tmux.run(&["capture-pane", "-p", "-t", SESSION, "-S", "-"]);
    assert!(
        all.contains("summary:") && !screen.contains("q quit"),
        "not back on the normal screen with the summary:\n{all}"
    );
    wl.finish();
}
