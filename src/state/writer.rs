//! One thread for the control loop's writes into the state directory (`state.json`, the events
//! log, the fix history, `status.json`, the lock file's condition line), so that a state file
//! system that hangs (`fsfreeze`, a dead NFS server) stalls only these writes: the loop goes on
//! observing, restarting crashed workers, serving metrics and answering signals.
//!
//! Jobs run one at a time in the order they were submitted (an event line written before the
//! save it describes stays before it). The memory is saved through a slot that keeps only the
//! newest snapshot not yet written ([`StateWriter::save`]): a long hang costs one pending
//! snapshot, not one per pass. Each snapshot has a generation; [`StateWriter::saved`] says
//! which generation is on disk, so an action whose intent must be durable first (a stop, a code
//! fix) waits for exactly that, and nothing else waits.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::WorkerId;
use crate::plan::Memory;

/// A write to run on the writer thread.
type Job = Box<dyn FnOnce() + Send>;

/// A memory snapshot to save: the loop serialises it (no copy of the memory crosses to the
/// writer thread: at 2,000 workers a copy per save cost as much as the serialising, and its
/// freed blocks stayed resident), with what the save's outcome needs.
#[derive(Debug)]
pub struct Snapshot {
    /// Its generation (increasing).
    pub generation: u64,
    /// `state.json`'s bytes, or why the memory could not be serialised.
    pub json: Result<Vec<u8>, String>,
    /// How long serialising took (on the loop's thread; the save's debug line adds it to
    /// the write's time).
    pub serialize_micros: u64,
    /// Each worker's pid in this memory.
    pub pids: std::collections::BTreeMap<WorkerId, i32>,
    /// The fix history's records for what changed since the snapshot before it, appended
    /// once this snapshot is on disk.
    pub records: Vec<super::HistoryRecord>,
}

impl Snapshot {
    /// The snapshot of `memory` as generation `generation`, with `records` to append once it
    /// is saved.
    pub fn of(generation: u64, memory: &Memory, records: Vec<super::HistoryRecord>) -> Self {
        let began = Instant::now();
        let json = super::store::serialize_memory(memory).map_err(|e| e.to_string());
        Self {
            generation,
            json,
            serialize_micros: micros_since(began),
            pids: memory
                .workers
                .iter()
                .filter_map(|(id, w)| Some((*id, w.process.as_ref()?.identity.pid)))
                .collect(),
            records,
        }
    }
}

/// The save slot: the newest snapshot not written, and whether a job to write it is queued.
#[derive(Default)]
struct Slot {
    pending: Option<Snapshot>,
    queued: bool,
}

/// What became of a save.
#[derive(Debug, Clone)]
pub struct SaveDone {
    /// The generation written (or not).
    pub generation: u64,
    /// `Err` with the reason when the file could not be written.
    pub result: Result<(), String>,
    /// Each worker's pid in the memory it wrote.
    pub pids: std::collections::BTreeMap<crate::WorkerId, i32>,
}

