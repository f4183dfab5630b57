//! `automon top` in a real terminal: tmux runs a shell, the test types `automon top` into it
//! against a running loop with real workers, reads the screen with `capture-pane`, and presses
//! keys with `send-keys` — waiting for conditions on the screen and in the events log, never for
//! durations. Skipped (with the reason printed) where tmux is not installed. Also `top` without a
//! terminal, and `get --watch`.

use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::time::Duration;

use super::service::wait_for;
use super::support::Cleanup;
use super::support::{Knobs, Migration};

/// Generous: the machine may be loaded.
const LIMIT: Duration = Duration::from_secs(300);

/// Workers that run for minutes: 8 shards of about 100 books at 0.3 s each, 4 at a time.
fn slow() -> Migration {
    Migration::new(&Knobs {
        books: 800,
        upload_delay: "0.3",
        batch_size: 5,
        stuck_after: "60s",
        discovery_grace: "120s",
        ..Knobs::default()
    })
}

/// `apply --watch` in the background; on drop it is killed, and so are its workers.
fn watch(m: &Migration) -> Cleanup {
    let daemon = m
        .automon()
        .args(["apply", "workerset.yaml", "--watch"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the loop");
    Cleanup {
        daemon: Some(daemon),
        state_dir: m.state_dir(),
    }
}

/// A tmux server of the test's own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// A detached 140×40 session running a plain shell in `dir`; `None` when tmux is missing.
    fn start(dir: &std::path::Path) -> Option<Self> {
        let found = Command::new("tmux")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return None;
        }
        let t = Self {
            socket: format!("automon-top-test-{}", std::process::id()),
        };
        let ok = t
            .cmd()
            .args([
                "new-session",
                "-d",
                "-s",
                "t",
                "-x",
                "140",
                "-y",
                "40",
                "-c",
            ])
            .arg(dir)
            .args([
                "env",
                "-u",
                "TMUX",
                "PS1=$ ",
                "bash",
                "--norc",
                "--noprofile",
                "-i",
            ])
            .status()
            .expect("run tmux");
        assert!(ok.success(), "tmux new-session failed");
        Some(t)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    /// Types `keys` (tmux key names, e.g. `Enter`, `Down`, or literal text).
    fn keys(&self, keys: &[&str]) {
        let ok = self
            .cmd()
            .args(["send-keys", "-t", "t"])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(ok.success());
    }

    /// The screen's text now.
    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "t"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pid of the process the pane's shell runs in the foreground (its one child), checked
    /// to be `automon top`.
    fn child_of_shell(&self) -> i32 {
        let out = self
            .cmd()
            .args(["display-message", "-p", "-t", "t", "#{pane_pid}"])
            .output()
            .expect("tmux display-message");
        let shell: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the pane's pid");
        let proc = std::path::Path::new("/proc");
        let children: Vec<i32> = automon::observe::proc::list_pids(proc)
            .into_iter()
            .filter(|p| {
                automon::observe::proc::read_stat(proc, *p).is_some_and(|s| s.ppid == shell)
            })
            .collect();
        assert_eq!(children.len(), 1, "the shell's children: {children:?}");
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", children[0])).unwrap_or_default();
        assert!(
            String::from_utf8_lossy(&cmdline).contains("top"),
            "{:?}",
            String::from_utf8_lossy(&cmdline)
        );
        children[0]
    }

    /// Polls the screen until `ok` holds; panics with the last screen after [`LIMIT`].
    fn wait(&self, what: &str, mut ok: impl FnMut(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

/// The worker ids of the worker list on a `top` screen (`│▸5    Stuck …`, `│ 2    Progr…`).
fn worker_rows(screen: &str) -> Vec<(u32, bool, String)> {
    screen
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix('│')?;
            let (selected, rest) = match rest.strip_prefix('▸') {
                Some(r) => (true, r),
                None => (false, rest.strip_prefix(' ')?),
            };
            let mut words = rest.split_whitespace();
            let id = words.next()?.parse().ok()?;
            let phase = words.next()?.to_string();
            l.contains('%').then_some((id, selected, phase))
        })
        .collect()
}

/// The books done on the overall line (`overall ███░░ 12.5%  book ids 100/800`).
fn books_done(screen: &str) -> Option<u64> {
    let line = screen.lines().find(|l| l.starts_with("overall "))?;
    let ids = line.split("book ids ").nth(1)?;
    ids.split('/').next()?.replace(',', "").trim().parse().ok()
}

#[test]
fn top_in_tmux_shows_the_workers_pauses_the_selected_one_and_restores_the_shell() {
    let m = slow();
    let Some(tmux) = Tmux::start(m.path()) else {
        eprintln!(
            "skipped: tmux is not installed (apt-get install tmux); `automon top` was not run"
        );
        return;
    };
    let _cleanup = watch(&m);
    // The loop answers on its socket once its first pass is done.
    wait_for("the loop's first pass", LIMIT, || {
        m.automon()
            .args(["get", "workerset.yaml"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let command = format!("{} top workerset.yaml", env!("CARGO_BIN_EXE_automon"));
    tmux.keys(&[&command, "Enter"]);
    // 8 workers, 4 of them running.
    let first = tmux.wait("8 workers on the screen", |s| {
        let rows = worker_rows(s);
        let mut ids: Vec<u32> = rows.iter().map(|r| r.0).collect();
        ids.sort_unstable();
        ids == (0..8).collect::<Vec<_>>()
    });
    assert!(first.contains("automon running (pid"), "{first}");
    // The overall bar moves.
    let s = tmux.wait("the overall line", |s| books_done(s).is_some());
    let before = books_done(&s).unwrap_or(0);
    tmux.wait("the overall progress to move", |s| {
        books_done(s).is_some_and(|n| n > before)
    });
    // A running worker selected (the list puts running ones before pending ones): pause it.
    let screen = tmux.wait("a running worker selected", |s| {
        worker_rows(s)
            .iter()
            .any(|r| r.1 && matches!(r.2.as_str(), "Progressing" | "Discovering"))
    });
    let (id, _, _) = worker_rows(&screen)
        .into_iter()
        .find(|r| r.1)
        .expect("a selected row");
    tmux.keys(&["p"]);
    tmux.wait("the confirmation question", |s| {
        s.contains(&format!("pause worker {id}? (y/n)"))
    });
    tmux.keys(&["y"]);
    // The loop's events confirm it, with top's request in words.
    let want = format!("(pause worker {id})`: worker {id}: paused by an operator");
    wait_for("the loop's event of the pause", LIMIT, || {
        m.events().contains(&want)
    });
    tmux.wait("the worker shown as Paused", |s| {
        worker_rows(s).iter().any(|r| r.0 == id && r.2 == "Paused")
    });
    // q: the screen is given back and the shell takes commands again.
    tmux.keys(&["q"]);
    tmux.wait("top gone from the screen", |s| !s.contains("automon top ·"));
    tmux.keys(&["echo shell-$((6*7))", "Enter"]);
    tmux.wait("the shell's answer", |s| s.contains("shell-42"));
    // SIGTERM gives the terminal back too, and top exits 128 + 15.
    tmux.keys(&["clear", "Enter"]);
    tmux.keys(&[&command, "Enter"]);
    tmux.wait("top again", |s| s.contains("automon top ·"));
    let top = tmux.child_of_shell();
    kill(Pid::from_raw(top), Signal::SIGTERM).expect("SIGTERM to top");
    tmux.wait("top gone after SIGTERM", |s| !s.contains("automon top ·"));
    tmux.keys(&["echo exit-$?", "Enter"]);
    tmux.wait("the shell's answer after SIGTERM", |s| {
        s.contains("exit-143")
    });
}

#[test]
fn top_without_a_terminal_exits_2_with_a_hint_to_use_get() {
    let m = Migration::new(&Knobs::default());
    let out = m
        .automon()
        .args(["top", "workerset.yaml"])
        .stdin(Stdio::null())
        .output()
        .expect("run top");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("automon get workerset.yaml --watch"),
        "{stderr}"
    );
    // No escape sequence was written: the terminal was never taken.
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
}

/// `get --watch` prints the table, then again on a change, and ends (exit 0) when every shard
/// is complete; each table is a whole `get` table.
#[test]
fn get_watch_reprints_the_table_on_every_change_until_every_shard_is_complete() {
    let m = Migration::new(&Knobs {
        books: 160,
        upload_delay: "0.05",
        ..Knobs::default()
    });
    let _cleanup = watch(&m);
    wait_for("the loop's first pass", LIMIT, || {
        m.automon()
            .args(["get", "workerset.yaml"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_automon"))
        .current_dir(m.path())
        .args(["get", "workerset.yaml", "--watch"])
        .timeout(super::support::PATIENCE)
        .output()
        .expect("run get --watch");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The tables, each from its header line to the next one's.
    let mut tables: Vec<String> = Vec::new();
    for line in stdout.lines() {
        if line.starts_with("WORKER ") {
            tables.push(String::new());
        }
        if let Some(t) = tables.last_mut() {
            t.push_str(line);
            t.push('\n');
        }
    }
    assert!(tables.len() >= 2, "one table only:\n{stdout}");
    // Each reprint shows a change: no two in a row are the same text.
    for pair in tables.windows(2) {
        assert_ne!(pair[0].trim(), pair[1].trim(), "{stdout}");
    }
    let last = tables.last().map_or("", String::as_str);
    assert!(last.contains("shards 8/8 complete"), "{last}");
}
