//! `--log-format text|json` and the tracing subscriber. `RUST_LOG` sets the filter; without it,
//! text logs show warnings and errors (events are echoed as plain lines by the events log), and
//! JSON logs also carry the events log (`automon::events`) and pass summaries (`automon::pass`)
//! at info level, so stderr is JSON lines only.

use clap::ValueEnum;

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (tracing-subscriber's JSON format).
    Json,
}

impl LogFormat {
    /// The flag's value, for a child automon.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// Installs the global subscriber (a second call is a no-op).
pub fn init_tracing(format: LogFormat) {
    let default = match format {
        LogFormat::Text => "warn",
        LogFormat::Json => "warn,automon::events=info,automon::pass=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Through `stdio`: once the loop detaches stderr, a hung log file never holds it.
        .with_writer(crate::stdio::ErrWriter::default)
        // Colour only for a terminal: redirected logs (automon.log, a file, a pipe) stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
