//! Draws one frame of `top` from a [`Dashboard`] and the [`Ui`] state: a title line, the overall
//! progress bar and figures, the throughput chart, the disk gauge with its scaling thresholds and
//! the last scaling decision, the worker list (trouble first, scrolling), the alerts and recent
//! events panes, and a footer with the keys or the last operator outcome. Pure: the same model
//! and state give the same frame (the snapshot tests draw on ratatui's `TestBackend`).
//!
//! Panes collapse by priority as the terminal shrinks: the events pane goes first, then the
//! alerts pane; below 110 columns the worker list drops its checkpoint and trend columns; the
//! worker list and the overall lines always stay.

use std::time::Duration;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState};

use super::model::{Dashboard, sorted};
use crate::cli::get::WorkerRow;
use crate::manifest::duration::format_duration;
use crate::plan::Phase;
use crate::text::count;

/// What the person did to the screen: the selected worker, the details pane, the footer line.
#[derive(Debug, Default)]
pub struct Ui {
    /// The selected worker's id (kept across re-sorting).
    pub selected: Option<u32>,
    /// The worker list's scroll position and selected row.
    pub table: TableState,
    /// The details pane of a worker, when open: its title and lines.
    pub detail: Option<(String, Vec<String>)>,
    /// The footer line instead of the keys: a question, a request in flight, its outcome.
    pub footer: Option<String>,
    /// Colours on (off with `NO_COLOR`).
    pub colour: bool,
}

/// The keys, as the footer shows them.
pub const KEYS: &str = "↑/↓ select  p pause  r resume  Enter details  q quit";

fn phase_style(phase: Phase, colour: bool) -> Style {
    if !colour {
        return match phase {
            Phase::Conflict | Phase::Failed | Phase::Paused | Phase::Stuck => {
                Style::new().add_modifier(Modifier::BOLD)
            }
            _ => Style::new(),
        };
    }
    let c = match phase {
        Phase::Progressing | Phase::Completed => Color::Green,
        Phase::Discovering | Phase::Starting | Phase::Pending | Phase::Queued => Color::Cyan,
        Phase::Stuck | Phase::BackingOff | Phase::Stopping | Phase::Parked | Phase::Unknown => {
            Color::Yellow
        }
        Phase::Paused | Phase::Failed | Phase::Conflict => Color::Red,
        Phase::Stopped => Color::Reset,
    };
    Style::new().fg(c)
}

/// A bar of `width` cells filled to `fraction` (0–1), in eighths: `█████▌░░░░`.
pub fn bar(fraction: f64, width: usize) -> String {
    const PARTS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let eighths = (fraction.clamp(0.0, 1.0) * width as f64 * 8.0).round() as usize;
    let full = eighths / 8;
    let mut out: String = "█".repeat(full);
    if full < width {
        let part = eighths % 8;
        out.push(if part == 0 { '░' } else { PARTS[part] });
        out.push_str(&"░".repeat(width - full - 1));
    }
    out
}

/// A sparkline of `width` cells from `values` (grouped by their maximum): ` ▁▂▃▅▇█`; a zero is
/// a blank.
pub fn spark(values: &[u64], width: usize) -> String {
    const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if values.is_empty() || width == 0 {
        return String::new();
    }
    let grouped: Vec<u64> = (0..width)
        .map(|i| {
            let a = i * values.len() / width;
            let b = ((i + 1) * values.len() / width).max(a + 1);
            values[a..b.min(values.len())]
                .iter()
                .copied()
                .max()
                .unwrap_or(0)
        })
        .collect();
    let top = grouped.iter().copied().max().unwrap_or(0).max(1);
    grouped
        .iter()
        .map(|v| match v {
            0 => ' ',
            v => LEVELS[((v * 8 - 1) / top).min(7) as usize],
        })
        .collect()
}

fn ago(d: Duration) -> String {
    format_duration(d)
}

/// Draws the frame.
pub fn draw(frame: &mut Frame, d: &Dashboard, ui: &mut Ui) {
    let area = frame.area();
    let chart_height = if area.height >= 40 { 3 } else { 1 };
    let fixed = 1 + 2 + chart_height + 1 + 1;
    let rest = area.height.saturating_sub(fixed);
    let need = d.status.workers.len() as u16 + 3;
    let mut bottom = if rest >= 14 {
        (rest / 3).clamp(5, 14)
    } else {
        0
    };
    if rest.saturating_sub(bottom) > need {
        bottom = rest - need;
    }
    let [title, overall, chart, disk, workers, panes, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(2),
        Constraint::Length(chart_height),
        Constraint::Length(1),
        Constraint::Length(rest - bottom),
        Constraint::Length(bottom),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_title(frame, d, title);
    draw_overall(frame, d, overall);
    draw_chart(frame, d, chart, ui.colour);
    draw_disk(frame, d, disk, ui.colour);
    draw_workers(frame, d, ui, workers);
    draw_panes(frame, d, panes);
    let text = ui.footer.clone().unwrap_or_else(|| KEYS.to_string());
    frame.render_widget(
        Paragraph::new(text).style(Style::new().add_modifier(Modifier::REVERSED)),
        footer,
    );
    if let Some((title, lines)) = &ui.detail {
        draw_detail(frame, title, lines, area);
    }
}

fn draw_title(frame: &mut Frame, d: &Dashboard, area: Rect) {
    let source = d.status.overall.automon_pid.map_or_else(
        || "no loop running (read from files)".to_string(),
        |p| format!("automon running (pid {p})"),
    );
    let text = format!(" automon top · {} · {source} · {}", d.status.name, d.clock);
    frame.render_widget(
        Paragraph::new(text).style(Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD)),
        area,
    );
}

