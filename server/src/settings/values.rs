//! How setting values are written: parsed from an environment variable (the
//! command line uses the same parsers through clap, the file through serde),
//! and shown as a default in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::ValueEnum;
use serde::Deserialize;

use crate::config::RegistrationPolicy;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Parses `open`, `token` or `closed`.
pub fn parse_policy(s: &str) -> Result<RegistrationPolicy, String> {
    match s.to_ascii_lowercase().as_str() {
        "open" => Ok(RegistrationPolicy::Open),
        "token" => Ok(RegistrationPolicy::Token),
        "closed" => Ok(RegistrationPolicy::Closed),
        _ => Err("expected open, token or closed".to_owned()),
    }
}

/// Parses `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
pub(super) fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

/// Parses `250ms`, `5s`, `2m`, `1h` (a bare number means seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s, 2m or 1h"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?}; use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses `IP:PORT`.
pub(super) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|e| format!("{e}; expected IP:PORT"))
}

/// Any path.
pub(super) fn parse_path(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

/// Any text.
pub(super) fn parse_text(s: &str) -> Result<String, String> {
    Ok(s.to_owned())
}

/// A decimal number.
pub(super) fn parse_number<T: FromStr>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| e.to_string())
}

/// A comma-separated list (how a list is written in one environment variable).
pub(super) fn parse_list(s: &str) -> Result<Vec<String>, String> {
    Ok(s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

/// `human` or `json`, any case.
pub(super) fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    LogFormat::from_str(s, true)
}

/// A duration in the config file: a string like `"5s"`.
pub(super) fn de_duration<'de, D: serde::Deserializer<'de>>(
    de: D,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(de)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A default as `--help` shows it, written the way the user would type it;
/// `None` for "nothing set" (no `[default: …]` then).
pub(super) trait ShowDefault {
    /// The text, if there is a default worth showing.
    fn show(&self) -> Option<String>;
}

macro_rules! show_with_display {
    ($($t:ty),*) => {$(
        impl ShowDefault for $t {
            fn show(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}
show_with_display!(SocketAddr, String, usize, u32, u64, bool);

impl ShowDefault for PathBuf {
    fn show(&self) -> Option<String> {
        Some(self.display().to_string())
    }
}

impl<T: ShowDefault> ShowDefault for Option<T> {
    fn show(&self) -> Option<String> {
        self.as_ref().and_then(T::show)
    }
}

impl ShowDefault for Vec<String> {
    fn show(&self) -> Option<String> {
        (!self.is_empty()).then(|| self.join(","))
    }
}

impl ShowDefault for Duration {
    fn show(&self) -> Option<String> {
        let ms = self.as_millis();
        Some(match ms {
            0 => "0s".to_owned(),
            ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
            ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
            ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
            ms => format!("{ms}ms"),
        })
    }
}

impl ShowDefault for RegistrationPolicy {
    fn show(&self) -> Option<String> {
        Some(
            match self {
                RegistrationPolicy::Open => "open",
                RegistrationPolicy::Token => "token",
                RegistrationPolicy::Closed => "closed",
            }
            .to_owned(),
        )
    }
}

impl ShowDefault for LogFormat {
    fn show(&self) -> Option<String> {
        self.to_possible_value().map(|v| v.get_name().to_owned())
    }
}
