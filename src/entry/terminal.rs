//! What the command line shows while a run works and when it ends. In a terminal: an overall
//! bar (copies done of total, GiB, ETA) and a line per copy in flight with EC2's percent
//! (indicatif, on stderr). Elsewhere (a pipe, CI): one plain line per change, no escape codes.
//! At the end, tables on stdout.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::contract::response::{Answer, Response, Summary, plural};
use crate::engine::plan::Plan;
use crate::engine::progress::{LookedSource, Observer, RunEvent, SourceStatus};
use crate::ids::SnapshotId;

/// The run's progress as the command line shows it; an [`Observer`] of the engine.
#[derive(Clone)]
pub struct ProgressView {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    bars: Option<Bars>,
    /// Every source's size, GiB, for the final table.
    sizes: HashMap<String, u64>,
    /// Sources that count towards the total (they have, or will get, a copy), each once per
    /// target that looked at it: a request with several targets makes a copy in each.
    counted: HashMap<SnapshotId, usize>,
    /// Copies in flight: their source, its size and EC2's percent.
    in_flight: HashMap<SnapshotId, InFlight>,
    done_copies: usize,
    done_gib: u64,
    total_gib: u64,
}

struct InFlight {
    source: SnapshotId,
    size_gib: u64,
    percent: u8,
}

struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    copies: HashMap<SnapshotId, ProgressBar>,
}

impl ProgressView {
    /// Bars when `terminal`, plain lines otherwise.
    pub fn new(terminal: bool) -> Self {
        let bars = terminal.then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = multi.add(ProgressBar::new(0));
            overall.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} GiB · ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            overall.set_message("looking");
            overall.enable_steady_tick(Duration::from_millis(500));
            Bars { multi, overall, copies: HashMap::new() }
        });
        Self { state: Arc::new(Mutex::new(State { bars, ..State::default() })) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A line above the bars, or on its own.
    pub fn note(&self, line: &str) {
        self.state().note(line);
    }

    /// Clears the bars.
    pub fn finish(&self) {
        if let Some(bars) = self.state().bars.take() {
            for bar in bars.copies.values() {
                bar.finish_and_clear();
            }
            bars.overall.finish_and_clear();
            let _ = bars.multi.clear();
        }
    }

    /// Each source's size, GiB, by id.
    pub fn sizes(&self) -> HashMap<String, u64> {
        self.state().sizes.clone()
    }
}

