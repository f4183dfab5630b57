//! Observation: the world turned into plain data for the planner — processes, progress files,
//! log tails. Every failure becomes data (`Unreadable { why }`), never an early return.
//!
//! This is where a worker's text enters automon, so it is where secrets leave it: every log
//! record and every reason built from a worker's files is redacted (see [`crate::secrets`])
//! before it becomes part of an [`Observed`]; nothing downstream holds the raw text.

pub mod cmdline;
pub mod dirs;
pub mod disk;
pub mod drift;
pub mod logtail;
pub mod proc;
pub mod progress;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::WorkerId;
use crate::manifest::Desired;
use crate::plan::Memory;
use dirs::Seen;
pub use logtail::{LogCursor, LogObservation};
pub use proc::{ProcessIdentity, ProcessStatus};
pub use progress::ProgressObservation;

/// Environment variable naming the WorkerSet, set in every worker automon starts.
pub const ENV_WORKERSET: &str = "AUTOMON_WORKERSET";
/// Environment variable holding the worker id, set in every worker automon starts.
pub const ENV_WORKER_ID: &str = "AUTOMON_WORKER_ID";
/// Environment variable holding automon's state directory, set in every worker it starts.
pub const ENV_STATE_DIR: &str = "AUTOMON_STATE_DIR";
/// Environment variable holding the key of the files a worker writes
/// ([`crate::state::FleetFiles::key`]), set in every worker automon starts: a worker of
/// another automon (another state directory) on the same files is recognised by it.
pub const ENV_FLEET: &str = "AUTOMON_FLEET";

/// How a child that automon started (and reaped) ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitEvent {
    /// The worker.
    pub worker: WorkerId,
    /// The process that exited.
    pub pid: i32,
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
}

/// What the actuators know about this automon's own children since the last pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Children {
    /// Children that exited and were reaped.
    pub exits: Vec<ExitEvent>,
    /// Pids of children not reaped yet: if `/proc` already shows one gone, its exit status is
    /// on its way and the planner waits for it rather than guessing.
    pub unreaped: std::collections::BTreeSet<i32>,
    /// The same children with the start ticks read when each was started: until it is
    /// reaped a child's pid cannot be reused, so a recorded identity found here is alive (or
    /// a zombie whose exit is on its way) by the reaper's account, without a look at `/proc`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub started: BTreeMap<i32, u64>,
    /// Workers with a stop task running in this automon (signal, grace, SIGKILL, confirm the
    /// group is gone): never started until it reports, and not stopped a second time.
    #[serde(default)]
    pub stopping: std::collections::BTreeSet<WorkerId>,
}

/// A live worker process that memory does not record: started by an earlier automon that was
/// killed before saving its state (found by environment marker), or started by someone else
/// (found by command line, when the manifest opts in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnrecordedWorker {
    /// The worker id from its environment.
    pub worker: WorkerId,
    /// Its identity.
    pub identity: ProcessIdentity,
    /// When it started, on the boot clock.
    pub started_at: Option<crate::clock::BootTime>,
    /// True when it leads its own process group (stops signal the group, else the process).
    pub own_group: bool,
    /// Found by matching its command line (not by automon's environment marker).
    pub by_command_line: bool,
    /// How it differs from what the manifest would start (see [`drift::differences`]);
    /// secret-looking values are not included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<String>,
    /// Set when the process belongs to another automon (this state directory) but writes
    /// this worker's files: never adopted or signalled, and no duplicate is started beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_owner: Option<String>,
}

/// Everything observed about one worker id in one pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerObservation {
    /// Status of the process recorded in memory; `None` when memory records none.
    pub process: Option<ProcessStatus>,
    /// True when the recorded process exited but other members of its process group live on.
    pub group_alive: bool,
    /// The progress file.
    pub progress: ProgressObservation,
    /// The log's new records.
    pub log: LogObservation,
}

/// One pass's observation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// Utilisation of the disk under `spec.scaling.disk.path`.
    pub disk: disk::DiskObservation,
    /// The kernel's boot id now.
    pub boot_id: String,
    /// Per worker id, for every id the WorkerSet can have.
    pub workers: BTreeMap<WorkerId, WorkerObservation>,
    /// This automon's children: exits since the last pass, and those not reaped yet.
    pub children: Children,
    /// Live processes carrying this WorkerSet's marker that memory does not record.
    pub unrecorded: Vec<UnrecordedWorker>,
    /// Why the scan for unrecorded workers could not look at every process (`/proc` not
    /// listable: out of descriptors); the planner starts nothing until a scan is complete, since
    /// a worker it missed would be started twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_incomplete: Option<String>,
    /// Why automon's memory is not on disk (the last save failed), if it is not: the planner
    /// then starts no worker, since a start could not be recorded (set by the loop, not by the
    /// observers).
    #[serde(default)]
    pub unsaved_state: Option<String>,
}

/// Where the observers read from; tests point these at fixture trees.
#[derive(Debug, Clone)]
pub struct Roots {
    /// Usually `/proc`.
    pub proc: PathBuf,
    /// Usually `/sys`.
    pub sys: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
        }
    }
}