fn draw_overall(frame: &mut Frame, d: &Dashboard, area: Rect) {
    let o = &d.status.overall;
    let unit = &d.status.unit;
    let fraction = if o.keys_total > 0 {
        o.keys_done as f64 / o.keys_total as f64
    } else {
        0.0
    };
    let label = format!(
        " {:.1}%  {unit} ids {}/{}",
        fraction * 100.0,
        count(o.keys_done),
        count(o.keys_total)
    );
    let width = (area.width as usize).saturating_sub(label.chars().count() + 9);
    let line1 = format!("overall {}{label}", bar(fraction, width));
    let items = o
        .items
        .map(|n| format!("{} {unit}s done · ", count(n)))
        .unwrap_or_default();
    let complete = o.shards_total > 0 && o.shards_done == o.shards_total;
    let eta = match o.eta_seconds {
        _ if complete => "none (done)".to_string(),
        Some(e) => format_duration(Duration::from_secs(e)),
        None => "unknown".to_string(),
    };
    let line2 = format!(
        "{items}{}/min · ETA {eta} · workers {}/{} running · shards {}/{} complete",
        count(o.rate_per_min.round() as u64),
        o.running,
        o.desired,
        o.shards_done,
        o.shards_total,
    );
    frame.render_widget(
        Paragraph::new(vec![Line::from(line1), Line::from(line2)]),
        area,
    );
}

fn draw_chart(frame: &mut Frame, d: &Dashboard, area: Rect, colour: bool) {
    let peak = d.throughput.iter().copied().max().unwrap_or(0);
    let label = format!(
        "throughput, last {} (peak {}/min) ",
        format_duration(d.chart_span),
        count(peak)
    );
    let lw = (label.chars().count() as u16).min(area.width / 2);
    let [l, r] = Layout::horizontal([Constraint::Length(lw), Constraint::Min(0)]).areas(area);
    frame.render_widget(Paragraph::new(label), l);
    let style = if colour {
        Style::new().fg(Color::Green)
    } else {
        Style::new()
    };
    // Stretched to the width: each bucket as many cells as fit.
    let cells = r.width as usize;
    let data: Vec<u64> = (0..cells)
        .map(|i| d.throughput[i * d.throughput.len() / cells.max(1)])
        .collect();
    frame.render_widget(Sparkline::default().data(&data).style(style), r);
}

fn draw_disk(frame: &mut Frame, d: &Dashboard, area: Rect, colour: bool) {
    let g = d.disk;
    let width = 20usize;
    let mut cells: Vec<char> = bar(g.util.unwrap_or(0.0) / 100.0, width).chars().collect();
    // The thresholds marked on the bar.
    for t in [g.normal, g.saturated] {
        let i = ((t / 100.0) * width as f64).round() as usize;
        if let Some(c) = cells.get_mut(i.min(width - 1)) {
            *c = '│';
        }
    }
    let gauge: String = cells.into_iter().collect();
    let util = g
        .util
        .map_or_else(|| "unknown".to_string(), |u| format!("{u:.0}%"));
    let style = match g.util {
        Some(u) if colour && u >= g.saturated => Style::new().fg(Color::Red),
        Some(u) if colour && u >= g.normal => Style::new().fg(Color::Yellow),
        _ => Style::new(),
    };
    let line = Line::from(vec![
        Span::raw("disk "),
        Span::styled(gauge, style),
        Span::raw(format!(
            " {util} busy (│ at {:.0}% normal, {:.0}% saturated) · scaling: {}",
            g.normal, g.saturated, d.status.overall.scaling
        )),
    ]);
    frame.render_widget(Paragraph::new(line), area);
}

fn fixes(w: &WorkerRow) -> String {
    let c = format!("{}/{}", w.attempts_used, w.max_attempts);
    match &w.last_fix {
        Some(l) => format!("{c} {}", l.outcome),
        None => c,
    }
}

