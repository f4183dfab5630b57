//! Frames of `top` drawn on ratatui's `TestBackend` from fixtures (no live run: the status,
//! events, history and clock are given), snapshotted with insta.

use std::collections::BTreeMap;

use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::model::{Dashboard, DiskGauge, History};
use super::render::{Ui, draw};
use crate::WorkerId;
use crate::cli::get::{LastFix, Overall, Status, WorkerRow};
use crate::clock::BootTime;
use crate::plan::{Memory, Phase, WorkerMemory};

/// Books per shard of the fixture: 2,000 books over 8 shards, like the demo.
const SHARD: u64 = 250;

/// The fixture's "now" on the boot clock: one hour after boot.
const NOW: BootTime = BootTime(3_600_000);

fn row(worker: u32, phase: Phase, done: u64) -> WorkerRow {
    let start = 1 + SHARD * u64::from(worker);
    let progressing = phase == Phase::Progressing;
    let running = matches!(
        phase,
        Phase::Progressing | Phase::Discovering | Phase::Stuck | Phase::Starting
    );
    let pid = 4100 + worker as i32;
    WorkerRow {
        worker,
        phase,
        reason: match phase {
            Phase::Completed => format!("shard done at book {}", start + SHARD - 1),
            Phase::Pending => "waiting for a free slot".into(),
            _ => format!(
                "pid {pid} at book {}; 4s since the last progress",
                start + done - 1
            ),
        },
        pid: running.then_some(pid),
        job: None,
        shard: Some((start, start + SHARD)),
        checkpoint: (done > 0).then_some(start + done - 1),
        percent: Some(done as f64 * 100.0 / SHARD as f64),
        rate_per_min: progressing.then_some(96.0),
        eta_seconds: progressing.then(|| (SHARD - done) * 60 / 96),
        last_progress_seconds: running.then_some(4),
        failed_attempts: 0,
        attempts_used: 0,
        max_attempts: 3,
        last_fix: None,
        next: if progressing {
            "stuck if silent until 12:00:34".into()
        } else {
            String::new()
        },
        params: BTreeMap::new(),
        differs: Vec::new(),
        previous_template: false,
        progress_missing: None,
    }
}

fn status(workers: Vec<WorkerRow>, desired: u32) -> Status {
    let keys_done: u64 = workers
        .iter()
        .map(|w| (w.percent.unwrap_or(0.0) * SHARD as f64 / 100.0) as u64)
        .sum();
    let keys_total = SHARD * workers.len() as u64;
    let rate: f64 = workers.iter().filter_map(|w| w.rate_per_min).sum();
    let running = workers
        .iter()
        .filter(|w| {
            matches!(
                w.phase,
                Phase::Progressing | Phase::Discovering | Phase::Stuck | Phase::Starting
            )
        })
        .count();
    Status {
        name: "calibre-migration".into(),
        unit: "book".into(),
        overall: Overall {
            shards_done: workers
                .iter()
                .filter(|w| w.phase == Phase::Completed)
                .count(),
            shards_total: workers.len(),
            keys_done,
            keys_total,
            items: Some(keys_done - keys_done / 50),
            rate_per_min: rate,
            eta_seconds: (rate > 0.0)
                .then(|| ((keys_total - keys_done) as f64 / rate * 60.0) as u64),
            desired,
            running,
            disk_util_percent: Some(23.0),
            disk_queue_depth: Some(0.4),
            scaling: format!("holding at {desired}: disk 23% busy, no worker stuck"),
            automon_pid: Some(4000),
            disk_note: None,
            completed_at: None,
        },
        workers,
    }
}

/// A history of `minutes` minutes in which every running worker of `status` advanced 96 keys a
/// minute, sampled every 5 s (as a loop with a 5 s interval does), ending at [`NOW`], from
/// its shard's start at the earliest; worker 2 slowed down in the last third.
fn history(status: &Status, minutes: u64) -> History {
    let mut h = History::default();
    let steps = minutes * 12;
    for step in 0..=steps {
        let t = BootTime(NOW.0 - (steps - step) * 5_000);
        let mut m = Memory::default();
        for w in &status.workers {
            let Some(c) = w.checkpoint else { continue };
            let behind = (steps - step) * 8;
            let slow_from = steps * 2 / 3;
            let slow = if w.worker == 2 && step > slow_from {
                (step - slow_from) * 4
            } else {
                0
            };
            let at = if w.rate_per_min.is_some() {
                c.saturating_sub(behind + slow)
            } else {
                c
            };
            m.workers.insert(
                WorkerId(w.worker),
                Box::new(WorkerMemory {
                    checkpoint: Some(at.max(w.shard.map_or(0, |s| s.0))),
                    ..WorkerMemory::default()
                }),
            );
        }
        h.record(&m, t);
    }
    h
}