/// The observers, with the little state they keep between passes: the previous disk reading
/// and the last parse of each progress file (re-read only when the file changed).
#[derive(Debug)]
pub struct Observer {
    roots: Roots,
    disk: disk::DiskSampler,
    progress: ProgressReader,
    /// How log lines start; built once (a custom format compiles a regex, and the system time
    /// zone is looked up once).
    format: logtail::LineFormat,
    /// Each worker's progress file and log, rendered from their templates once (not per
    /// worker per pass), and where they are among `dirs`.
    paths: BTreeMap<WorkerId, WorkerFiles>,
    /// The directories of those files, opened once per pass.
    dirs: dirs::Dirs,
    /// Removes secrets from every text taken from a worker's files.
    redactor: crate::secrets::Redactor,
}

/// A worker's progress file and log: their paths, each as a name in an open directory, and the
/// last parse of the progress file.
#[derive(Debug)]
struct WorkerFiles {
    progress: PathBuf,
    log: PathBuf,
    progress_at: Option<dirs::FileAt>,
    log_at: Option<dirs::FileAt>,
    /// The last parse of the progress file, with the version it was read at (kept here, not
    /// in a map keyed by the path: no hashing of the path per worker per pass).
    parsed: ParsedProgress,
}

/// A progress file's last parse and the (stable) version it was read at; `None` when it was
/// never read, or was missing.
type ParsedProgress = Option<Parsed>;

/// A progress file's parse, kept while its version holds.
#[derive(Debug, Clone)]
struct Parsed {
    /// The file's version when it was read.
    version: progress::FileVersion,
    /// What the read found.
    obs: ProgressObservation,
    /// The version's times were [`progress::SETTLED`] before the read: a `stat` that finds
    /// the same version again finds the same file. A parse that is not settled is reused only
    /// while inotify reports nothing about the file ([`Seen::Unchanged`]).
    settled: bool,
}

/// Re-reads of a progress file that exists but does not parse, within one pass.
const TORN_RETRIES: u32 = 3;
/// The pause before each re-read of an unparseable progress file.
const TORN_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Reads progress files, reusing the last parse of a file that has not changed.
#[derive(Debug)]
struct ProgressReader {
    pointers: progress::Pointers,
    /// The last parses of files not among the observer's own (a worker of another `desired`).
    others: std::collections::HashMap<PathBuf, ParsedProgress>,
}

impl ProgressReader {
    /// Reads a progress file, or reuses its last parse (`parsed`) when the file is unchanged. A
    /// file that exists but does not parse is read again a few times, [`TORN_RETRY_PAUSE`]
    /// apart: a non-atomic writer (truncate, then write) is often caught mid-write, and the
    /// next read a moment later parses. With the version the handle of a [`Seen::Changed`]
    /// file had (see [`progress::Found`]).
    fn read(
        pointers: &progress::Pointers,
        path: &Path,
        open: &dyn Fn() -> std::io::Result<std::fs::File>,
        seen: Seen,
        parsed: &mut ParsedProgress,
    ) -> (ProgressObservation, progress::Found) {
        let mut tries = 0;
        let mut seen = Some(seen);
        let mut found = None;
        loop {
            // The first look uses what the pass knows; a re-read stats again.
            let seen = seen
                .take()
                .unwrap_or_else(|| Seen::Stated(progress::version(path)));
            // `retry`: the bytes were read now and did not parse (perhaps a write caught
            // halfway); not for a parse reused, or a file that cannot be opened or read.
            let (obs, retry) = match seen {
                Seen::Unchanged(version) => Self::read_once(pointers, open, version, true, parsed),
                Seen::Stated(version) => Self::read_once(pointers, open, version, false, parsed),
                Seen::Changed => {
                    let (obs, at, content) = Self::read_changed(pointers, open, parsed);
                    found = at;
                    (obs, content)
                }
            };
            if !matches!(obs, ProgressObservation::Unreadable { .. })
                || !retry
                || tries == TORN_RETRIES
            {
                return (obs, found);
            }
            tries += 1;
            std::thread::sleep(TORN_RETRY_PAUSE);
        }
    }

    /// One read of a file inotify said changed: opened, `fstat`ed and read, whatever the
    /// last parse was (a change within one tick of the file system's clock leaves its version
    /// as it was). The parse is kept with the version the handle had before the read: a write
    /// made since the pass took in inotify's queue (during the read, say) is reported at the
    /// next pass, which reads the file again.
    fn read_changed(
        pointers: &progress::Pointers,
        open: &dyn Fn() -> std::io::Result<std::fs::File>,
        parsed: &mut ParsedProgress,
    ) -> (ProgressObservation, progress::Found, bool) {
        let (obs, found, content) = progress::read_opened_stat_first(open, pointers);
        *parsed = match found {
            Some(Some(version)) => Some(Parsed {
                version,
                obs: obs.clone(),
                settled: progress::settled(
                    version.mtime_ns.max(version.ctime_ns),
                    std::time::SystemTime::now(),
                ),
            }),
            _ => None,
        };
        (obs, found, content)
    }

