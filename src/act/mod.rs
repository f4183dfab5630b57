//! Actuators: they carry out the planner's actions and report outcomes; they never decide or
//! retry by themselves — the next plan does.

pub mod fix;
pub mod llm;
pub mod remedy;
pub mod setup;

// Spawning and stopping processes is the local runtime's (see [`crate::runtime::local`]).
pub use crate::runtime::local::{spawn, stop};