impl State {
    fn note(&self, line: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    fn redraw_overall(&self) {
        let Some(bars) = &self.bars else { return };
        let moving: f64 = self.in_flight.values().map(|c| c.size_gib as f64 * f64::from(c.percent) / 100.0).sum();
        bars.overall.set_length(self.total_gib);
        bars.overall.set_position(self.done_gib + moving as u64);
        bars.overall.set_message(format!("{}/{} copies", self.done_copies, self.counted_copies()));
    }

    fn track(&mut self, source: &SnapshotId, copy: &SnapshotId, size_gib: u64, percent: u8) {
        self.in_flight.insert(copy.clone(), InFlight { source: source.clone(), size_gib, percent });
        if let Some(bars) = &mut self.bars {
            let bar = bars.multi.add(ProgressBar::new(100));
            bar.set_style(
                ProgressStyle::with_template("  {prefix} [{bar:20}] {pos}%")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(format!("{source} → {copy} ({size_gib} GiB)"));
            bar.set_position(percent.into());
            bars.copies.insert(copy.clone(), bar);
        }
    }

    /// The copies the total counts: each source once per target.
    fn counted_copies(&self) -> usize {
        self.counted.values().sum()
    }

    /// A source failed in one target: one copy fewer to make. Whether it was counted.
    fn uncount(&mut self, source: &SnapshotId) -> bool {
        match self.counted.get_mut(source) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => self.counted.remove(source).is_some(),
            None => false,
        }
    }

    fn untrack(&mut self, copy: &SnapshotId) {
        self.in_flight.remove(copy);
        if let Some(bar) = self.bars.as_mut().and_then(|bars| bars.copies.remove(copy)) {
            bar.finish_and_clear();
        }
    }

    fn looked(&mut self, sources: &[LookedSource]) {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let mut to_copy_gib = 0;
        for looked in sources {
            self.sizes.insert(looked.source.to_string(), looked.size_gib);
            let kind = match &looked.status {
                SourceStatus::HasCopy { copy, state, progress } => {
                    *self.counted.entry(looked.source.clone()).or_default() += 1;
                    self.total_gib += looked.size_gib;
                    if state == "completed" {
                        self.done_copies += 1;
                        self.done_gib += looked.size_gib;
                        "with a completed copy"
                    } else {
                        self.track(&looked.source, copy, looked.size_gib, progress.unwrap_or(0));
                        "with a copy in flight"
                    }
                }
                SourceStatus::ToCopy { .. } => {
                    *self.counted.entry(looked.source.clone()).or_default() += 1;
                    self.total_gib += looked.size_gib;
                    to_copy_gib += looked.size_gib;
                    "to copy"
                }
                SourceStatus::NotReady { .. } => "not ready",
                SourceStatus::Skipped { .. } => "skipped",
                SourceStatus::Failed { .. } => "failed before",
            };
            *counts.entry(kind).or_default() += 1;
        }
        let order =
            ["with a completed copy", "with a copy in flight", "to copy", "not ready", "skipped", "failed before"];
        let parts: Vec<String> =
            order.iter().filter_map(|kind| counts.get(kind).map(|n| format!("{n} {kind}"))).collect();
        self.note(&format!(
            "{} sources: {}; {to_copy_gib} GiB to copy",
            sources.len(),
            if parts.is_empty() { "none".to_owned() } else { parts.join(", ") }
        ));
    }
}

impl Observer for ProgressView {
    fn observe(&self, event: RunEvent) {
        let mut state = self.state();
        match event {
            RunEvent::Looked { sources } => {
                state.looked(&sources);
                // The rate so far would count what earlier runs copied as this run's speed.
                if let Some(bars) = &state.bars {
                    bars.overall.reset_eta();
                }
            }
            RunEvent::CopyStarted { source, copy, size_gib } => {
                if state.bars.is_none() {
                    state.note(&format!("started   {source} → {copy} ({size_gib} GiB)"));
                }
                state.track(&source, &copy, size_gib, 0);
            }
            RunEvent::CopyProgress { source, copy, percent } => {
                if let Some(entry) = state.in_flight.get_mut(&copy) {
                    entry.percent = percent;
                }
                match state.bars.as_ref().and_then(|bars| bars.copies.get(&copy)) {
                    Some(bar) => bar.set_position(percent.into()),
                    None if state.bars.is_none() => state.note(&format!("progress  {source} → {copy} {percent}%")),
                    None => {}
                }
            }
            RunEvent::CopyCompleted { source, copy } => {
                // A copy adopted after an unsure start was never announced: its source's size.
                let size = match state.in_flight.get(&copy) {
                    Some(tracked) => tracked.size_gib,
                    None => state.sizes.get(source.as_str()).copied().unwrap_or(0),
                };
                state.untrack(&copy);
                state.done_copies += 1;
                state.done_gib += size;
                state.note(&format!("completed {source} → {copy}"));
            }
            RunEvent::CopyErrored { source, copy, message } => {
                state.untrack(&copy);
                state.note(&format!("error     {source} → {copy}: {message}"));
            }
            RunEvent::StartUnsure { source, message } => {
                state.note(&format!("unsure    {source}: no definite answer ({message}); looking for its copy"));
            }
            RunEvent::CopyVanished { source, copy } => {
                state.untrack(&copy);
                state.note(&format!("vanished  {source} → {copy}; looking for another copy"));
            }
            RunEvent::SourceFailed { source, reason } => {
                let copies: Vec<SnapshotId> =
                    state.in_flight.iter().filter(|(_, c)| c.source == source).map(|(id, _)| id.clone()).collect();
                for copy in &copies {
                    state.untrack(copy);
                }
                if state.uncount(&source) {
                    let size = state.sizes.get(source.as_str()).copied().unwrap_or(0);
                    state.total_gib = state.total_gib.saturating_sub(size);
                }
                state.note(&format!("failed    {source}: {reason}"));
            }
            RunEvent::DuplicateRemoved { source, copy } => {
                state.note(&format!("removed   {copy}, a second copy of {source}"));
            }
            RunEvent::CopyDeleted { source, copy, reason } => {
                state.note(&format!("deleted   {copy}, the copy of {source}: {reason}"));
            }
            RunEvent::DeleteRefused { source, copy, error } => {
                state.note(&format!("kept      {copy}, the copy of {source}: EC2 refused to delete it: {error}"));
            }
            RunEvent::Stopped => state.note("stopped   waiting; copies already started go on in EC2"),
        }
        state.redraw_overall();
    }
}

/// Columns padded to their widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells.zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// The end of a copy run: each copy (source, copy, state, size, reused), then what is left.
pub fn result_table(answer: &Answer, sizes: &HashMap<String, u64>) -> String {
    let response = match answer {
        Answer::Full(response) => response,
        Answer::Summary(summary) => {
            return format!("{}\n", serde_json::to_string_pretty(summary).unwrap_or_default());
        }
    };
    if response.targets.is_empty() {
        return target_table(response, sizes);
    }
    let mut out = String::new();
    for target in &response.targets {
        let _ = writeln!(out, "== {}", target.target_region);
        out.push_str(&target_table(&target.response, sizes));
    }
    let _ = writeln!(out, "complete (every target): {}", response.complete);
    out
}

/// One target's copies, deletions and failures, and its counts.
fn target_table(response: &Response, sizes: &HashMap<String, u64>) -> String {
    let size = |source: &str| sizes.get(source).map_or_else(|| "?".to_owned(), |gib| format!("{gib} GiB"));
    let rows: Vec<Vec<String>> = response
        .copies
        .iter()
        .map(|c| {
            let state = match (&c.progress, c.state.as_str()) {
                (Some(progress), "pending") => format!("pending {progress}"),
                _ => c.state.clone(),
            };
            let reused = if c.reused { "yes" } else { "no" };
            vec![
                c.source_snapshot_id.clone(),
                c.snapshot_id.clone(),
                state,
                size(&c.source_snapshot_id),
                reused.to_owned(),
            ]
        })
        .collect();
    let mut out =
        if rows.is_empty() { String::new() } else { table(&["SOURCE", "COPY", "STATE", "SIZE", "REUSED"], &rows) };
    for removed in &response.duplicates_removed {
        let _ = writeln!(out, "removed duplicate {} of {}", removed.snapshot_id, removed.source_snapshot_id);
    }
    for deleted in &response.deleted {
        let _ = writeln!(out, "deleted {} of {}: {}", deleted.snapshot_id, deleted.source_snapshot_id, deleted.reason);
    }
    for kept in &response.not_deleted {
        let _ = writeln!(out, "not deleted {} of {}: {}", kept.snapshot_id, kept.source_snapshot_id, kept.error);
    }
    for failure in &response.failed {
        let _ = writeln!(out, "failed  {}: {}", failure.source_snapshot_id, failure.error);
    }
    if !response.pending_sources.is_empty() {
        let _ =
            writeln!(out, "not started: {} (run the same command again later)", response.pending_sources.join(", "));
    }
    let counts = Summary::of(response);
    let _ = writeln!(
        out,
        "{} copies ({} completed, {} reused), {} not started, {} failed; complete: {}",
        counts.copies, counts.completed, counts.reused, counts.pending_sources, counts.failed, response.complete
    );
    out
}

/// A plan: each source and what a run would do with it, then the totals and the estimate.
pub fn plan_table(plan: &Plan) -> String {
    let rows: Vec<Vec<String>> = plan
        .sources
        .iter()
        .map(|s| {
            let copy = match (&s.snapshot_id, &s.state, &s.progress) {
                (Some(id), Some(state), Some(progress)) => format!("{id} ({state} {progress})"),
                (Some(id), Some(state), None) => format!("{id} ({state})"),
                _ => String::new(),
            };
            vec![
                s.source_snapshot_id.clone(),
                format!("{} GiB", s.size_gib),
                s.action.to_owned(),
                copy,
                s.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut out = table(&["SOURCE", "SIZE", "ACTION", "COPY", "NOTE"], &rows);
    let _ = writeln!(
        out,
        "{} to make in {}, {} GiB; about {} with pending_limit {} (assuming {})",
        plural(plan.copies_to_make, "copy"),
        plan.target_region,
        plan.gib_to_copy,
        human_duration(plan.estimated_seconds),
        plan.pending_limit,
        plan.copy_time_model
    );
    if plan.copies_to_delete > 0 {
        let _ = writeln!(out, "{} to delete, {} GiB", plural(plan.copies_to_delete, "copy"), plan.gib_to_delete);
    }
    out
}

/// `2 h 05 min`, `7 min`, `0 min`.
fn human_duration(seconds: u64) -> String {
    let minutes = seconds.div_ceil(60);
    match minutes / 60 {
        0 => format!("{minutes} min"),
        hours => format!("{hours} h {:02} min", minutes % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_to_the_widest_cell() {
        let out = table(&["A", "BB"], &[vec!["long".into(), "x".into()], vec!["s".into(), "yy".into()]]);
        assert_eq!(out, "A     BB\nlong  x\ns     yy\n");
    }

    #[test]
    fn durations_read_as_hours_and_minutes() {
        assert_eq!(human_duration(0), "0 min");
        assert_eq!(human_duration(61), "2 min");
        assert_eq!(human_duration(7500), "2 h 05 min");
    }

    #[test]
    fn plain_display_counts_copies_and_gib() {
        let display = ProgressView::new(false);
        let id = |n: u8| SnapshotId::parse(&format!("snap-{n:017x}")).unwrap();
        display.observe(RunEvent::Looked {
            sources: vec![
                LookedSource { source: id(1), size_gib: 10, status: SourceStatus::ToCopy { note: None } },
                LookedSource {
                    source: id(2),
                    size_gib: 30,
                    status: SourceStatus::HasCopy { copy: id(3), state: "completed".into(), progress: Some(100) },
                },
            ],
        });
        display.observe(RunEvent::CopyStarted { source: id(1), copy: id(4), size_gib: 10 });
        display.observe(RunEvent::CopyProgress { source: id(1), copy: id(4), percent: 50 });
        {
            let state = display.state();
            assert_eq!((state.done_copies, state.counted_copies(), state.total_gib, state.done_gib), (1, 2, 40, 30));
            let copy = state.in_flight.get(&id(4)).expect("tracked");
            assert_eq!((&copy.source, copy.size_gib, copy.percent), (&id(1), 10, 50));
        }
        display.observe(RunEvent::CopyCompleted { source: id(1), copy: id(4) });
        let state = display.state();
        assert_eq!((state.done_copies, state.done_gib), (2, 40));
        assert!(state.in_flight.is_empty());
    }

    #[test]
    fn each_target_counts_its_own_copy_of_a_source() {
        let display = ProgressView::new(false);
        let id = |n: u8| SnapshotId::parse(&format!("snap-{n:017x}")).unwrap();
        let looked = || RunEvent::Looked {
            sources: vec![LookedSource { source: id(1), size_gib: 10, status: SourceStatus::ToCopy { note: None } }],
        };
        // Two targets look at the same source: two copies to make.
        display.observe(looked());
        display.observe(looked());
        assert_eq!(display.state().counted_copies(), 2);
        display.observe(RunEvent::SourceFailed { source: id(1), reason: "refused in one target".into() });
        assert_eq!(display.state().counted_copies(), 1, "one target's failure takes one copy off the total");
    }
}
