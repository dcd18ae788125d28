//! How results are written: objects as pretty JSON, lists as aligned tables (or JSON
//! lines with `--json`), times in UTC. Everything goes to stdout; notes for the user
//! (a list has more pages) go to stderr, so a pipe gets only the data.

use std::io::Write;

use serde_json::Value;

use crate::error::CliError;

/// One object, as the server sent it, indented.
pub fn object(value: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    line(&text)
}

/// One line on stdout; a closed pipe (`| head`) is an error, so the command stops.
pub fn line(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").map_err(|e| CliError::io("stdout", e))
}

/// A table: the header, then each row, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Result<(), CliError> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let render = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            if i + 1 < widths.len() {
                let pad = width.saturating_sub(cell.chars().count());
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        text.trim_end().to_owned()
    };
    line(&render(&mut header.iter().copied()))?;
    for row in rows {
        line(&render(&mut row.iter().map(String::as_str)))?;
    }
    Ok(())
}

/// The data of a list page, and a note on stderr when there is more of it.
pub fn page_items(page: &Value) -> Vec<Value> {
    let items = page
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if page.get("has_more").and_then(Value::as_bool) == Some(true) {
        if let Some(last) = page.get("last_id").and_then(Value::as_str) {
            eprintln!("(more: add --after {last})");
        }
    }
    items
}

/// A field as text: strings bare, `null` and absent as `-`, anything else as JSON.
pub fn text(value: &Value, field: &str) -> String {
    match value.get(field) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A Unix time (seconds) field as `2025-01-31 14:05:09`, in UTC.
pub fn time(value: &Value, field: &str) -> String {
    value
        .get(field)
        .and_then(Value::as_i64)
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map_or_else(
            || "-".to_owned(),
            |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
        )
}

/// Seconds as `42s`, `3m07s` or `1h02m`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// The arguments every list command takes: a page, and whether to print it as JSON.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[arg(long)]
    pub limit: Option<u32>,
    /// The last id of the previous page.
    #[arg(long)]
    pub after: Option<String>,
    /// The page as the server sent it, as JSON.
    #[arg(long)]
    pub json: bool,
}

impl ListArgs {
    /// The page's query parameters.
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        query.extend(self.limit.map(|l| ("limit", l.to_string())));
        query.extend(self.after.clone().map(|a| ("after", a)));
        query
    }
}

/// A column of a list table: its header, and the field whose value it shows (a time
/// for [`Column::Time`]).
pub enum Column {
    Text(&'static str, &'static str),
    Time(&'static str, &'static str),
}

/// A list page: as the server sent it with `json`, else a table of `columns`.
pub fn list(page: &Value, json: bool, columns: &[Column]) -> Result<(), CliError> {
    if json {
        return object(page);
    }
    let header: Vec<&str> = columns
        .iter()
        .map(|c| match c {
            Column::Text(h, _) | Column::Time(h, _) => *h,
        })
        .collect();
    let rows: Vec<Vec<String>> = page_items(page)
        .iter()
        .map(|item| {
            columns
                .iter()
                .map(|c| match c {
                    Column::Text(_, field) => text(item, field),
                    Column::Time(_, field) => time(item, field),
                })
                .collect()
        })
        .collect();
    table(&header, &rows)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{duration, text, time};

    #[test]
    fn fields_read_as_text() {
        let v = json!({"a": "x", "b": null, "c": 3, "t": 1_700_000_000});
        assert_eq!(text(&v, "a"), "x");
        assert_eq!(text(&v, "b"), "-");
        assert_eq!(text(&v, "missing"), "-");
        assert_eq!(text(&v, "c"), "3");
        assert_eq!(time(&v, "t"), "2023-11-14 22:13:20");
        assert_eq!(time(&v, "a"), "-");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(duration(9.4), "9s");
        assert_eq!(duration(187.0), "3m07s");
        assert_eq!(duration(3720.0), "1h02m");
        assert_eq!(duration(-1.0), "0s");
    }
}
