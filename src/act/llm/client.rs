//! [`LlmClient`]: one diagnosis through any OpenAI-compatible Chat Completions endpoint
//! (`POST {base}/chat/completions`), with the reliability rules automon needs from a service it
//! does not control:
//!
//! - one deadline (`llm.timeout`) covers every attempt and every wait;
//! - at most [`MAX_RETRIES`] retries, on 408, 409, 429, 5xx and transport errors, after a
//!   jittered exponential backoff or the server's `Retry-After` (seconds), whichever is longer;
//! - a 429 whose error code is `insufficient_quota` is not retried: it opens a circuit for
//!   [`CIRCUIT_OPEN_FOR`], during which [`LlmClient::diagnose`] fails at once without a request;
//! - a server that rejects the `json_schema` response format (a 400 naming `response_format` or
//!   `json_schema`) is asked again once in JSON mode, and remembered as such;
//! - answers are cached in memory by (model, [`PROMPT_VERSION`], hash of the redacted prompt).
//!
//! The API key is sent only in the `Authorization` header (marked sensitive), and never
//! printed, logged or stored: [`LlmClient`]'s `Debug` shows whether there is one, not what it is.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::LlmError;
use super::diagnosis::{Diagnosis, parse_answer, strict_schema};
use super::diagnostics::Diagnostics;
use super::prompt::{PROMPT_VERSION, system_message, user_message};
use super::redact::Redactor;
use crate::manifest::Desired;
use crate::manifest::types::Llm;

/// OpenAI's API, used when neither the manifest nor the environment names a base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// Retries after the first attempt, at most.
pub const MAX_RETRIES: u32 = 2;
/// First backoff before jitter; doubled on each retry.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// How long the circuit stays open after an `insufficient_quota` answer.
pub const CIRCUIT_OPEN_FOR: Duration = Duration::from_secs(15 * 60);
/// Most answers kept in the cache; the cache is emptied when it is full.
pub const CACHE_CAPACITY: usize = 256;

/// A source of monotonic time for the circuit breaker (tests move it forward).
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// A diagnosis and how it was obtained.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DiagnosisOutcome {
    /// The validated answer.
    pub diagnosis: Diagnosis,
    /// What validation clamped, mapped, dropped or flagged, one sentence each (redacted).
    pub notes: Vec<String>,
    /// The model that answered (as the server reports it, else as configured).
    pub model: String,
    /// True when the answer came from the in-memory cache without a request.
    pub cached: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    JsonSchema,
    JsonObject,
}

type CacheKey = (String, u32, u64);

#[derive(Default)]
struct Shared {
    cache: HashMap<CacheKey, DiagnosisOutcome>,
    /// The circuit is open until this instant, and why.
    circuit: Option<(Instant, String)>,
    /// The server rejected `json_schema` once: use JSON mode from now on.
    json_mode_only: bool,
}