struct Inner {
    state_dir: PathBuf,
    submitted: AtomicU64,
    done: AtomicU64,
    /// What the thread is writing now and since when.
    current: Mutex<Option<(&'static str, Instant)>>,
    slot: Mutex<Slot>,
    /// The newest generation on disk.
    saved: tokio::sync::watch::Sender<u64>,
    /// Where save outcomes go (the loop's wake-up).
    outcomes: tokio::sync::mpsc::UnboundedSender<SaveDone>,
    history: super::FixHistory,
}

/// A handle to the writer thread (cheap to clone; the thread ends when every handle is gone
/// and its queue is written).
#[derive(Clone)]
pub struct StateWriter {
    tx: std::sync::mpsc::Sender<(u64, &'static str, Job)>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StateWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateWriter")
            .field("state_dir", &self.inner.state_dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StateWriter {
    /// Starts the writer thread for `state_dir`; save outcomes are sent on `outcomes`.
    ///
    /// # Errors
    /// The error of spawning the thread.
    pub fn start(
        state_dir: PathBuf,
        outcomes: tokio::sync::mpsc::UnboundedSender<SaveDone>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<(u64, &'static str, Job)>();
        let inner = Arc::new(Inner {
            history: super::FixHistory::open(&state_dir),
            state_dir,
            submitted: AtomicU64::new(0),
            done: AtomicU64::new(0),
            current: Mutex::new(None),
            slot: Mutex::new(Slot::default()),
            saved: tokio::sync::watch::Sender::new(0),
            outcomes,
        });
        let thread = inner.clone();
        std::thread::Builder::new()
            .name("automon-state".into())
            .spawn(move || {
                for (seq, what, job) in rx {
                    *lock(&thread.current) = Some((what, Instant::now()));
                    // A job that panicked must not stop the writes after it.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    *lock(&thread.current) = None;
                    thread.done.store(seq, Ordering::SeqCst);
                }
            })?;
        Ok(Self { tx, inner })
    }

    /// Queues `job` (described by `what`, e.g. "appending to events.log") behind every write
    /// submitted before it.
    pub fn submit(&self, what: &'static str, job: impl FnOnce() + Send + 'static) {
        let seq = self.inner.submitted.fetch_add(1, Ordering::SeqCst) + 1;
        if let Err(std::sync::mpsc::SendError((_, _, job))) =
            self.tx.send((seq, what, Box::new(job)))
        {
            // The thread is gone (it cannot be, while a handle lives): write here.
            job();
            self.inner.done.store(seq, Ordering::SeqCst);
        }
    }

    /// Queues the save of `snapshot`. A snapshot still waiting is replaced (its history
    /// records go first in the newer one's).
    pub fn save(&self, mut snapshot: Snapshot) {
        let mut slot = lock(&self.inner.slot);
        if let Some(mut older) = slot.pending.take() {
            older.records.append(&mut snapshot.records);
            snapshot.records = older.records;
        }
        slot.pending = Some(snapshot);
        if slot.queued {
            return;
        }
        slot.queued = true;
        drop(slot);
        let inner = self.inner.clone();
        self.submit("saving state.json", move || write_pending(&inner));
    }

    /// The newest memory generation on disk, to wait on.
    pub fn saved(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.saved.subscribe()
    }

    /// The write in progress, when one has taken at least `at_least`: what it is and how long
    /// it has taken.
    pub fn slow(&self, at_least: Duration) -> Option<(&'static str, Duration)> {
        let (what, since) = (*lock(&self.inner.current))?;
        let took = since.elapsed();
        (took >= at_least).then_some((what, took))
    }

    /// Writes submitted and not finished.
    pub fn backlog(&self) -> u64 {
        self.inner
            .submitted
            .load(Ordering::SeqCst)
            .saturating_sub(self.inner.done.load(Ordering::SeqCst))
    }

    /// Waits up to `limit` for every write submitted so far; true when they are all done.
    pub fn drain(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.backlog() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

/// The save job: writes the newest pending snapshot; after it is on disk, the fix history's
/// records for it (a crash may lose a history line, never duplicate one).
fn write_pending(inner: &Inner) {
    let pending = {
        let mut slot = lock(&inner.slot);
        slot.queued = false;
        slot.pending.take()
    };
    let Some(p) = pending else {
        return;
    };
    let began = Instant::now();
    let result = match &p.json {
        Ok(json) => super::store::write_state(&inner.state_dir, json).map_err(|e| e.to_string()),
        Err(e) => Err(e.clone()),
    };
    let write_micros = micros_since(began);
    // `micros` is the whole save: serialising (on the loop's thread) and writing.
    tracing::debug!(
        target: "automon::state",
        micros = p.serialize_micros.saturating_add(write_micros),
        serialize_micros = p.serialize_micros,
        write_micros,
        "state saved"
    );
    let generation = p.generation;
    let pids = p.pids.clone();
    match &result {
        Ok(()) => {
            for record in &p.records {
                inner.history.append(record);
            }
            inner.saved.send_replace(generation);
        }
        Err(_) => {
            // Kept for the retry: a newer snapshot takes this one's records first.
            let mut slot = lock(&inner.slot);
            match &mut slot.pending {
                Some(newer) => {
                    let mut records = p.records;
                    records.append(&mut newer.records);
                    newer.records = records;
                }
                None => slot.pending = Some(p),
            }
        }
    }
    let _ = inner.outcomes.send(SaveDone {
        generation,
        result,
        pids,
    });
}

fn micros_since(began: Instant) -> u64 {
    u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX)
}
