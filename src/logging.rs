//! Log lines on stderr, in the form whoever reads stderr wants.
//!
//! - **Journal** (stderr is a journald stream: `JOURNAL_STREAM` holds the `DEV:INODE` of
//!   stderr, as systemd sets it for `StandardError=journal`): `<N>message`, N the syslog
//!   priority ([`priority`]), no timestamp (journald stamps every entry itself). Without the
//!   prefix journald would file every line at the same priority.
//! - **Text** otherwise: env_logger's own `[timestamp LEVEL] message`, as before.
//! - **JSON** (`--log-format json`): one object per line with `timestamp` (RFC 3339, UTC,
//!   milliseconds), `level`, `target` and `message`, for log shippers. On a journal stream the
//!   line keeps its `<N>` prefix, which journald strips, so the entry's MESSAGE is the object
//!   and its priority is right.
//!
//! Filtering is env_logger's: the configured level, then `WGRELAY_LOG` (env_logger's
//! directive syntax, e.g. `wgrelay::shard=trace`). A line that cannot be written (stderr
//! closed, full, a broken pipe) is dropped: logging never stops or panics the relay.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

use log::{Level, LevelFilter};

use crate::config::LogFormat;

/// How lines are written, chosen once at [`init`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Text,
    Journal,
    Json { journal: bool },
}

impl Style {
    /// The style for `format` on this process's stderr.
    pub fn detect(format: LogFormat) -> Style {
        let journal = stderr_is_journal();
        match format {
            LogFormat::Json => Style::Json { journal },
            LogFormat::Text if journal => Style::Journal,
            LogFormat::Text => Style::Text,
        }
    }
}

static STYLE: OnceLock<Style> = OnceLock::new();

/// Installs the logger: `level` (from `--log-level`/`--debug`/the file), refined by
/// `WGRELAY_LOG`, written in `format` as this stderr calls for. A second call changes nothing.
pub fn init(level: LevelFilter, format: LogFormat) {
    let style = *STYLE.get_or_init(|| Style::detect(format));
    let mut builder = env_logger::Builder::new();
    // Without WGRELAY_LOG the level is the global maximum, not the logger's own filter, so
    // that a reload can change it (`set_level`).
    let directives = std::env::var_os("WGRELAY_LOG").is_some();
    builder
        .filter_level(if directives {
            level
        } else {
            LevelFilter::Trace
        })
        .parse_env("WGRELAY_LOG")
        .format_target(false);
    match style {
        Style::Text => {}
        Style::Journal => {
            builder.format(|buf, record| {
                let line = journal_line(record.level(), &record.args().to_string());
                buf.write_all(line.as_bytes())
            });
        }
        Style::Json { journal } => {
            builder.format(move |buf, record| {
                let line = json_line(
                    &now_rfc3339(),
                    record.level(),
                    record.target(),
                    &record.args().to_string(),
                );
                let line = if journal {
                    journal_line(record.level(), &line)
                } else {
                    line + "\n"
                };
                buf.write_all(line.as_bytes())
            });
        }
    }
    // Err only when a logger is already installed (a second init): keep that one.
    if builder.try_init().is_ok() && !directives {
        log::set_max_level(level);
    }
}

/// A new level from a reload. With `WGRELAY_LOG` set, its directives keep deciding.
pub fn set_level(level: LevelFilter) {
    if std::env::var_os("WGRELAY_LOG").is_none() {
        log::set_max_level(level);
    }
}

/// An error that ends the process (a bad configuration, a failed start), written whatever
/// the log filter says, in the style of [`init`] (or, before it, text or journal as stderr
/// calls for). Plain text keeps the `wgrelay: message` form scripts grep for.
pub fn fatal(message: &str) {
    let style = STYLE
        .get()
        .copied()
        .unwrap_or_else(|| Style::detect(LogFormat::Text));
    let line = match style {
        Style::Text => format!("wgrelay: {message}\n"),
        Style::Journal => journal_line(Level::Error, &format!("wgrelay: {message}")),
        Style::Json { journal } => {
            let line = json_line(&now_rfc3339(), Level::Error, "wgrelay", message);
            if journal {
                journal_line(Level::Error, &line)
            } else {
                line + "\n"
            }
        }
    };
    // Nowhere left to report a failed write to.
    let _ = io::stderr().write_all(line.as_bytes());
}