    /// One read of the file `open` opens, whose version (`None`: missing) memory gave
    /// (`unchanged`: nothing happened to it since it was read) or a `stat` just found; `true`
    /// when the file's bytes were read now (not taken from `parsed`, and not an open or read
    /// that failed).
    fn read_once(
        pointers: &progress::Pointers,
        open: &dyn Fn() -> std::io::Result<std::fs::File>,
        version: Option<progress::FileVersion>,
        unchanged: bool,
        parsed: &mut ParsedProgress,
    ) -> (ProgressObservation, bool) {
        let Some(version) = version else {
            *parsed = None;
            let (obs, read) = progress::read_opened(open, pointers, 0);
            return (obs, read.is_some());
        };
        if let Some(p) = parsed
            && p.version == version
            && (p.settled || unchanged)
        {
            return (p.obs.clone(), false);
        }
        let (obs, read) = progress::read_opened(open, pointers, version.size);
        // Only a stable version is kept: a file rewritten during the read (or replaced since
        // the pass's `stat`) is read again, and so is one changed a moment ago (its times may
        // not move on a rewrite in the same clock tick: see `progress::SETTLED`).
        *parsed = (read == Some(version)
            && progress::settled(
                version.mtime_ns.max(version.ctime_ns),
                std::time::SystemTime::now(),
            ))
        .then(|| Parsed {
            version,
            obs: obs.clone(),
            settled: true,
        });
        (obs, read.is_some())
    }
}

impl Observer {
    /// Observers for `desired`, reading `/proc` and `/sys` under `roots`.
    pub fn new(desired: &Desired, roots: Roots) -> Self {
        let disk = disk::DiskSampler::new(&desired.disk_path, &roots.proc, &roots.sys)
            .with_window(desired.interval);
        let progress = ProgressReader {
            pointers: progress::Pointers {
                checkpoint: desired.checkpoint_pointer.clone(),
                items: desired.items_pointer.clone(),
                completion: desired.completion_pointer.clone(),
            },
            others: std::collections::HashMap::new(),
        };
        let format =
            logtail::LineFormat::new(&desired.timestamp_format, jiff::tz::TimeZone::system());
        let mut dirs = dirs::Dirs::default();
        let paths = desired
            .worker_ids()
            .into_iter()
            .map(|id| {
                let (progress, log) = (desired.progress_path(id), desired.log_path(id));
                let files = WorkerFiles {
                    progress_at: dirs.locate(&progress),
                    log_at: dirs.locate(&log),
                    progress,
                    log,
                    parsed: None,
                };
                (id, files)
            })
            .collect();
        Self {
            roots,
            disk,
            progress,
            format,
            paths,
            dirs,
            redactor: crate::secrets::redactor_for(desired),
        }
    }

    /// Observes every worker of `desired` (the one the observer was made for), using `memory`
    /// for recorded identities and log cursors, at boot-clock time `now`. `scan_unrecorded`
    /// also walks `/proc` for live workers memory does not know (done once at startup: it
    /// reads every process's environment).
    pub fn observe(
        &mut self,
        desired: &Desired,
        memory: &Memory,
        state_dir: &Path,
        children: Children,
        scan_unrecorded: bool,
        now: crate::clock::BootTime,
    ) -> Observed {
        let Self {
            roots,
            disk,
            progress,
            format,
            paths,
            dirs,
            redactor,
        } = self;
        let boot = proc::boot_id(&roots.proc);
        let mut open_dirs = dirs.open();
        // Every worker's process group was made when it started, before this pass: one scan
        // of `/proc` made since now answers for all of them (see `proc::group_exists_since`).
        let pass_began = std::time::Instant::now();
        let workers = desired
            .worker_ids()
            .into_iter()
            .map(|id| {
                let mem = memory.workers.get(&id).map(|w| &**w);
                let recorded = mem.and_then(|m| m.process.as_ref());
                let process = recorded.map(|p| {
                    // A worker being stopped is read from /proc: its stop task may have seen it
                    // die before the reaper's exit event arrives, and "alive" would then read
                    // as a stop nobody is carrying on (and be resumed).
                    if reaper_knows_alive(&children, &boot, &p.identity)
                        && !might_be_stuck(desired, mem, p.started_at, now)
                        && mem.is_none_or(|m| m.stopping.is_none())
                    {
                        ProcessStatus::Alive {
                            state: proc::STATE_NOT_READ,
                        }
                    } else {
                        proc::check(&roots.proc, &boot, &p.identity)
                    }
                });
                // The leader is gone, but its process group may live on (a wrapper's children).
                let group_alive = recorded.is_some_and(|p| {
                    p.own_group
                        && process == Some(ProcessStatus::Exited)
                        && proc::group_exists_since(
                            p.identity.pid,
                            pass_began,
                            std::time::Duration::MAX,
                        )
                });
                // A worker not among the observer's own (another `desired`): its paths rendered
                // now, its last parse kept in `others`.
                let mut other = None;
                let files = match paths.get_mut(&id) {
                    Some(f) => f,
                    None => {
                        let path = desired.progress_path(id);
                        let parsed = progress.others.remove(&path).flatten();
                        other.insert(WorkerFiles {
                            progress: path,
                            log: desired.log_path(id),
                            progress_at: None,
                            log_at: None,
                            parsed,
                        })
                    }
                };
                let seen = open_dirs.look(files.progress_at.as_ref(), &files.progress);
                let open = || match seen {
                    Seen::Changed => {
                        open_dirs.open_changed(files.progress_at.as_ref(), &files.progress)
                    }
                    _ => open_dirs.open(files.progress_at.as_ref(), &files.progress),
                };
                let (mut progress_seen, found) = ProgressReader::read(
                    &progress.pointers,
                    &files.progress,
                    &open,
                    seen,
                    &mut files.parsed,
                );
                if let Some(v) = found {
                    open_dirs.saw(files.progress_at.as_ref(), v);
                }
                let cursor = mem.and_then(|m| m.log_cursor.as_ref());
                let seen = match cursor {
                    Some(_) => open_dirs.look(files.log_at.as_ref(), &files.log),
                    None => Seen::Changed,
                };
                let open = || match seen {
                    Seen::Changed => open_dirs.open_changed(files.log_at.as_ref(), &files.log),
                    _ => open_dirs.open(files.log_at.as_ref(), &files.log),
                };
                let (mut log, found) = logtail::read_tail_opened(
                    &open,
                    seen,
                    desired.tail_bytes,
                    cursor,
                    &desired.patterns,
                    format,
                );
                if seen == Seen::Changed
                    && let Some(v) = found
                {
                    open_dirs.saw(files.log_at.as_ref(), v);
                }
                if let Some(f) = other {
                    progress.others.insert(f.progress, f.parsed);
                }
                redact_worker_text(redactor, &mut progress_seen, &mut log);
                (
                    id,
                    WorkerObservation {
                        process,
                        group_alive,
                        progress: progress_seen,
                        log,
                    },
                )
            })
            .collect();
        let (unrecorded, scan_incomplete) = if scan_unrecorded {
            match scan_for_unrecorded(desired, memory, state_dir, &boot, roots) {
                Ok(found) => (found, None),
                Err(why) => (Vec::new(), Some(why)),
            }
        } else {
            (Vec::new(), None)
        };
        Observed {
            disk: disk.sample(now),
            boot_id: boot,
            workers,
            children,
            unrecorded,
            scan_incomplete,
            unsaved_state: None,
        }
    }
}