fn events(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|l| (*l).to_string()).collect()
}

fn demo_events() -> Vec<String> {
    events(&[
        "2026-12-07T11:40:02.101Z  worker 0: started pid 4100: python3 examples/calibre-migration/migrate_worker.py --worker-id 0 --start-id 1 --end-id 251 --resume-from 0",
        "2026-12-07T11:40:02.180Z  worker 1: started pid 4101: python3 examples/calibre-migration/migrate_worker.py --worker-id 1 --start-id 251 --end-id 501 --resume-from 250",
        "2026-12-07T11:52:40.512Z  worker 0: shard complete at book 250",
        "2026-12-07T11:52:41.020Z  worker 4: started pid 4104 (slot freed by worker 0)",
        "2026-12-07T11:53:01.777Z  worker 1: shard complete at book 500",
        "2026-12-07T11:53:02.003Z  worker 5: started pid 4105 (slot freed by worker 1)",
        "2026-12-07T11:55:12.400Z  worker 3 exited with code 1 at book 901 (crash); restarting from its checkpoint",
        "2026-12-07T11:55:12.640Z  worker 3: started pid 4103 --resume-from 901",
    ])
}

fn demo_status() -> Status {
    let mut s = status(
        vec![
            row(0, Phase::Completed, SHARD),
            row(1, Phase::Completed, SHARD),
            row(2, Phase::Progressing, 163),
            row(3, Phase::Progressing, 171),
            row(4, Phase::Progressing, 88),
            row(5, Phase::Progressing, 61),
            row(6, Phase::Pending, 0),
            row(7, Phase::Pending, 0),
        ],
        4,
    );
    s.workers[3].attempts_used = 1;
    s.workers[3].last_fix = Some(LastFix {
        kind: "restart".into(),
        outcome: "ok",
    });
    s
}

fn dashboard(status: Status, events: &[String], minutes: u64) -> Dashboard {
    let h = history(&status, minutes);
    Dashboard::build(
        status,
        Vec::new(),
        DiskGauge {
            util: Some(23.0),
            normal: 50.0,
            saturated: 90.0,
        },
        events,
        &h,
        NOW,
        "12:00:30".into(),
    )
}

/// The frame's text, one line per row, trailing blanks trimmed.
fn frame(d: &Dashboard, ui: &mut Ui, width: u16, height: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(width, height)).expect("test backend");
    t.draw(|f| draw(f, d, ui)).expect("draw");
    text(t.backend().buffer())
}

/// The worker id of a line of the worker list (`│▸5    Stuck …` or `│ 2    Progressing …`).
fn row_id(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('│')?;
    let rest = rest.strip_prefix('▸').or_else(|| rest.strip_prefix(' '))?;
    let id = rest.split_whitespace().next()?;
    (id.chars().all(|c| c.is_ascii_digit()) && line.contains('%')).then_some(id)
}

/// The ids of the worker list's rows, top to bottom.
fn row_ids(frame: &str) -> Vec<&str> {
    frame.lines().filter_map(row_id).collect()
}

