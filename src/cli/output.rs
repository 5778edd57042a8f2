//! How operator commands print: an aligned table for people, or JSON for
//! scripts (`--output json`), from the same rows.

use std::io::Write;

use serde::Serialize;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// Rows under headers, printed with columns padded to the widest cell.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let last = cells.len().saturating_sub(1);
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == last {
                        c.to_string()
                    } else {
                        format!("{c:<width$}", width = widths[i])
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
        };
        writeln!(out, "{}", line(self.headers.clone()))?;
        for row in &self.rows {
            writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
        }
        Ok(())
    }
}

/// Print `value` as JSON, or the table `table` builds from it.
pub fn emit<T: Serialize>(
    output: Output,
    value: &T,
    table: impl FnOnce(&T) -> Table,
) -> anyhow::Result<()> {
    let out = &mut std::io::stdout().lock();
    match output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut *out, value)?;
            writeln!(out)?;
        }
        Output::Table => table(value).write(out)?,
    }
    Ok(())
}

/// `1.5 GiB`, `512 B`.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A Unix time as RFC 3339 in UTC.
pub fn time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| secs.to_string())
}

/// `--at`: RFC 3339 (`2026-12-01T10:00:00Z`, with any offset), or a UTC
/// date and time without offset (`2026-12-01T10:00`, `2026-12-01 10:00:30`),
/// or `@<unix seconds>`.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Some(secs) = s.strip_prefix('@') {
        return secs
            .parse()
            .map_err(|_| format!("{s:?}: expected @<unix seconds>"));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp());
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, format) {
            return Ok(t.and_utc().timestamp());
        }
    }
    Err(format!(
        "{s:?} is not a time: use 2026-12-01T10:00 (UTC), RFC 3339 or @<unix seconds>"
    ))
}

/// A database URL fit to print: any password replaced.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_json_is_the_same_rows() {
        let mut t = Table::new(&["ID", "NAME"]);
        t.row(vec!["a".into(), "first".into()]);
        t.row(vec!["long-id".into(), "x".into()]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "ID       NAME\na        first\nlong-id  x\n");
    }

    #[test]
    fn times_parse_and_print() {
        assert_eq!(parse_time("2026-12-01T10:00").unwrap(), 1_796_119_200);
        assert_eq!(parse_time("2026-12-01T10:00:00Z").unwrap(), 1_796_119_200);
        assert_eq!(
            parse_time("2026-12-01T11:00:00+01:00").unwrap(),
            1_796_119_200
        );
        assert_eq!(parse_time("@42").unwrap(), 42);
        assert!(parse_time("yesterday").is_err());
        assert_eq!(time(1_796_119_200), "2026-12-01T10:00:00Z");
    }

    #[test]
    fn sizes_and_secrets() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(512 << 20), "512.0 MiB");
        assert_eq!(
            redact_url("postgres://jax:hunter2@db:5432/jax"),
            "postgres://jax:***@db:5432/jax"
        );
        assert_eq!(redact_url("postgres://jax@db/jax"), "postgres://jax@db/jax");
    }
}
