//! The state directory (default `.automon/` beside the manifest): persisted [`Memory`], the
//! single-instance lock, and the events log.
//!
//! Layout: `state.json` (memory, written atomically), `lock` (flock held for automon's life;
//! holds the owner's pid, start time and boot id, and a `condition:` line when something in
//! automon's own house is wrong), `events.log` (one line per decision, appended), `auto_fix_history.jsonl` (one record per
//! fix and verification, appended), `status.json` (the loop's last pass, for `automon status`),
//! `automon.pid` (pid and start ticks of an automon started by `automon start`), `setup.json`
//! (the setup being run, see [`crate::act::setup`]), `automon.log`
//! (its stdout and stderr), `control.sock` (the running loop's control socket, see
//! [`crate::control`]). The directory is 0700 and every file in it 0600 ([`private`]).

mod events;
pub mod fleet_lock;
mod history;
mod instance;
mod lock;
pub mod private;
pub mod requests;
mod status;
mod store;
mod writer;

pub use events::{EventFields, EventLog, mentioned_worker};
pub use fleet_lock::{FleetFiles, FleetHolder, FleetLock};
pub use history::{
    FixHistory, HISTORY_FILE, HistoryBasis, HistoryRecord, changes as history_changes, read_history,
};
pub use instance::{
    Instance, PID_FILE, pid_file, read_pid_file, remove_pid_file, running_instance, write_pid_file,
};
pub use lock::{InstanceLock, LockError, Recheck, RecordedOwner, recorded_owner};

/// The pid of the automon loop running on `state_dir`, if one runs (reads the lock file's
/// recorded owner and checks it is that process still; never touches the lock itself, so a
/// probe cannot make a starting automon fail to take it).
pub fn lock_holder(state_dir: &std::path::Path) -> Option<i32> {
    running_instance(state_dir).map(|i| i.pid)
}
pub use status::{DaemonStatus, STATUS_FILE, read_status, status_file, write_status};
pub use store::{StateError, load_memory, move_aside, remove_stale_temp_files, save_memory};
pub use writer::{SaveDone, Snapshot, StateWriter};

use std::path::{Path, PathBuf};

/// The default state directory for a manifest: `.automon/` in the manifest's directory.
pub fn default_state_dir(manifest_dir: &Path) -> PathBuf {
    manifest_dir.join(".automon")
}
