//! Human output: aligned text tables and UTC timestamps (no time crate needed for one format).

/// Renders rows (the first is the header) as left-aligned columns separated by two spaces, one
/// line per row, each ending in a newline. Trailing spaces are trimmed.
pub fn render_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A table under construction: a header and rows of the same width.
#[derive(Debug, Clone)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self { rows: vec![header.iter().map(|s| s.to_string()).collect()] }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.rows[0].len(), "row width matches the header");
        self.rows.push(cells);
    }

    pub fn len(&self) -> usize {
        self.rows.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn render(&self) -> String {
        render_table(&self.rows)
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for milliseconds since the Unix epoch; `N/A` for 0 (never).
pub fn format_utc_ms(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "N/A".to_string();
    }
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_lines_are_trimmed() {
        let mut table = Table::new(&["Id", "Hostname"]);
        table.row(vec!["1".into(), "a".into()]);
        table.row(vec!["10001".into(), "storage-1".into()]);
        assert_eq!(table.render(), "Id     Hostname\n1      a\n10001  storage-1\n");
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn utc_formatting_matches_known_instants() {
        assert_eq!(format_utc_ms(0), "N/A");
        assert_eq!(format_utc_ms(1), "1970-01-01 00:00:00");
        assert_eq!(format_utc_ms(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(format_utc_ms(1_700_000_000_123), "2023-11-14 22:13:20");
        assert_eq!(format_utc_ms(4_102_444_799_000), "2099-12-31 23:59:59");
    }
}