/// A client for one OpenAI-compatible endpoint. Cheap to clone (clones share the cache and the
/// circuit); safe to use from several tasks.
#[derive(Clone)]
pub struct LlmClient {
    http: reqwest::Client,
    endpoint: String,
    api_key: Option<String>,
    model: String,
    timeout: Duration,
    backoff: Duration,
    circuit_open_for: Duration,
    redactor: Redactor,
    shared: Arc<Mutex<Shared>>,
    clock: Clock,
}

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClient")
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field(
                "api_key",
                &if self.api_key.is_some() {
                    "<set>"
                } else {
                    "<none>"
                },
            )
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl LlmClient {
    /// A client for the manifest's `llm` section. The base URL is `llm.base_url`, else
    /// `$OPENAI_BASE_URL`, else `$OPENAI_API_BASE`, else [`DEFAULT_BASE_URL`]. The key is read
    /// from the environment variable named by `llm.api_key_env`, else from a `.env` file in
    /// `manifest_dir` (`KEY=value` lines); no key (local servers such as Ollama, vLLM or
    /// llama.cpp) means no `Authorization` header.
    ///
    /// # Errors
    /// [`LlmError::Config`] when the base URL is not an http(s) URL or the HTTP client cannot
    /// be built.
    pub fn from_manifest(llm: &Llm, manifest_dir: &Path) -> Result<Self, LlmError> {
        Self::from_manifest_with_env(llm, manifest_dir, |name| std::env::var(name).ok())
    }

    /// Like [`LlmClient::from_manifest`], with environment variables looked up through `env`.
    ///
    /// # Errors
    /// As [`LlmClient::from_manifest`].
    pub fn from_manifest_with_env(
        llm: &Llm,
        manifest_dir: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, LlmError> {
        let nonempty =
            |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let base = nonempty(llm.base_url.clone())
            .or_else(|| nonempty(env("OPENAI_BASE_URL")))
            .or_else(|| nonempty(env("OPENAI_API_BASE")))
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(LlmError::Config {
                what: format!(
                    "base URL {:?} is not an http:// or https:// URL",
                    super::redact::redact_shapes(&base)
                ),
            });
        }
        let endpoint = format!("{}/chat/completions", base.trim_end_matches('/'));
        let api_key = nonempty(env(&llm.api_key_env))
            .or_else(|| nonempty(dotenv_value(&manifest_dir.join(".env"), &llm.api_key_env)));
        let http = reqwest::Client::builder()
            .connect_timeout(llm.timeout.get().min(Duration::from_secs(10)))
            .user_agent(concat!("automon/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| LlmError::Config {
                what: format!("cannot build the HTTP client: {e}"),
            })?;
        let mut redactor = Redactor::default();
        for name in &llm.secret_env {
            redactor.add(env(name));
        }
        if let Some(k) = &api_key {
            redactor.add([k.clone()]);
        }
        Ok(Self {
            http,
            endpoint,
            api_key,
            model: llm.model.clone(),
            timeout: llm.timeout.get(),
            backoff: BACKOFF_BASE,
            circuit_open_for: CIRCUIT_OPEN_FOR,
            redactor,
            shared: Arc::new(Mutex::new(Shared::default())),
            clock: Arc::new(Instant::now),
        })
    }

    /// A client for a resolved manifest: [`LlmClient::from_manifest`], redacting with the
    /// manifest's redactor ([`crate::secrets::redactor_for`]: the one worker logs pass through).
    ///
    /// # Errors
    /// As [`LlmClient::from_manifest`].
    pub fn from_desired(desired: &Desired, manifest_dir: &Path) -> Result<Self, LlmError> {
        let mut client = Self::from_manifest(&desired.llm, manifest_dir)?;
        client
            .redactor
            .merge(&crate::secrets::redactor_for(desired));
        Ok(client)
    }

    /// Adds literal secrets to redact from every prompt and message.
    pub fn with_secrets(mut self, secrets: &Redactor) -> Self {
        self.redactor.merge(secrets);
        self
    }

    /// Replaces the clock the circuit breaker reads (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Replaces the first backoff before jitter (default [`BACKOFF_BASE`]).
    pub fn with_backoff(mut self, base: Duration) -> Self {
        self.backoff = base;
        self
    }

    /// Replaces how long the circuit stays open (default [`CIRCUIT_OPEN_FOR`]).
    pub fn with_circuit_open_for(mut self, d: Duration) -> Self {
        self.circuit_open_for = d;
        self
    }

    /// The configured model.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// `POST {base}/chat/completions`, as requests go.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// True when an API key was found.
    pub fn has_api_key(&self) -> bool {
        self.api_key.is_some()
    }

    /// The redacted messages (system, user) a diagnosis of `d` sends.
    pub fn messages(&self, d: &Diagnostics) -> (String, String) {
        (
            self.redactor.redact(&system_message()),
            self.redactor.redact(&user_message(d)),
        )
    }

    /// Asks the model about `d` and validates the answer against `d.policy`.
    ///
    /// # Errors
    /// [`LlmError::CircuitOpen`] while the quota circuit is open (no request is made);
    /// [`LlmError::Timeout`] when `llm.timeout` passes; [`LlmError::Quota`] on
    /// `insufficient_quota`; [`LlmError::Http`] on another error status (after retries);
    /// [`LlmError::Transport`] when the server cannot be reached (after retries);
    /// [`LlmError::BadResponse`], [`LlmError::Truncated`], [`LlmError::Refused`] and
    /// [`LlmError::InvalidAnswer`] when the answer cannot be used.
    pub async fn diagnose(&self, d: &Diagnostics) -> Result<DiagnosisOutcome, LlmError> {
        self.check_circuit()?;
        let (system, user) = self.messages(d);
        let key = (
            self.model.clone(),
            PROMPT_VERSION,
            prompt_hash(&system, &user),
        );
        if let Some(hit) = self.lock().cache.get(&key).cloned() {
            return Ok(DiagnosisOutcome {
                cached: true,
                ..hit
            });
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let result = tokio::time::timeout_at(deadline, self.exchange(&system, &user, d, deadline))
            .await
            .unwrap_or(Err(LlmError::Timeout {
                after: self.timeout,
            }));
        let outcome = result?;
        let mut shared = self.lock();
        if shared.cache.len() >= CACHE_CAPACITY {
            shared.cache.clear();
        }
        shared.cache.insert(key, outcome.clone());
        Ok(outcome)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panic while holding the lock cannot leave the cache or circuit inconsistent (each
        // update is a single assignment), so a poisoned lock is used as it is.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_circuit(&self) -> Result<(), LlmError> {
        let now = (self.clock)();
        let mut shared = self.lock();
        match &shared.circuit {
            Some((until, why)) if *until > now => Err(LlmError::CircuitOpen {
                remaining: *until - now,
                why: why.clone(),
            }),
            Some(_) => {
                shared.circuit = None;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn exchange(
        &self,
        system: &str,
        user: &str,
        d: &Diagnostics,
        deadline: tokio::time::Instant,
    ) -> Result<DiagnosisOutcome, LlmError> {
        let mut retries = 0;
        let mut fell_back = false;
        loop {
            let format = if self.lock().json_mode_only {
                Format::JsonObject
            } else {
                Format::JsonSchema
            };
            let body = request_body(&self.model, system, user, format);
            let mut req = self.http.post(&self.endpoint).json(&body);
            if let Some(key) = &self.api_key {
                req = req.bearer_auth(key);
            }
            tracing::debug!(endpoint = %self.endpoint, model = %self.model, retries, ?format, "LLM request");
            let (status, retry_after, text) = match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = retry_after(resp.headers());
                    match resp.text().await {
                        Ok(t) => (status, retry_after, t),
                        Err(e) => {
                            let err = LlmError::Transport {
                                why: self.clean(&format!("reading the answer: {e}")),
                            };
                            self.wait_or_fail(&mut retries, None, deadline, err).await?;
                            continue;
                        }
                    }
                }
                Err(e) => {
                    let err = LlmError::Transport {
                        why: self.clean(&transport_message(&e)),
                    };
                    self.wait_or_fail(&mut retries, None, deadline, err).await?;
                    continue;
                }
            };
            if (200..300).contains(&status) {
                return self.read_answer(&text, d, fell_back);
            }
            let (code, message) = error_fields(&text);
            let message = self.clean(&message);
            if status == 429 && code.as_deref() == Some("insufficient_quota") {
                let why = format!("429 insufficient_quota: {message}");
                self.lock().circuit = Some(((self.clock)() + self.circuit_open_for, why.clone()));
                tracing::warn!(endpoint = %self.endpoint, "LLM quota exhausted; circuit open");
                return Err(LlmError::Quota {
                    message,
                    open_for: self.circuit_open_for,
                });
            }
            if status == 400 && format == Format::JsonSchema && !fell_back && rejects_schema(&text)
            {
                tracing::info!(endpoint = %self.endpoint, "json_schema rejected; retrying in JSON mode");
                self.lock().json_mode_only = true;
                fell_back = true;
                continue;
            }
            let err = LlmError::Http { status, message };
            if matches!(status, 408 | 409 | 429) || (500..600).contains(&status) {
                self.wait_or_fail(&mut retries, retry_after, deadline, err)
                    .await?;
                continue;
            }
            return Err(err);
        }
    }

    /// Sleeps before the next retry, or returns `err` when no retry is left or the wait would
    /// pass the deadline.
    async fn wait_or_fail(
        &self,
        retries: &mut u32,
        retry_after: Option<Duration>,
        deadline: tokio::time::Instant,
        err: LlmError,
    ) -> Result<(), LlmError> {
        if *retries >= MAX_RETRIES {
            return Err(err);
        }
        let backoff = jittered(self.backoff * 2u32.pow(*retries));
        let wait = retry_after.map_or(backoff, |ra| ra.max(backoff));
        if tokio::time::Instant::now() + wait >= deadline {
            return Err(err);
        }
        *retries += 1;
        tracing::debug!(?wait, retries = *retries, error = %err, "LLM retry");
        tokio::time::sleep(wait).await;
        Ok(())
    }

    fn read_answer(
        &self,
        text: &str,
        d: &Diagnostics,
        fell_back: bool,
    ) -> Result<DiagnosisOutcome, LlmError> {
        let body: Value = serde_json::from_str(text).map_err(|e| LlmError::BadResponse {
            why: format!(
                "not JSON ({e}); starts {:?}",
                self.clean(&text.chars().take(80).collect::<String>())
            ),
        })?;
        let choice =
            body.get("choices")
                .and_then(|c| c.get(0))
                .ok_or_else(|| LlmError::BadResponse {
                    why: "no choices[0] in the answer".into(),
                })?;
        let message = choice.get("message");
        if let Some(refusal) = message
            .and_then(|m| m.get("refusal"))
            .and_then(Value::as_str)
            .filter(|r| !r.trim().is_empty())
        {
            return Err(LlmError::Refused {
                why: self.clean(refusal),
            });
        }
        match choice.get("finish_reason").and_then(Value::as_str) {
            Some("length") => return Err(LlmError::Truncated),
            Some("content_filter") => {
                return Err(LlmError::Refused {
                    why: "the server's content filter stopped the answer".into(),
                });
            }
            _ => {}
        }
        let content = message
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
            .ok_or_else(|| LlmError::BadResponse {
                why: "choices[0].message.content is missing or not text".into(),
            })?;
        let (mut diagnosis, notes) =
            parse_answer(content, &d.policy).map_err(|e| LlmError::InvalidAnswer {
                why: self.clean(&e.to_string()),
            })?;
        diagnosis.root_cause = self.redactor.redact(&diagnosis.root_cause);
        diagnosis.fix_description = self.redactor.redact(&diagnosis.fix_description);
        let mut notes: Vec<String> = notes.iter().map(|n| self.clean(n)).collect();
        if fell_back {
            notes.push(
                "the server rejected the json_schema response format; answered in JSON mode".into(),
            );
        }
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .unwrap_or(&self.model)
            .to_string();
        Ok(DiagnosisOutcome {
            diagnosis,
            notes,
            model,
            cached: false,
        })
    }

    /// Redacts and shortens text that came from the server.
    fn clean(&self, text: &str) -> String {
        let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let red = self.redactor.redact(&one_line);
        match red.char_indices().nth(300) {
            Some((i, _)) => format!("{}…", &red[..i]),
            None => red,
        }
    }
}

/// The Chat Completions request body.
fn request_body(model: &str, system: &str, user: &str, format: Format) -> Value {
    let response_format = match format {
        Format::JsonSchema => json!({
            "type": "json_schema",
            "json_schema": {"name": "diagnosis", "strict": true, "schema": strict_schema()},
        }),
        Format::JsonObject => json!({"type": "json_object"}),
    };
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ],
        "response_format": response_format,
    })
}