/// Redacts, in place, every text of one worker's observation that came from its files: log
/// records (tracebacks included), the repeated-cursor phrase, and a progress file's complaint
/// (a parse error may quote the file).
fn redact_worker_text(
    redactor: &crate::secrets::Redactor,
    progress: &mut ProgressObservation,
    log: &mut LogObservation,
) {
    if let ProgressObservation::Unreadable { why } = progress {
        redactor.redact_in_place(why);
    }
    if let LogObservation::Read {
        records, repeated, ..
    } = log
    {
        for r in records {
            redactor.redact_in_place(&mut r.message);
        }
        if let Some(r) = repeated {
            redactor.redact_in_place(&mut r.what);
        }
    }
}

/// True when `identity` is a child this automon started and has not reaped: alive, as far as
/// the reaper knows (a zombie's exit is on its way and wakes the loop).
fn reaper_knows_alive(children: &Children, boot: &str, identity: &ProcessIdentity) -> bool {
    identity.boot_id == boot && children.started.get(&identity.pid) == Some(&identity.start_ticks)
}

/// True when the worker has been quiet for long enough that the planner may judge it stuck
/// this pass, and so wants the process's state letter (`D` is reported with the verdict):
/// only then is `/proc` read for a child the reaper vouches for. This is the planner's own
/// reference (the last progress signal of this process, else its start) against the shorter
/// of its two thresholds; it only decides what to read, never a verdict.
fn might_be_stuck(
    desired: &Desired,
    memory: Option<&crate::plan::WorkerMemory>,
    started_at: crate::clock::BootTime,
    now: crate::clock::BootTime,
) -> bool {
    let reference = memory
        .and_then(|m| m.last_progress_at)
        .filter(|p| *p >= started_at)
        .unwrap_or(started_at);
    let shorter = desired
        .health
        .stuck_after
        .get()
        .min(desired.health.discovery_grace.get());
    now.since(reference) >= shorter
}

