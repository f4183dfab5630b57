//! What an operator asks of a worker (`automon pause` / `resume` / `reset-params`). The request
//! reaches the running loop over its control socket (see [`crate::control`]), or is applied by
//! the command itself under the lock when no loop runs.

use serde::{Deserialize, Serialize};

/// What an operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestKind {
    /// Stop the worker and keep it stopped.
    Pause,
    /// Let the worker run again (also clears an escalation pause or failure).
    Resume,
    /// Drop the parameter values config fixes set; the manifest's defaults apply from the
    /// worker's next start.
    ResetParams,
}