/// The error code (`error.code`, else `error.type`) and message of an error body; the raw
/// text (shortened by the caller) when it is not OpenAI's error shape.
fn error_fields(text: &str) -> (Option<String>, String) {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return (None, text.to_string());
    };
    let err = v.get("error").unwrap_or(&v);
    let s = |k: &str| err.get(k).and_then(Value::as_str).map(str::to_string);
    let code = s("code").or_else(|| s("type"));
    let message = s("message")
        .or_else(|| err.as_str().map(str::to_string))
        .unwrap_or_else(|| text.to_string());
    (code, message)
}

/// True when a 400 body says the `json_schema` response format is not supported.
fn rejects_schema(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("response_format") || t.contains("json_schema")
}

/// `Retry-After` in seconds (integer or decimal); HTTP dates are ignored.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

/// `d` scaled by a random factor in [0.5, 1.5).
fn jittered(d: Duration) -> Duration {
    let h = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    let r = (h % 1000) as f64 / 1000.0;
    d.mul_f64(0.5 + r)
}

fn prompt_hash(system: &str, user: &str) -> u64 {
    // DefaultHasher::new() uses fixed keys: stable within (and across) runs of one build.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    system.hash(&mut h);
    user.hash(&mut h);
    h.finish()
}

/// A transport error as one line with its causes (reqwest's top-level message alone says only
/// "error sending request").
fn transport_message(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The value of `key` in a `.env` file (`KEY=value` lines, optional `export `, optional
/// quotes, `#` comments); `None` when the file or the key is absent.
pub fn dotenv_value(path: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_dotenv(&text, key)
}

/// The value of `key` in `.env` text (see [`dotenv_value`]); the last assignment wins.
pub fn parse_dotenv(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
            if line.starts_with('#') {
                return None;
            }
            let (k, v) = line.split_once('=')?;
            (k.trim() == key).then(|| {
                let v = v.trim();
                let unquoted = v
                    .strip_prefix('"')
                    .and_then(|s| s.strip_suffix('"'))
                    .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')));
                match unquoted {
                    Some(u) => u.to_string(),
                    None => v.split(" #").next().unwrap_or(v).trim().to_string(),
                }
            })
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llm() -> Llm {
        Llm::default()
    }

    #[test]
    fn base_url_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let c = LlmClient::from_manifest_with_env(&llm(), dir.path(), env(&[])).unwrap();
        assert_eq!(c.endpoint(), "https://api.openai.com/v1/chat/completions");
        let c = LlmClient::from_manifest_with_env(
            &llm(),
            dir.path(),
            env(&[("OPENAI_API_BASE", "http://b/v1")]),
        )
        .unwrap();
        assert_eq!(c.endpoint(), "http://b/v1/chat/completions");
        let c = LlmClient::from_manifest_with_env(
            &llm(),
            dir.path(),
            env(&[
                ("OPENAI_API_BASE", "http://b/v1"),
                ("OPENAI_BASE_URL", "http://a/v1/"),
            ]),
        )
        .unwrap();
        assert_eq!(c.endpoint(), "http://a/v1/chat/completions");
        let mut m = llm();
        m.base_url = Some("http://localhost:11434/v1".into());
        let c = LlmClient::from_manifest_with_env(
            &m,
            dir.path(),
            env(&[("OPENAI_BASE_URL", "http://a/v1")]),
        )
        .unwrap();
        assert_eq!(c.endpoint(), "http://localhost:11434/v1/chat/completions");
        m.base_url = Some("ftp://x".into());
        let err = LlmClient::from_manifest_with_env(&m, dir.path(), env(&[])).unwrap_err();
        assert!(err.to_string().contains("not an http"), "{err}");
    }

    #[test]
    fn key_from_env_then_dotenv_and_never_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let none = |_: &str| None;
        let c = LlmClient::from_manifest_with_env(&llm(), dir.path(), none).unwrap();
        assert!(!c.has_api_key(), "no key: local servers need none");
        std::fs::write(
            dir.path().join(".env"),
            "# comment\nOTHER=1\nexport OPENAI_API_KEY=\"sk-dotenv-secret-123456\"\n",
        )
        .unwrap();
        let c = LlmClient::from_manifest_with_env(&llm(), dir.path(), none).unwrap();
        assert!(c.has_api_key());
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("sk-dotenv"), "{dbg}");
        assert!(dbg.contains("<set>"), "{dbg}");
        let c = LlmClient::from_manifest_with_env(&llm(), dir.path(), |k| {
            (k == "OPENAI_API_KEY").then(|| "sk-env-secret-99999999".to_string())
        })
        .unwrap();
        assert!(!format!("{c:?}").contains("sk-env"));
        // The key itself is redacted from prompts even where it has no known shape.
        let mut m = llm();
        m.api_key_env = "LOCAL_KEY".into();
        let c = LlmClient::from_manifest_with_env(&m, dir.path(), |k| {
            (k == "LOCAL_KEY").then(|| "plainkeyvalue".to_string())
        })
        .unwrap();
        assert_eq!(c.redactor.redact("x plainkeyvalue y"), "x [REDACTED] y");
    }

    #[test]
    fn dotenv_parsing() {
        let text = "A=1\nB='two words'\n  export C = three # note\nA=4\n#D=5\n";
        assert_eq!(parse_dotenv(text, "A").as_deref(), Some("4"));
        assert_eq!(parse_dotenv(text, "B").as_deref(), Some("two words"));
        assert_eq!(parse_dotenv(text, "C").as_deref(), Some("three"));
        assert_eq!(parse_dotenv(text, "D"), None);
    }

    #[test]
    fn error_fields_and_schema_rejection() {
        let body = r#"{"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}}"#;
        assert_eq!(
            error_fields(body),
            (
                Some("insufficient_quota".into()),
                "You exceeded your current quota".into()
            )
        );
        assert_eq!(error_fields("oops"), (None, "oops".into()));
        assert!(rejects_schema(
            r#"{"error": {"message": "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model."}}"#
        ));
        assert!(!rejects_schema(r#"{"error": {"message": "bad model"}}"#));
    }

    #[test]
    fn jitter_stays_within_half_and_one_and_a_half() {
        for _ in 0..100 {
            let j = jittered(Duration::from_millis(1000));
            assert!(j >= Duration::from_millis(500) && j < Duration::from_millis(1500));
        }
    }
}