/// Finds live workers memory does not record: group leaders whose environment carries this
/// WorkerSet's marker (started by an earlier automon), and — when the manifest opts in — any
/// process whose command line matches the template and whose working directory is the
/// manifest's (the same argv in another fleet's directory is another fleet's worker), carrying
/// no other automon's marker.
///
/// # Errors
/// Why `/proc` could not be listed (then nothing is known about unrecorded workers).
fn scan_for_unrecorded(
    desired: &Desired,
    memory: &Memory,
    state_dir: &Path,
    boot: &str,
    roots: &Roots,
) -> Result<Vec<UnrecordedWorker>, String> {
    let state_dir = state_dir.to_string_lossy();
    let tps = proc::clock_ticks_per_second();
    let own = std::process::id() as i32;
    let matcher = desired
        .adoption
        .match_command
        .then(|| cmdline::CommandMatcher::new(&desired.command));
    let valid_ids = desired.worker_ids();
    let fleet = crate::state::FleetFiles::of(desired).key();
    let workdir =
        std::fs::canonicalize(&desired.workdir).unwrap_or_else(|_| desired.workdir.clone());
    let pids = proc::try_list_pids(&roots.proc)
        .map_err(|e| format!("cannot list {}: {e}", roots.proc.display()))?;
    let mut found = Vec::new();
    for pid in pids {
        if pid == own {
            continue;
        }
        let Some(stat) = proc::read_stat(&roots.proc, pid) else {
            continue;
        };
        if matches!(stat.state, 'Z' | 'X') {
            continue;
        }
        let mut environ = proc::read_environ(&roots.proc, pid);
        // A process caught mid-exec (a shim that execs the interpreter) shows no environment
        // for an instant; a missed worker would be started twice, so look again.
        for _ in 0..3 {
            if !environ.is_empty() || stat.pgid != pid {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            environ = proc::read_environ(&roots.proc, pid);
        }
        let var = |k: &str| {
            environ
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let marked = stat.pgid == pid
            && var(ENV_WORKERSET) == Some(desired.name.as_str())
            && var(ENV_STATE_DIR) == Some(&*state_dir);
        // Another automon's worker on these very files.
        let other_owner = (!marked && stat.pgid == pid && var(ENV_FLEET) == Some(fleet.as_str()))
            .then(|| var(ENV_STATE_DIR).unwrap_or("unknown").to_string());
        let worker = if marked || other_owner.is_some() {
            var(ENV_WORKER_ID)
                .and_then(|v| v.parse().ok())
                .map(WorkerId)
        } else if let Some(m) = &matcher {
            // A process another automon manages is not ours to adopt.
            if var(ENV_WORKERSET).is_some() {
                continue;
            }
            std::fs::read(roots.proc.join(pid.to_string()).join("cmdline"))
                .ok()
                .and_then(|bytes| m.worker_id(&cmdline::parse_cmdline(&bytes)))
                // The same command line run in another directory writes another fleet's files.
                .filter(|_| {
                    std::fs::read_link(roots.proc.join(pid.to_string()).join("cwd"))
                        .is_ok_and(|cwd| cwd == workdir)
                })
        } else {
            None
        };
        let Some(worker) = worker.filter(|w| valid_ids.contains(w)) else {
            continue;
        };
        let identity = ProcessIdentity {
            pid,
            start_ticks: stat.start_ticks,
            boot_id: boot.to_string(),
        };
        let recorded = memory
            .workers
            .values()
            .any(|w| w.process.as_ref().is_some_and(|p| p.identity == identity));
        if !recorded {
            let argv = std::fs::read(roots.proc.join(pid.to_string()).join("cmdline"))
                .map(|b| cmdline::parse_cmdline(&b))
                .unwrap_or_default();
            let cwd = std::fs::read_link(roots.proc.join(pid.to_string()).join("cwd")).ok();
            let differences = drift::differences(
                drift::Expected {
                    program: desired.command.first().map_or("", String::as_str),
                    workdir: &workdir,
                    env: &desired.env,
                },
                // One that automon started ran the manifest's program with automon's
                // environment: only a changed manifest can make it differ (an interpreter shim
                // may have rewritten its argv[0] and PATH since).
                drift::Running {
                    program: argv.first().map(String::as_str).filter(|_| !marked),
                    cwd: cwd.as_deref(),
                    env: &environ,
                },
                |k| {
                    if marked {
                        var(k).map(str::to_string)
                    } else {
                        std::env::var(k).ok()
                    }
                },
            );
            found.push(UnrecordedWorker {
                worker,
                identity,
                started_at: Some(crate::clock::BootTime::from_ticks(stat.start_ticks, tps)),
                own_group: stat.pgid == pid,
                by_command_line: !marked && other_owner.is_none(),
                differences,
                other_owner,
            });
        }
    }
    found.sort_by_key(|u| (u.worker, u.identity.start_ticks));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::BootTime;
    use crate::manifest::Manifest;
    use crate::plan::memory::{RunningProcess, WorkerMemory};

    fn desired(dir: &Path) -> Desired {
        let text = r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: t}
spec:
  workers: {target: 1, min: 1, max: 1}
  template: {command: [sleep, "100"]}
  progress: {file: "p{id}.json", checkpoint: /c}
  logs: {file: "w{id}.log", activity_patterns: [Processed batch]}
  health: {stuck_after: 5m, discovery_grace: 20m}
"#;
        let workerset = crate::manifest::parse(text).expect("valid manifest");
        let manifest = Manifest {
            file: dir.join("t.yaml"),
            dir: dir.to_path_buf(),
            workerset,
        };
        Desired::resolve(&manifest, None).expect("resolve")
    }

    /// Worker 0 recorded as pid 4242 (start ticks 7), started at boot second 1,000, with its
    /// last progress at `progress_at`.
    fn memory(progress_at: BootTime) -> Memory {
        let mut m = Memory {
            boot_id: "b".into(),
            ..Memory::default()
        };
        m.workers.insert(
            WorkerId(0),
            Box::new(WorkerMemory {
                process: Some(RunningProcess {
                    identity: ProcessIdentity {
                        pid: 4242,
                        start_ticks: 7,
                        boot_id: "b".into(),
                    },
                    started_at: BootTime::from_duration(std::time::Duration::from_secs(1000)),
                    resume_from: None,
                    adopted: false,
                    own_group: true,
                    template: None,
                }),
                last_progress_at: Some(progress_at),
                ..WorkerMemory::default()
            }),
        );
        m
    }

    fn process_seen(children: Children, progress_secs: u64, now_secs: u64) -> ProcessStatus {
        process_seen_in(
            children,
            &memory(BootTime::from_duration(std::time::Duration::from_secs(
                progress_secs,
            ))),
            now_secs,
        )
    }

    fn process_seen_in(children: Children, memory: &Memory, now_secs: u64) -> ProcessStatus {
        let dir = tempfile::tempdir().expect("tempdir");
        // A /proc with a boot id and no processes: reading it finds pid 4242 gone.
        let (desired, mut observer) = fixture_observer(dir.path());
        let secs = |s| BootTime::from_duration(std::time::Duration::from_secs(s));
        let observed = observer.observe(
            &desired,
            memory,
            dir.path(),
            children,
            false,
            secs(now_secs),
        );
        observed.workers[&WorkerId(0)]
            .process
            .clone()
            .expect("a recorded process is observed")
    }

    fn unreaped_child(start_ticks: u64) -> Children {
        Children {
            exits: Vec::new(),
            unreaped: [4242].into(),
            started: [(4242, start_ticks)].into(),
            stopping: Default::default(),
        }
    }

    /// Regression (issue 25): a read of a long log kept every line of its 64 KiB window until
    /// the pass was planned; 2,000 workers whose logs held 51 KB each made automon 190 MB, and
    /// the heap kept it. A real 1,000-line log is read for the first time here.
    #[test]
    fn a_long_log_read_keeps_only_the_lines_the_planner_can_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = String::new();
        // 1,000 lines of about 50 bytes: all inside the 64 KiB window.
        for n in 0..1000 {
            let line = match n {
                3 => "ERROR - could not open book 3".to_string(),
                7 => "INFO - Migration complete".to_string(),
                _ => format!("INFO - Processed batch {n}"),
            };
            log.push_str(&format!("2026-12-07 10:00:00,000 - {line}\n"));
        }
        std::fs::write(dir.path().join("w0.log"), log).expect("log");
        let (desired, mut observer) = fixture_observer(dir.path());
        let now = BootTime::from_duration(std::time::Duration::from_secs(2000));
        let mut memory = memory(now);
        memory
            .workers
            .get_mut(&WorkerId(0))
            .expect("worker 0")
            .log_cursor = None;
        let observed = observer.observe(
            &desired,
            &memory,
            dir.path(),
            Children::default(),
            false,
            now,
        );
        let LogObservation::Read { records, .. } = &observed.workers[&WorkerId(0)].log else {
            panic!("the log is read: {:?}", observed.workers[&WorkerId(0)].log);
        };
        let keep = crate::plan::memory::RECENT_SIGNALS;
        // The window's last lines, then the last error and completion claim before them (and
        // the last activity line before the cut), in the file's order.
        assert!(records.len() <= keep + 4, "{} records kept", records.len());
        let messages: Vec<&str> = records.iter().map(|r| r.message.as_str()).collect();
        assert!(
            messages[0].contains("ERROR - could not open book 3"),
            "{messages:?}"
        );
        assert!(messages[1].contains("Migration complete"), "{messages:?}");
        assert!(
            messages
                .last()
                .is_some_and(|m| m.contains("Processed batch 999"))
        );
        assert_eq!(
            records
                .iter()
                .filter(|r| r.class == logtail::LineClass::Activity)
                .count(),
            keep + 1
        );
    }

    #[test]
    fn an_unreaped_child_is_alive_without_reading_proc() {
        // Progress 10 s ago: the reaper's word is enough (the fixture /proc has no pid 4242).
        assert_eq!(
            process_seen(unreaped_child(7), 1010, 1020),
            ProcessStatus::Alive {
                state: proc::STATE_NOT_READ
            }
        );
    }

    #[test]
    fn a_child_quiet_for_the_shorter_threshold_is_read_from_proc() {
        // Quiet for 5 minutes (stuck_after): the planner may judge it, so /proc is read.
        assert_eq!(
            process_seen(unreaped_child(7), 1010, 1310),
            ProcessStatus::Exited
        );
    }

    #[test]
    fn a_recorded_process_that_is_not_the_unreaped_child_is_read_from_proc() {
        // Same pid, other start ticks: another process than the child (a recycled pid).
        assert_eq!(
            process_seen(unreaped_child(8), 1010, 1020),
            ProcessStatus::Exited
        );
        // Not a child of this automon at all (adopted): /proc, as before.
        assert_eq!(
            process_seen(Children::default(), 1010, 1020),
            ProcessStatus::Exited
        );
    }

    /// Regression: `automon pause` logged "resuming the stop of pid N requested 145ms ago":
    /// the stop task saw the worker die and reported before the reaper's exit event arrived,
    /// and the next pass, taking the unreaped child for alive on the reaper's word, found a
    /// stop that no task carried on and resumed it. A worker being stopped is read from /proc
    /// (here: gone), so the planner waits for its exit status instead.
    #[test]
    fn a_child_being_stopped_is_read_from_proc_not_taken_for_alive() {
        let secs = |s| BootTime::from_duration(std::time::Duration::from_secs(s));
        let mut m = memory(secs(1010));
        if let Some(w) = m.workers.get_mut(&WorkerId(0)) {
            w.stopping = Some(crate::plan::Stopping {
                requested_at: secs(1019),
                reason: "paused by an operator".into(),
                restart: false,
                unkillable_since: None,
                exit_reported: false,
            });
        }
        assert_eq!(
            process_seen_in(unreaped_child(7), &m, 1020),
            ProcessStatus::Exited
        );
    }

    /// The test manifest's desired state in `dir`, and an observer over a fixture `/proc`
    /// there: boot id `b`, no processes.
    fn fixture_observer(dir: &Path) -> (Desired, Observer) {
        let proc_root = dir.join("proc");
        std::fs::create_dir_all(proc_root.join("sys/kernel/random")).expect("mkdir");
        std::fs::write(proc_root.join("sys/kernel/random/boot_id"), "b\n").expect("boot id");
        let desired = desired(dir);
        let observer = Observer::new(
            &desired,
            Roots {
                proc: proc_root,
                sys: dir.join("sys"),
            },
        );
        (desired, observer)
    }

    /// An observer over a fixture `/proc` without processes, and a memory with worker 0.
    fn idle_observer(dir: &Path) -> (Desired, Observer, Memory) {
        let (desired, observer) = fixture_observer(dir);
        let mut memory = Memory {
            boot_id: "b".into(),
            ..Memory::default()
        };
        memory
            .workers
            .insert(WorkerId(0), Box::new(WorkerMemory::default()));
        (desired, observer, memory)
    }

    /// One pass for worker 0; its log cursor is kept in `memory` as the planner keeps it.
    fn observe_worker(
        desired: &Desired,
        observer: &mut Observer,
        memory: &mut Memory,
        dir: &Path,
    ) -> WorkerObservation {
        let now = BootTime::from_duration(std::time::Duration::from_secs(1000));
        let mut observed = observer.observe(desired, memory, dir, Children::default(), false, now);
        let w = observed
            .workers
            .remove(&WorkerId(0))
            .expect("worker 0 observed");
        if let LogObservation::Read { cursor, .. } = &w.log
            && let Some(m) = memory.workers.get_mut(&WorkerId(0))
        {
            m.log_cursor = Some(*cursor);
        }
        w
    }

    /// Regression: a worker's log truncated and written again to at least its old size
    /// between two passes was never read again (same inode, size ≥ the cursor): no activity,
    /// a false stuck verdict. Through the observer, its directory watch included: the
    /// rewritten lines are consumed at the next pass.
    #[test]
    fn a_log_rewritten_past_its_old_size_between_passes_has_its_new_lines_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (desired, mut observer, mut memory) = idle_observer(dir.path());
        let log = desired.log_path(WorkerId(0));
        let line = |n: u32| format!("2025-03-02 09:14:{n:02},002 - INFO - Processed batch {n}\n");
        std::fs::write(&log, (0..4).map(line).collect::<String>()).expect("write");
        let first = observe_worker(&desired, &mut observer, &mut memory, dir.path());
        assert!(matches!(&first.log, LogObservation::Read { records, .. } if records.len() == 4));
        let idle = observe_worker(&desired, &mut observer, &mut memory, dir.path());
        assert!(matches!(&idle.log, LogObservation::Read { records, .. } if records.is_empty()));
        // The worker restarts with its log opened for writing (not appending) and logs more
        // than before.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&log)
            .expect("open");
        std::io::Write::write_all(&mut f, (10..15).map(line).collect::<String>().as_bytes())
            .expect("rewrite");
        drop(f);
        let after = observe_worker(&desired, &mut observer, &mut memory, dir.path());
        let LogObservation::Read { records, reset, .. } = &after.log else {
            panic!("{:?}", after.log)
        };
        assert_eq!(*reset, Some(logtail::LogReset::Rewritten));
        assert_eq!(records.len(), 5, "{records:?}");
        assert!(records[0].message.contains("Processed batch 10"));
    }

    /// Regression: a progress file rewritten in place at the same size with its mtime set
    /// back (`cp -p`, `rsync -t`) kept the last parse (same inode, size and mtime), so the
    /// new checkpoint was never seen. Its ctime moves, and is part of the version.
    #[test]
    fn a_progress_file_rewritten_at_the_same_size_with_its_mtime_restored_is_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (desired, mut observer, mut memory) = idle_observer(dir.path());
        let path = desired.progress_path(WorkerId(0));
        std::fs::write(&path, "{\"c\": 100}").expect("write");
        let mtime = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime");
        let first = observe_worker(&desired, &mut observer, &mut memory, dir.path());
        assert!(matches!(
            first.progress,
            ProgressObservation::Read {
                checkpoint: 100,
                ..
            }
        ));
        // What `cp -p` does to an existing file: truncate, write, set the times back.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .expect("open");
        std::io::Write::write_all(&mut f, b"{\"c\": 200}").expect("rewrite");
        f.set_modified(mtime).expect("restore mtime");
        drop(f);
        let after = observe_worker(&desired, &mut observer, &mut memory, dir.path());
        assert!(
            matches!(
                after.progress,
                ProgressObservation::Read {
                    checkpoint: 200,
                    ..
                }
            ),
            "{:?}",
            after.progress
        );
    }

    /// Regression: a worker's progress file or log that is a FIFO (a mistaken path, a hostile
    /// worker) blocked the open until a writer came, and with it the whole control loop. It
    /// is now unreadable, said why, at once, on every pass.
    #[test]
    fn a_fifo_in_place_of_a_progress_file_or_log_is_unreadable_and_never_blocks_the_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (desired, mut observer, mut memory) = idle_observer(dir.path());
        for path in [
            desired.progress_path(WorkerId(0)),
            desired.log_path(WorkerId(0)),
        ] {
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .expect("mkfifo");
        }
        let root = dir.path().to_path_buf();
        let (done, passes) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..3 {
                let w = observe_worker(&desired, &mut observer, &mut memory, &root);
                if done.send((w.progress, w.log)).is_err() {
                    return;
                }
            }
        });
        for pass in 0..3 {
            let (progress, log) = passes
                .recv_timeout(std::time::Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("pass {pass} never ended: {e}"));
            assert!(
                matches!(&progress, ProgressObservation::Unreadable { why } if why.contains("FIFO")),
                "pass {pass}: {progress:?}"
            );
            assert!(
                matches!(&log, LogObservation::Unreadable { why } if why.contains("FIFO")),
                "pass {pass}: {log:?}"
            );
        }
    }

    /// A parse made a moment after the file changed (not settled: a rewrite within the same
    /// tick of the file system's clock would leave the version as it is) is reused while
    /// inotify reports nothing about the file, and never on a `stat`'s word alone.
    #[test]
    fn a_parse_not_settled_is_reused_only_while_nothing_happened_to_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.json");
        std::fs::write(&path, "{\"c\": 200}").expect("write");
        let pointers = progress::Pointers::checkpoint("/c");
        let version = progress::version(&path).expect("exists");
        let kept = ProgressObservation::Read {
            checkpoint: 100,
            items: None,
            completed: None,
        };
        let mut parsed = Some(Parsed {
            version,
            obs: kept.clone(),
            settled: false,
        });
        let opens = std::cell::Cell::new(0);
        let open = || {
            opens.set(opens.get() + 1);
            progress::open_quietly(&path)
        };
        let unchanged = Seen::Unchanged(Some(version));
        let (same, found) = ProgressReader::read(&pointers, &path, &open, unchanged, &mut parsed);
        assert_eq!((same, found, opens.get()), (kept, None, 0), "from memory");
        let stated = Seen::Stated(Some(version));
        let (read, _) = ProgressReader::read(&pointers, &path, &open, stated, &mut parsed);
        assert_eq!(opens.get(), 1, "read again");
        assert!(
            matches!(
                read,
                ProgressObservation::Read {
                    checkpoint: 200,
                    ..
                }
            ),
            "{read:?}"
        );
    }

    /// A changed file is read whatever its version says, and the reader says which version
    /// its handle had (so that the pass remembers it).
    #[test]
    fn a_changed_progress_file_is_read_and_its_version_given_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.json");
        std::fs::write(&path, "{\"c\": 300}").expect("write");
        let pointers = progress::Pointers::checkpoint("/c");
        let version = progress::version(&path).expect("exists");
        let mut parsed = Some(Parsed {
            version,
            obs: ProgressObservation::Missing,
            settled: true,
        });
        let open = || progress::open_quietly(&path);
        let (read, found) =
            ProgressReader::read(&pointers, &path, &open, Seen::Changed, &mut parsed);
        assert!(
            matches!(
                read,
                ProgressObservation::Read {
                    checkpoint: 300,
                    ..
                }
            ),
            "{read:?}"
        );
        assert_eq!(found, Some(Some(version)));
        std::fs::remove_file(&path).expect("rm");
        let (gone, found) =
            ProgressReader::read(&pointers, &path, &open, Seen::Changed, &mut parsed);
        assert_eq!((gone, found), (ProgressObservation::Missing, Some(None)));
        assert!(parsed.is_none());
    }

    /// The parse of a settled file is reused while its version holds; a version that differs
    /// only in its ctime is read again (the rule the test above needs when the first read was
    /// long ago, which a test cannot wait for).
    #[test]
    fn a_kept_parse_is_dropped_when_only_the_ctime_differs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.json");
        std::fs::write(&path, "{\"c\": 200}").expect("write");
        let pointers = progress::Pointers::checkpoint("/c");
        let old = progress::FileVersion {
            dev: 1,
            inode: 2,
            size: 10,
            mtime_ns: 1_000,
            ctime_ns: 2_000,
        };
        let kept = ProgressObservation::Read {
            checkpoint: 100,
            items: None,
            completed: None,
        };
        let mut parsed = Some(Parsed {
            version: old,
            obs: kept.clone(),
            settled: true,
        });
        let open = || progress::open_quietly(&path);
        let (same, fresh) =
            ProgressReader::read_once(&pointers, &open, Some(old), false, &mut parsed);
        assert_eq!((same, fresh), (kept, false));
        let moved = progress::FileVersion {
            ctime_ns: 3_000,
            ..old
        };
        let (again, fresh) =
            ProgressReader::read_once(&pointers, &open, Some(moved), false, &mut parsed);
        assert!(fresh);
        assert!(
            matches!(
                again,
                ProgressObservation::Read {
                    checkpoint: 200,
                    ..
                }
            ),
            "{again:?}"
        );
    }
}
