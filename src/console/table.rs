//! A console result set: typed columns and text-format rows, encoded as RowDescription,
//! DataRows and CommandComplete, the way PostgreSQL answers a query. Pure; also formats the
//! values (PostgreSQL's text forms of booleans, floats and timestamps).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;

use crate::protocol::encode;

/// Column types, by the PostgreSQL type a client decodes them as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Text,
    Bool,
    Int4,
    Int8,
    Float8,
    Timestamptz,
}

impl Type {
    pub fn oid(self) -> u32 {
        match self {
            Type::Text => 25,
            Type::Bool => 16,
            Type::Int4 => 23,
            Type::Int8 => 20,
            Type::Float8 => 701,
            Type::Timestamptz => 1184,
        }
    }
}

/// Rows under named, typed columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<(String, Type)>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    pub fn new(columns: &[(&str, Type)]) -> Table {
        Table {
            columns: columns.iter().map(|(n, t)| ((*n).to_owned(), *t)).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one value per column.
    pub fn push(&mut self, row: Vec<Option<String>>) {
        debug_assert_eq!(row.len(), self.columns.len(), "row width");
        self.rows.push(row);
    }

    /// The column's values, by name (tests and callers that read back a table).
    pub fn column(&self, name: &str) -> Vec<Option<&str>> {
        let Some(i) = self.columns.iter().position(|(n, _)| n == name) else {
            return Vec::new();
        };
        self.rows.iter().map(|r| r[i].as_deref()).collect()
    }

    /// RowDescription, a DataRow per row, then CommandComplete with `tag`.
    pub fn encode(&self, buf: &mut BytesMut, tag: &str) {
        let columns: Vec<(&str, u32)> = self
            .columns
            .iter()
            .map(|(n, t)| (n.as_str(), t.oid()))
            .collect();
        encode::row_description(buf, &columns);
        for row in &self.rows {
            let values: Vec<Option<&str>> = row.iter().map(Option::as_deref).collect();
            encode::data_row(buf, &values);
        }
        encode::command_complete(buf, tag);
    }
}

pub fn text(s: impl Into<String>) -> Option<String> {
    Some(s.into())
}

pub fn int(n: impl Into<i64>) -> Option<String> {
    Some(n.into().to_string())
}

/// A count as int8 (saturating: counts never reach it).
pub fn count(n: usize) -> Option<String> {
    int(i64::try_from(n).unwrap_or(i64::MAX))
}

pub fn boolean(b: bool) -> Option<String> {
    Some(if b { "t" } else { "f" }.to_owned())
}

/// A float8 rounded to microunits, in its shortest text form (`0.25`, `1.5`).
pub fn float(x: f64) -> Option<String> {
    let rounded = (x * 1e6).round() / 1e6;
    Some(format!("{rounded}"))
}

/// PostgreSQL's text form of a timestamptz in UTC: `2025-01-31 12:00:00.123456+00`.
pub fn timestamp(t: SystemTime) -> Option<String> {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    Some(format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}+00",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_micros()
    ))
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::split_message;
    use std::time::Duration;

    #[test]
    fn values_have_postgresql_text_forms() {
        assert_eq!(boolean(true).as_deref(), Some("t"));
        assert_eq!(boolean(false).as_deref(), Some("f"));
        assert_eq!(float(0.25).as_deref(), Some("0.25"));
        assert_eq!(float(1.000_000_4).as_deref(), Some("1"));
        assert_eq!(float(12.345_678_9).as_deref(), Some("12.345679"));
        assert_eq!(count(3).as_deref(), Some("3"));
        let at = |s: u64, us: u64| UNIX_EPOCH + Duration::from_secs(s) + Duration::from_micros(us);
        assert_eq!(
            timestamp(at(0, 0)).as_deref(),
            Some("1970-01-01 00:00:00.000000+00")
        );
        // 2024-02-29 23:59:59 UTC (a leap day) and 2000-03-01.
        assert_eq!(
            timestamp(at(1_709_251_199, 123_456)).as_deref(),
            Some("2024-02-29 23:59:59.123456+00")
        );
        assert_eq!(
            timestamp(at(951_868_800, 0)).as_deref(),
            Some("2000-03-01 00:00:00.000000+00")
        );
    }

    #[test]
    fn a_table_encodes_as_a_result_set() {
        let mut t = Table::new(&[("name", Type::Text), ("n", Type::Int8)]);
        t.push(vec![text("a"), int(1)]);
        t.push(vec![text("b"), None]);
        assert_eq!(t.column("name"), [Some("a"), Some("b")]);
        assert_eq!(t.column("n"), [Some("1"), None]);
        let mut buf = BytesMut::new();
        t.encode(&mut buf, "SHOW");
        let tags: Vec<u8> = std::iter::from_fn(|| split_message(&mut buf, 1 << 20).unwrap())
            .map(|m| m[0])
            .collect();
        assert_eq!(tags, b"TDDC");
    }
}
