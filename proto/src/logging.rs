//! Logging for the binaries (the coordinator, the worker and the CLI's embedded farm), set up
//! in one place: human text on stderr by default, or one JSON object per line on stdout for
//! log collectors (`--log-format json`, or `STYLEFARM_LOG_FORMAT=json`). The level comes from
//! `RUST_LOG` as usual.

use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// The environment variable that picks the log format.
pub const LOG_FORMAT_ENV: &str = "STYLEFARM_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human text on stderr (the default).
    #[default]
    Text,
    /// One JSON object per line on stdout: `timestamp`, `level`, `target`, `fields`
    /// (`message` and the event's fields) and the enclosing `spans`.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown log format `{other}`: expected `text` or `json`"
            )),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

impl LogFormat {
    /// The format `STYLEFARM_LOG_FORMAT` names; text when it is unset or empty.
    ///
    /// # Errors
    /// A value other than `text` or `json`.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(LOG_FORMAT_ENV) {
            Ok(v) if !v.trim().is_empty() => {
                v.parse().map_err(|e| format!("{LOG_FORMAT_ENV}: {e}"))
            }
            _ => Ok(Self::Text),
        }
    }
}

/// The filter `RUST_LOG` gives, or `default` (e.g. `"info"`) when it is unset or invalid.
pub fn filter_or(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// Installs the process's logger: `format` with `filter`. A second call leaves the first
/// logger in place.
pub fn init(format: LogFormat, filter: EnvFilter) {
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // Already set (a test harness, or a second call): keep that one.
    let _ = match format {
        // Colours only on a terminal: a log file or a collector gets plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_writer(std::io::stdout)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_print_back() {
        for f in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(f.to_string().parse::<LogFormat>(), Ok(f));
        }
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        let err = "yaml".parse::<LogFormat>().unwrap_err();
        assert!(err.contains("`yaml`") && err.contains("json"), "{err}");
    }
}
