//! The log every Patronus process writes on stderr: text for people, or one
//! JSON object per line for Loki and other collectors (`--log-format json`,
//! or `PATRONUS_LOG_FORMAT=json`).
//!
//! A JSON line holds `timestamp` (RFC 3339, UTC), `level`, `target` (the
//! module that logged), `message`, and the event's own fields at the top
//! level: `site`, `dataplane`, `peer`, `path_id`, `policy` and the like where
//! they apply (docs/monitoring.md lists them). `RUST_LOG` filters either
//! format (default `info`).

use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// How the log is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("the log format is text or json, not {other:?}")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// The command-line option every binary takes for its log.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct LogArgs {
    /// Log format on stderr: text, or json (one object per line, for Loki).
    #[arg(
        long,
        env = "PATRONUS_LOG_FORMAT",
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
}

/// Installs the process's log on stderr in `format`. Call once, first thing.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => log.with_ansi(std::io::stderr().is_terminal()).init(),
        // Spans are not used for context: the fields a collector indexes
        // are the events' own, so each line stands alone.
        LogFormat::Json => log
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_by_name_and_print_back() {
        for format in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(format.to_string().parse::<LogFormat>(), Ok(format));
        }
        assert_eq!(
            "yaml".parse::<LogFormat>(),
            Err("the log format is text or json, not \"yaml\"".to_owned())
        );
    }
}
