//! Logging as Lambda expects it: tracing-subscriber, JSON when `AWS_LAMBDA_LOG_FORMAT=JSON`,
//! the level from `AWS_LAMBDA_LOG_LEVEL` (Lambda's advanced logging controls) or else
//! `RUST_LOG`, and a way to raise this crate's logs to debug for one invocation (`debug: true`).
//! The command line logs plain text on stderr instead ([`init_cli`]). Neither colours a line
//! unless it goes to a terminal.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Switches one invocation's logs to debug and back.
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
    base: String,
}

impl LogLevel {
    /// Debug-level logs from this crate until the returned guard is dropped. One invocation
    /// runs at a time in a Lambda execution environment, so this cannot leak into another.
    pub fn debug_for_invocation(&self, debug: bool) -> Option<DebugGuard<'_>> {
        if !debug {
            return None;
        }
        let raised = format!("{},copy_snapshots=debug", self.base);
        let _ = self.handle.reload(EnvFilter::new(raised));
        Some(DebugGuard { level: self })
    }
}

/// Restores the configured level when dropped.
pub struct DebugGuard<'a> {
    level: &'a LogLevel,
}

impl Drop for DebugGuard<'_> {
    fn drop(&mut self) {
        let _ = self.level.handle.reload(EnvFilter::new(&self.level.base));
    }
}

/// The filter directives from the environment.
fn base_directives() -> String {
    let nonempty = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    match nonempty("AWS_LAMBDA_LOG_LEVEL") {
        // Lambda's levels are TRACE, DEBUG, INFO, WARN, ERROR, FATAL.
        Some(level) if level.eq_ignore_ascii_case("fatal") => "error".to_owned(),
        Some(level) => level.to_ascii_lowercase(),
        None => nonempty("RUST_LOG").unwrap_or_else(|| "info".to_owned()),
    }
}

/// Installs the global subscriber. Call once, at start-up.
pub fn init() -> LogLevel {
    let base = base_directives();
    let (filter, handle) = reload::Layer::new(EnvFilter::new(&base));
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // Lambda stamps every line with the time already. Colour only on a terminal (`cargo lambda
    // watch` in one): CloudWatch shows escape codes as text, `[31mERROR[0m`, and a Logs
    // Insights query for ERROR would have to match around them.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let text = (!json).then(|| tracing_subscriber::fmt::layer().with_ansi(ansi).with_target(false).without_time());
    let json = json.then(|| tracing_subscriber::fmt::layer().json().with_ansi(false).with_target(false).without_time());
    tracing_subscriber::registry().with(filter).with(text).with(json).init();
    LogLevel { handle, base }
}

/// The command line's logging: plain text on stderr, errors only (the progress display shows
/// what the engine does), `RUST_LOG` if set, or this crate at debug with `--debug`.
pub fn init_cli(debug: bool) {
    let directives = match std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty()) {
        Some(directives) => directives,
        None if debug => "warn,copy_snapshots=debug".to_owned(),
        None => "error".to_owned(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(directives))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
