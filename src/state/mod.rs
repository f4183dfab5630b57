//! The state directory (default `.automon/` beside the manifest): persisted [`Memory`], the
//! single-instance lock, and the events log.
//!
//! Layout: `state.json` (memory, written atomically), `lock` (flock held for automon's life;
//! holds the owner's pid), `events.log` (one line per decision, appended), `auto_fix_history.jsonl` (one record per
//! fix and verification, appended).

mod events;
mod history;
mod lock;
pub mod requests;
mod store;

pub use events::EventLog;
pub use history::{FixHistory, HISTORY_FILE, HistoryRecord, read_history};
pub use lock::{InstanceLock, LockError, lock_holder};
pub use store::{StateError, load_memory, move_aside, save_memory};

use std::path::{Path, PathBuf};

/// The default state directory for a manifest: `.automon/` in the manifest's directory.
pub fn default_state_dir(manifest_dir: &Path) -> PathBuf {
    manifest_dir.join(".automon")
}