/// The syslog priority journald files a line under: `<3>` error, `<4>` warning, `<6>` info,
/// `<7>` debug (trace has no syslog level of its own).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// `<N>message\n`; journald reads a stream line by line, so each line of a multi-line
/// message gets the prefix too (else its continuation would be filed at the default).
pub fn journal_line(level: Level, message: &str) -> String {
    let prefix = format!("<{}>", priority(level));
    let mut out = String::with_capacity(message.len() + 4);
    for line in message.split('\n') {
        out.push_str(&prefix);
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// One JSON object (no newline); serde_json escapes quotes, backslashes and control
/// characters, so any message stays one line.
pub fn json_line(timestamp: &str, level: Level, target: &str, message: &str) -> String {
    serde_json::json!({
        "timestamp": timestamp,
        "level": level.as_str().to_ascii_lowercase(),
        "target": target,
        "message": message,
    })
    .to_string()
}

/// Now in UTC as RFC 3339 with milliseconds, e.g. `2026-12-03T11:27:47.123Z`.
fn now_rfc3339() -> String {
    format!("{:.3}", jiff::Timestamp::now())
}

/// `JOURNAL_STREAM`'s `DEV:INODE`, both decimal (systemd.exec(5)).
pub fn parse_journal_stream(s: &str) -> Option<(u64, u64)> {
    let (dev, ino) = s.split_once(':')?;
    let decimal = |t: &str| {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse::<u64>().ok())
            .flatten()
    };
    Some((decimal(dev)?, decimal(ino)?))
}

/// True when `JOURNAL_STREAM` names the file stderr is open on. A child that inherited the
/// variable but had stderr redirected keeps plain lines.
fn stderr_is_journal() -> bool {
    let Some(expected) = std::env::var("JOURNAL_STREAM")
        .ok()
        .and_then(|v| parse_journal_stream(&v))
    else {
        return false;
    };
    stderr_dev_ino().is_some_and(|actual| actual == expected)
}

/// fstat(2) of fd 2, through a duplicate so the File closing it leaves stderr open.
fn stderr_dev_ino() -> Option<(u64, u64)> {
    let fd = io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_is_dev_colon_inode() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(
            parse_journal_stream("18446744073709551615:0"),
            Some((u64::MAX, 0))
        );
    }

    #[test]
    fn malformed_journal_streams_are_not_journals() {
        for s in [
            "",
            ":",
            "8",
            "8:",
            ":12",
            "8:12:3",
            " 8:12",
            "8:12 ",
            "+8:12",
            "-1:2",
            "0x8:12",
            "18446744073709551616:1",
            "8:1é",
        ] {
            assert_eq!(parse_journal_stream(s), None, "{s:?}");
        }
    }

    #[test]
    fn priorities_are_syslog_levels() {
        assert_eq!(priority(Level::Error), 3);
        assert_eq!(priority(Level::Warn), 4);
        assert_eq!(priority(Level::Info), 6);
        assert_eq!(priority(Level::Debug), 7);
        assert_eq!(priority(Level::Trace), 7);
    }

    #[test]
    fn journal_lines_prefix_every_line() {
        assert_eq!(journal_line(Level::Warn, "careful"), "<4>careful\n");
        assert_eq!(journal_line(Level::Error, "a\nb"), "<3>a\n<3>b\n");
        assert_eq!(journal_line(Level::Info, ""), "<6>\n");
    }

    #[test]
    fn json_lines_escape_odd_messages() {
        for message in [
            "plain",
            "quote \" backslash \\ slash /",
            "newline\nand\r\ttabs",
            "nul \u{0} bell \u{7} del \u{7f} escape \u{1b}[31m",
            "unicode é ✓ 🦀 and a lone combining mark \u{301}",
            "{\"looks\": \"like json\"}",
            "",
        ] {
            let line = json_line(
                "2026-12-03T11:27:47.123Z",
                Level::Debug,
                "wgrelay::x",
                message,
            );
            assert!(!line.contains('\n'), "{line:?}");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["message"], message);
            assert_eq!(v["level"], "debug");
            assert_eq!(v["target"], "wgrelay::x");
            assert_eq!(v["timestamp"], "2026-12-03T11:27:47.123Z");
        }
    }

    #[test]
    fn json_levels_are_lowercase_names() {
        for (level, name) in [
            (Level::Error, "error"),
            (Level::Warn, "warn"),
            (Level::Info, "info"),
            (Level::Debug, "debug"),
            (Level::Trace, "trace"),
        ] {
            let v: serde_json::Value =
                serde_json::from_str(&json_line("t", level, "t", "m")).unwrap();
            assert_eq!(v["level"], name);
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let ts = now_rfc3339();
        // 2026-12-03T11:27:47.123Z
        assert_eq!(ts.len(), 24, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
        assert!(ts.parse::<jiff::Timestamp>().is_ok(), "{ts}");
    }

    #[test]
    fn stderr_of_a_test_is_identified_by_fstat() {
        // Whatever stderr is here, its identity is readable and JOURNAL_STREAM is compared
        // against exactly that; the matching case runs in tests/systemd.rs.
        assert!(stderr_dev_ino().is_some());
    }
}