fn draw_workers(frame: &mut Frame, d: &Dashboard, ui: &mut Ui, area: Rect) {
    let rows = sorted(&d.status.workers);
    let wide = area.width >= 110;
    // The selection follows the worker, wherever sorting puts it.
    let index = ui
        .selected
        .and_then(|id| rows.iter().position(|w| w.worker == id))
        .or((!rows.is_empty()).then_some(0));
    ui.selected = index.map(|i| rows[i].worker);
    ui.table.select(index);
    let trend_width = 12usize;
    let mut header = vec!["ID", "PHASE", "PROGRESS"];
    if wide {
        header.push("CHECKPOINT");
    }
    header.extend(["RATE/MIN", "ETA", "LAST", "FIXES"]);
    if wide {
        header.push("TREND");
    }
    header.push("LATEST EVENT");
    let body = rows.iter().map(|w| {
        let progress = w.percent.map_or_else(
            || "-".to_string(),
            |p| format!("{} {:>3.0}%", bar(p / 100.0, 8), p.floor()),
        );
        let mut cells = vec![
            Cell::from(w.worker.to_string()),
            Cell::from(format!("{:?}", w.phase)).style(phase_style(w.phase, ui.colour)),
            Cell::from(progress),
        ];
        if wide {
            let checkpoint = w
                .checkpoint
                .filter(|c| w.shard.is_none_or(|(start, _)| *c >= start))
                .map_or_else(|| "-".to_string(), count);
            cells.push(Cell::from(checkpoint));
        }
        cells.extend([
            Cell::from(
                w.rate_per_min
                    .map_or_else(|| "-".to_string(), |r| count(r.round() as u64)),
            ),
            Cell::from(w.eta_seconds.map_or_else(
                || "-".to_string(),
                |e| format_duration(Duration::from_secs(e)),
            )),
            Cell::from(
                w.last_progress_seconds
                    .map_or_else(|| "-".to_string(), |a| ago(Duration::from_secs(a))),
            ),
            Cell::from(fixes(w)),
        ]);
        if wide {
            let s = d
                .sparks
                .get(&w.worker)
                .map(|v| spark(v, trend_width))
                .unwrap_or_default();
            cells.push(Cell::from(s));
        }
        let event = d
            .latest
            .get(&w.worker)
            .cloned()
            .unwrap_or_else(|| w.reason.clone());
        cells.push(Cell::from(event));
        Row::new(cells)
    });
    let mut widths = vec![
        Constraint::Length(4),
        Constraint::Length(11),
        Constraint::Length(13),
    ];
    if wide {
        widths.push(Constraint::Length(10));
    }
    widths.extend([
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(10),
    ]);
    if wide {
        widths.push(Constraint::Length(trend_width as u16));
    }
    widths.push(Constraint::Min(10));
    let troubled = rows
        .iter()
        .filter(|w| super::model::trouble(w.phase) <= 4)
        .count();
    let title = format!(
        " workers {} · {} in trouble · sorted by trouble · trend: last {} ",
        rows.len(),
        troubled,
        format_duration(d.span)
    );
    let table = Table::new(body, widths)
        .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
        .block(Block::default().borders(Borders::ALL).title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▸")
        .column_spacing(1);
    frame.render_stateful_widget(table, area, &mut ui.table);
}

fn draw_panes(frame: &mut Frame, d: &Dashboard, area: Rect) {
    if area.height == 0 {
        return;
    }
    let alerts: Vec<Line> = if d.alerts.is_empty() {
        vec![Line::from("no alerts")]
    } else {
        d.alerts.iter().map(|a| Line::from(a.as_str())).collect()
    };
    let alert_title = format!(" alerts ({}) newest first ", d.alerts.len());
    let side_by_side = area.width >= 120;
    let stacked_both = !side_by_side && area.height >= 10;
    let (a, e) = if side_by_side {
        let [a, e] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
            .areas(area);
        (Some(a), Some(e))
    } else if stacked_both {
        let [a, e] =
            Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
        (Some(a), Some(e))
    } else if d.alerts.is_empty() {
        // One pane fits: the events, since there is no alert to show.
        (None, Some(area))
    } else {
        (Some(area), None)
    };
    if let Some(a) = a {
        frame.render_widget(
            Paragraph::new(alerts).block(Block::default().borders(Borders::ALL).title(alert_title)),
            a,
        );
    }
    if let Some(e) = e {
        let room = e.height.saturating_sub(2) as usize;
        let lines: Vec<Line> = d.events[d.events.len().saturating_sub(room)..]
            .iter()
            .map(|l| Line::from(l.as_str()))
            .collect();
        frame.render_widget(
            Paragraph::new(lines).block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(" recent events (UTC) "),
            ),
            e,
        );
    }
}

