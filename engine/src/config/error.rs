//! Config errors that name the key, file and line, in words rather than serde's.

use std::{
    io,
    path::{Path, PathBuf},
};

/// Why a config could not be loaded. `key` is the full dotted path, e.g. `leak.lookback`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{}{}{message}", location(path.as_deref(), *line), key_prefix(key))]
    Parse {
        path: Option<PathBuf>,
        line: Option<usize>,
        key: String,
        message: String,
    },
    #[error("{}{key}: {message}", location(path.as_deref(), None))]
    Invalid {
        path: Option<PathBuf>,
        key: String,
        message: String,
    },
}

fn location(path: Option<&Path>, line: Option<usize>) -> String {
    match (path, line) {
        (Some(p), Some(l)) => format!("{}:{l}: ", p.display()),
        (Some(p), None) => format!("{}: ", p.display()),
        (None, Some(l)) => format!("line {l}: "),
        (None, None) => String::new(),
    }
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

/// Turns serde's messages into "what was expected, what was found" and puts an unknown or
/// missing key into the key path.
pub(super) fn describe(key: String, message: &str) -> (String, String) {
    let ticked: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    if message.starts_with("unknown field") {
        let expected = ticked.get(1..).unwrap_or_default().join(", ");
        return (key, format!("unknown key (expected one of: {expected})"));
    }
    if let (true, Some(field)) = (message.starts_with("missing field"), ticked.first()) {
        let key = if key.is_empty() {
            (*field).to_owned()
        } else {
            format!("{key}.{field}")
        };
        return (key, "required key is missing".into());
    }
    let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected "))
    else {
        return (key, message.trim_end().to_owned());
    };
    let found = match found.split([' ', '`', '"']).next().unwrap_or_default() {
        "string" => "a string",
        "integer" => "an integer",
        "floating" => "a number",
        "boolean" => "a boolean",
        "sequence" => "a list",
        "map" => "a table",
        _ => found,
    };
    let expected = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" => "an integer",
        "f32" | "f64" => "a number",
        "a sequence" => "a list",
        e if e.starts_with("struct ") => "a table",
        e => e,
    };
    (key, format!("expected {expected}, found {found}"))
}
