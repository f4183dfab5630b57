//! LLM diagnosis of stuck workers through any OpenAI-compatible Chat Completions endpoint
//! (OpenAI, or a local Ollama / vLLM / llama.cpp server), safe by construction.
//!
//! The flow: [`collect_diagnostics`] gathers what automon knows about one worker (redacted) →
//! [`LlmClient::diagnose`] renders the prompt ([`prompt`]), sends it with a strict JSON Schema
//! ([`diagnosis::strict_schema`]), and validates the answer against the manifest's
//! [`FixPolicy`] → a [`DiagnosisOutcome`] with notes for everything clamped or refused. Nothing
//! here applies a fix: the planner decides, the fix engine enforces the allow-list again.
//!
//! Safety properties:
//! - the log is data: the system message says so, and data cannot close its delimiters;
//! - nothing a log says can widen what automon does: config values are clamped to the
//!   manifest's bounds, unknown parameters dropped, disallowed fix types downgraded to restart,
//!   files outside the allow-list flagged;
//! - secrets are redacted before anything is sent or stored ([`redact`]); the API key is never
//!   printed, logged or stored.
//!
//! # Layout
//!
//! - [`diagnosis`]: the answer type, its strict schema, parsing and validation.
//! - [`diagnostics`]: what a prompt carries and how it is gathered.
//! - [`prompt`]: the system and user messages.
//! - [`redact`]: secret removal (lives in [`crate::secrets`]; the same redactor guards logs).
//! - [`client`]: the HTTP client — retries, deadline, circuit breaker, cache.

pub mod client;
pub mod diagnosis;
pub mod diagnostics;
pub mod prompt;
pub use crate::secrets::redact;

use std::time::Duration;

pub use client::{DiagnosisOutcome, LlmClient};
pub use diagnosis::{ConfigChanges, Diagnosis, FixPolicy, FixType};
pub use diagnostics::{Diagnostics, ErrorLine, FixRecord, SourceExcerpt, collect_diagnostics};
pub use prompt::PROMPT_VERSION;
pub use redact::Redactor;

/// Why a diagnosis failed. Messages are one line, redacted, and name what failed; the caller
/// falls back to its built-in rules.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// The `llm` settings cannot make a client.
    #[error("LLM settings: {what}")]
    Config {
        /// What is wrong.
        what: String,
    },
    /// A recent `insufficient_quota` answer opened the circuit; no request was made.
    #[error(
        "LLM circuit open for another {}s after {why}",
        remaining.as_secs()
    )]
    CircuitOpen {
        /// Time until requests are tried again.
        remaining: Duration,
        /// The answer that opened it.
        why: String,
    },
    /// `llm.timeout` passed before an answer (all attempts and waits included).
    #[error("LLM gave no answer within {}s (llm.timeout)", after.as_secs_f64())]
    Timeout {
        /// The timeout.
        after: Duration,
    },
    /// 429 `insufficient_quota`: the account is out of credit; the circuit is now open.
    #[error(
        "LLM quota exhausted (429 insufficient_quota): {message}; not asking again for {}s",
        open_for.as_secs()
    )]
    Quota {
        /// The server's message.
        message: String,
        /// How long the circuit stays open.
        open_for: Duration,
    },
    /// The server answered an error status (after any retries).
    #[error("LLM server answered HTTP {status}: {message}")]
    Http {
        /// The status code.
        status: u16,
        /// The server's error message.
        message: String,
    },
    /// The server could not be reached or the connection broke (after any retries).
    #[error("cannot reach the LLM server: {why}")]
    Transport {
        /// The cause.
        why: String,
    },
    /// The body is not a Chat Completions answer.
    #[error("LLM answer is not a chat completion: {why}")]
    BadResponse {
        /// What is wrong.
        why: String,
    },
    /// `finish_reason` was `length`: the answer was cut off.
    #[error("LLM answer was cut off (finish_reason \"length\")")]
    Truncated,
    /// The model refused, or a content filter stopped it.
    #[error("LLM refused to answer: {why}")]
    Refused {
        /// The refusal text.
        why: String,
    },
    /// The content is not a usable diagnosis.
    #[error("LLM answer unusable: {why}")]
    InvalidAnswer {
        /// Why.
        why: String,
    },
}