fn draw_detail(frame: &mut Frame, title: &str, lines: &[String], area: Rect) {
    let w = area.width.saturating_sub(4).max(10);
    let h = area.height.saturating_sub(4).max(5);
    let popup = Rect {
        x: area.x + (area.width - w.min(area.width)) / 2,
        y: area.y + (area.height - h.min(area.height)) / 2,
        width: w.min(area.width),
        height: h.min(area.height),
    };
    frame.render_widget(Clear, popup);
    let room = popup.height.saturating_sub(2) as usize;
    let shown: Vec<Line> = fit_detail(lines, popup.width.saturating_sub(2).into(), room)
        .into_iter()
        .map(Line::from)
        .collect();
    frame.render_widget(
        Paragraph::new(shown).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" {title} · Esc closes ")),
        ),
        popup,
    );
}

/// The details pane's `lines` fitted into `width` × `height` cells, nothing cut silently. The
/// lines before the first blank one (phase, next, diagnosis, last error) are wrapped, their
/// continuations indented; the rest (the log's last lines) are one row each, cut with `…`.
/// When the rows do not all fit, the head stays and the log keeps its title and newest lines,
/// after a row saying how many earlier ones are not shown.
pub fn fit_detail(lines: &[String], width: usize, height: usize) -> Vec<String> {
    let width = width.max(4);
    let split = lines
        .iter()
        .position(String::is_empty)
        .unwrap_or(lines.len());
    let mut head: Vec<String> = lines[..split].iter().flat_map(|l| wrap(l, width)).collect();
    let tail: Vec<String> = lines[split..].iter().map(|l| truncate(l, width)).collect();
    if head.len() >= height {
        let cut = head.len() > height;
        head.truncate(height);
        if cut && let Some(last) = head.last_mut() {
            let mut shortened = truncate(last, width - 1);
            if !shortened.ends_with('…') {
                shortened.push('…');
            }
            *last = shortened;
        }
        return head;
    }
    let room = height - head.len();
    if tail.len() <= room {
        head.extend(tail);
        return head;
    }
    // The blank separator and the log's title, a row for what is left out, the newest lines.
    let (top, rest) = tail.split_at(tail.len().min(2));
    let top = &top[..top.len().min(room)];
    head.extend(top.iter().cloned());
    let left = room - top.len();
    if left >= 2 {
        let keep = left - 1;
        head.push(truncate(
            &format!(
                "  … {} not shown",
                crate::text::counted(rest.len() - keep, "earlier line", "earlier lines")
            ),
            width,
        ));
        head.extend(rest[rest.len() - keep..].iter().cloned());
    } else {
        head.extend(rest[rest.len() - left..].iter().cloned());
    }
    head
}

/// Display width of `s` in terminal cells.
fn cells(s: &str) -> usize {
    Span::raw(s).width()
}

/// `line` cut to at most `width` cells, ending in `…` when cut.
fn truncate(line: &str, width: usize) -> String {
    if cells(line) <= width {
        return line.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in line.chars() {
        let mut buf = [0u8; 4];
        let w = cells(c.encode_utf8(&mut buf));
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

/// `line` broken into rows of at most `width` cells, at spaces where it can be; continuation
/// rows are indented two cells.
fn wrap(line: &str, width: usize) -> Vec<String> {
    let mut rows = Vec::new();
    let mut rest = line.to_string();
    let mut indent = "";
    loop {
        let row = format!("{indent}{rest}");
        if cells(&row) <= width {
            rows.push(row);
            return rows;
        }
        // The longest prefix that fits, broken at its last space when there is one.
        let mut fit = 0;
        let mut used = cells(indent);
        for (i, c) in rest.char_indices() {
            let mut buf = [0u8; 4];
            let w = cells(c.encode_utf8(&mut buf));
            if used + w > width {
                break;
            }
            used += w;
            fit = i + c.len_utf8();
        }
        let cut = match rest[..fit].rfind(' ') {
            Some(at) if at > 0 => at,
            _ => fit.max(rest.chars().next().map_or(1, char::len_utf8)),
        };
        rows.push(format!("{indent}{}", rest[..cut].trim_end()));
        rest = rest[cut..].trim_start().to_string();
        indent = "  ";
        if rest.is_empty() {
            return rows;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fill_in_eighths_and_keep_their_width() {
        assert_eq!(bar(0.0, 4), "░░░░");
        assert_eq!(bar(1.0, 4), "████");
        assert_eq!(bar(0.5, 4), "██░░");
        assert_eq!(bar(0.53, 4), "██▏░");
        assert_eq!(bar(2.0, 3).chars().count(), 3);
    }

    #[test]
    fn sparklines_scale_to_the_peak_and_leave_zeros_blank() {
        assert_eq!(spark(&[0, 1, 2, 4, 8], 5), " ▁▂▄█");
        assert_eq!(spark(&[8, 8, 0, 0], 2), "█ ");
        assert_eq!(spark(&[], 3), "");
    }
}