fn text(buf: &ratatui::buffer::Buffer) -> String {
    let area = buf.area;
    (0..area.height)
        .map(|y| {
            (0..area.width)
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn top_frame_of_the_demo_mid_run() {
    let d = dashboard(demo_status(), &demo_events(), 3);
    insta::assert_snapshot!(frame(&d, &mut Ui::default(), 140, 40));
}

#[test]
fn top_frame_of_the_demo_mid_run_in_80x24_collapses_panes() {
    let d = dashboard(demo_status(), &demo_events(), 3);
    let f = frame(&d, &mut Ui::default(), 80, 24);
    // Every worker and the overall bar stay; the trend and checkpoint columns go.
    let mut ids = row_ids(&f);
    ids.sort_unstable();
    assert_eq!(ids, ["0", "1", "2", "3", "4", "5", "6", "7"], "{f}");
    assert!(!f.contains("TREND"), "{f}");
    insta::assert_snapshot!(f);
}

fn stuck_status() -> (Status, Vec<String>) {
    let mut s = demo_status();
    let w = &mut s.workers[5];
    w.phase = Phase::Stuck;
    w.reason = "pid 4105 at book 1,311; no progress signal for 41s (stuck after 30s)".into();
    w.rate_per_min = None;
    w.eta_seconds = None;
    w.last_progress_seconds = Some(41);
    w.attempts_used = 3;
    w.failed_attempts = 2;
    w.last_fix = Some(LastFix {
        kind: "restart".into(),
        outcome: "failed",
    });
    w.next = "fix on the next pass".into();
    s.overall.rate_per_min -= 96.0;
    let mut ev = demo_events();
    ev.push("2026-12-07T11:59:49.120Z  worker 5: stuck: no progress signal for 41s (stuck after 30s); stopping pid 4105 (SIGTERM to its group)".into());
    ev.push("2026-12-07T12:00:20.004Z  ALERT: worker 5: 3 failed fix attempts (max_attempts 3); escalation alert_and_pause".into());
    (s, ev)
}

#[test]
fn top_frame_of_a_stuck_worker_with_an_alert() {
    let (s, ev) = stuck_status();
    let d = dashboard(s, &ev, 3);
    assert_eq!(d.alerts.len(), 2, "{:?}", d.alerts);
    let f = frame(&d, &mut Ui::default(), 140, 32);
    // Trouble first: the stuck worker is the list's first row.
    assert_eq!(row_ids(&f).first(), Some(&"5"), "{f}");
    insta::assert_snapshot!(f);
}

#[test]
fn top_frame_of_a_paused_worker() {
    let mut s = demo_status();
    let w = &mut s.workers[4];
    w.phase = Phase::Paused;
    w.reason = "paused by the operator (automon pause manifests/migration.yaml 4)".into();
    w.pid = None;
    w.rate_per_min = None;
    w.eta_seconds = None;
    w.last_progress_seconds = None;
    w.next = "waits for `automon resume`".into();
    s.overall.rate_per_min -= 96.0;
    s.overall.running -= 1;
    let mut ev = demo_events();
    ev.push("2026-12-07T12:00:11.310Z  operator `automon top manifests/migration.yaml (pause worker 4)`: worker 4 paused".into());
    ev.push(
        "2026-12-07T12:00:11.330Z  worker 4: stopping pid 4104 (paused by the operator)".into(),
    );
    let d = dashboard(s, &ev, 3);
    let mut ui = Ui {
        footer: Some("worker 4 paused".into()),
        ..Ui::default()
    };
    insta::assert_snapshot!(frame(&d, &mut ui, 140, 32));
}

#[test]
fn top_frame_when_every_shard_is_complete() {
    let s = status((0..8).map(|i| row(i, Phase::Completed, SHARD)).collect(), 4);
    let mut ev = demo_events();
    ev.push("2026-12-07T12:04:55.010Z  every shard is complete (2,000 books); exiting".into());
    let d = dashboard(s, &ev, 3);
    let f = frame(&d, &mut Ui::default(), 140, 32);
    assert!(f.contains("100.0%  book ids 2,000/2,000"), "{f}");
    insta::assert_snapshot!(f);
}

/// 1,000 workers: the list scrolls (the selection at the last row shows the bottom of the
/// list), troubled workers come first, and the frame is drawn from the same model.
#[test]
fn top_frame_of_1000_workers() {
    let phases = [
        Phase::Progressing,
        Phase::Progressing,
        Phase::Progressing,
        Phase::Completed,
        Phase::Pending,
    ];
    let workers: Vec<WorkerRow> = (0..1000u32)
        .map(|i| {
            let mut w = match i {
                _ if i % 250 == 7 => row(i, Phase::Stuck, 120),
                _ if i == 333 => row(i, Phase::Paused, 40),
                _ => {
                    let p = phases[(i % 5) as usize];
                    row(
                        i,
                        p,
                        if p == Phase::Completed {
                            SHARD
                        } else {
                            u64::from(i % 200) + 1
                        },
                    )
                }
            };
            if w.phase == Phase::Stuck {
                w.rate_per_min = None;
                w.eta_seconds = None;
            }
            w
        })
        .collect();
    let s = status(workers, 800);
    let d = dashboard(s, &demo_events(), 5);
    let mut ui = Ui::default();
    let top = frame(&d, &mut ui, 140, 40);
    // Stuck 7, 257, 507, 757 and paused 333: all before any healthy worker.
    assert_eq!(
        row_ids(&top)[..5],
        ["333", "7", "257", "507", "757"],
        "{top}"
    );
    insta::assert_snapshot!("top_frame_of_1000_workers_top", top);
    // End: the last worker in the order, scrolled into view.
    ui.selected = Some(999);
    let bottom = frame(&d, &mut ui, 140, 40);
    assert!(bottom.contains("│▸999 "), "{bottom}");
    insta::assert_snapshot!("top_frame_of_1000_workers_scrolled", bottom);
}

/// NO_COLOR: phases are told apart by name (and held ones in bold), never by colour alone.
#[test]
fn phases_are_coloured_unless_no_color() {
    let (s, ev) = stuck_status();
    let d = dashboard(s, &ev, 3);
    for colour in [true, false] {
        let mut t = Terminal::new(TestBackend::new(140, 32)).expect("backend");
        let mut ui = Ui {
            colour,
            ..Ui::default()
        };
        t.draw(|f| draw(f, &d, &mut ui)).expect("draw");
        let buf = t.backend().buffer();
        let y = (0..32)
            .find(|y| {
                let line: String = (0..10).map(|x| buf[(x, *y)].symbol()).collect();
                row_id(&format!("{line}%")) == Some("5")
            })
            .expect("worker 5's row");
        // PHASE starts after "│", the selection mark, 4 columns of ID and a space.
        let cell = &buf[(7u16, y)];
        assert_eq!(cell.symbol(), "S");
        if colour {
            assert_eq!(cell.fg, ratatui::style::Color::Yellow);
        } else {
            assert_eq!(cell.fg, ratatui::style::Color::Reset);
        }
    }
}

/// The details pane (Enter) draws over the list and keeps the footer.
#[test]
fn top_frame_with_a_workers_details() {
    let (s, ev) = stuck_status();
    let d = dashboard(s, &ev, 3);
    let mut ui = Ui {
        selected: Some(5),
        detail: Some((
            "worker 5".into(),
            vec![
                "phase: Stuck — pid 4105 at book 1,311; no progress signal for 41s".into(),
                "last diagnosis: none".into(),
                String::new(),
                "demo/migration_worker5.log (last lines):".into(),
                "  2026-12-07 11:59:08,113 - INFO - Uploading: book 1311".into(),
            ],
        )),
        ..Ui::default()
    };
    insta::assert_snapshot!(frame(&d, &mut ui, 100, 24));
}

/// Regression (fresh-clone trial): at 120x34 the details pane was clipped: long lines cut at
/// the border with nothing to say so, and a long log tail pushed the phase line off the top.
/// Now the head lines wrap, log lines end in `…`, and the log keeps its newest lines after a
/// row counting the ones left out.
#[test]
fn top_details_pane_fits_a_120x34_terminal() {
    let (s, ev) = stuck_status();
    let d = dashboard(s, &ev, 3);
    let mut lines = vec![
        format!(
            "phase: Stuck — pid 4105 at book 1,311; no progress signal for 41s; {}",
            "its log keeps repeating \"Uploading: book 1311\" (12 times) ".repeat(2)
        ),
        "next: fix on the next pass".into(),
        "last diagnosis: none".into(),
        String::new(),
        "demo/migration_worker5.log (last lines):".into(),
    ];
    for i in 0..40 {
        lines.push(format!(
            "  2026-12-07 11:59:{i:02},113 - INFO - Uploading: book 1311 to https://storage.example.com/a/very/long/path/that/goes/on/and/on/{i}.epub"
        ));
    }
    let mut ui = Ui {
        selected: Some(5),
        detail: Some(("worker 5".into(), lines)),
        ..Ui::default()
    };
    let screen = frame(&d, &mut ui, 120, 34);
    assert!(screen.contains("│phase: Stuck — pid 4105"), "{screen}");
    assert!(
        screen.contains("│  (12 times) its log keeps repeating"),
        "{screen}"
    );
    assert!(screen.contains("earlier lines not shown"), "{screen}");
    assert!(screen.contains("11:59:39,113"), "{screen}");
    assert!(screen.contains("…│"), "{screen}");
    insta::assert_snapshot!(screen);
}

#[test]
fn fit_detail_wraps_the_head_cuts_log_lines_and_keeps_the_newest() {
    use super::render::fit_detail;
    let lines: Vec<String> = vec![
        "phase: one two three four five six".into(),
        String::new(),
        "log:".into(),
        "  a".into(),
        "  b".into(),
        "  c".into(),
        "  a very long log line".into(),
    ];
    let fitted = fit_detail(&lines, 12, 20);
    assert_eq!(
        fitted,
        [
            "phase: one",
            "  two three",
            "  four five",
            "  six",
            "",
            "log:",
            "  a",
            "  b",
            "  c",
            "  a very lo…"
        ]
    );
    // Exactly the head's four rows: the head alone.
    assert_eq!(fit_detail(&lines, 12, 4).len(), 4);
    let fitted = fit_detail(&lines, 12, 9);
    assert_eq!(
        fitted[4..],
        ["", "log:", "  … 2 earli…", "  c", "  a very lo…"]
    );
    // A head taller than the pane ends in `…`.
    let fitted = fit_detail(&lines, 12, 2);
    assert_eq!(fitted, ["phase: one", "  two three…"]);
}
