//! Prometheus text exposition format 0.0.4: [`render`] writes it, [`parse`] reads the subset
//! [`render`] writes (samples without timestamps; `#` lines skipped), which is what the collector
//! needs from scrapes and pushes.

use crate::{Registry, Sample};
use std::fmt::Write;

/// Longest line [`parse`] accepts; longer means a broken or hostile peer.
pub const LINE_BYTES_MAX: usize = 64 << 10;

/// Why a text body did not parse; `line` is 1-based.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("metrics text line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

fn escape(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

pub(crate) fn labels_text(labels: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape(v, &mut out);
        out.push('"');
    }
    out
}

fn write_value(value: f64, out: &mut String) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{value}");
    }
}

fn write_sample(sample: &Sample, out: &mut String) {
    out.push_str(&sample.name);
    if !sample.labels.is_empty() {
        out.push('{');
        out.push_str(&labels_text(&sample.labels));
        out.push('}');
    }
    out.push(' ');
    write_value(sample.value, out);
    out.push('\n');
}

/// The registry as Prometheus text: `# HELP`, `# TYPE`, then the samples of each family.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    for (name, help, kind, samples) in registry.families() {
        out.push_str("# HELP ");
        out.push_str(&name);
        out.push(' ');
        out.push_str(&help.replace('\\', "\\\\").replace('\n', "\\n"));
        out.push('\n');
        let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
        for sample in &samples {
            write_sample(sample, &mut out);
        }
    }
    out
}

/// Samples without help or type lines.
pub fn render_samples(samples: &[Sample]) -> String {
    let mut out = String::new();
    for sample in samples {
        write_sample(sample, &mut out);
    }
    out
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .ok_or_else(|| "no value after the name".to_string())?;
    let name = &line[..name_end];
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let mut consumed = None;
        loop {
            // Skip separators.
            while let Some(&(_, c)) = chars.peek() {
                if c == ',' || c == ' ' {
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.peek() {
                Some(&(i, '}')) => {
                    consumed = Some(i + 1);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("bad label name {key:?}"));
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key} has no quoted value"));
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        other => return Err(format!("bad escape {other:?} in label {key}")),
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(format!("label {key} value is not closed"));
            }
            labels.push((key, value));
        }
        let consumed = consumed.ok_or_else(|| "labels are not closed with }".to_string())?;
        rest = &after[consumed..];
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().ok_or_else(|| "no value".to_string())?;
    let value = parse_value(value).ok_or_else(|| format!("bad value {value:?}"))?;
    // An optional timestamp may follow; anything more is an error.
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".to_string());
    }
    labels.sort();
    Ok(Sample { name: name.to_string(), labels, value })
}

/// Every sample of a text body.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.len() > LINE_BYTES_MAX {
            return Err(ParseError { line: line_no, reason: "line too long".to_string() });
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        samples.push(parse_line(line).map_err(|reason| ParseError { line: line_no, reason })?);
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn renders_help_type_and_samples() {
        let registry = Registry::new();
        registry.counter("r3fs_test_reads_total", "Reads served", &[("target", "7")]).add(5);
        registry.gauge("r3fs_test_queue_length", "Queue", &[]).set(-3);
        let text = render(&registry);
        assert!(text.contains("# HELP r3fs_test_reads_total Reads served\n"), "{text}");
        assert!(text.contains("# TYPE r3fs_test_reads_total counter\n"));
        assert!(text.contains("r3fs_test_reads_total{target=\"7\"} 5\n"));
        assert!(text.contains("r3fs_test_queue_length -3\n"));
        let parsed = parse(&text).unwrap();
        assert_eq!(parsed, registry.snapshot());
    }

    #[test]
    fn rejects_broken_lines_with_their_number() {
        assert_eq!(parse("a 1\nb{x=\"1\" 2\n").unwrap_err().line, 2);
        assert!(parse("a{x=1} 2").is_err());
        assert!(parse("a").is_err());
        assert!(parse("a one").is_err());
        assert!(parse("a 1 2 3").is_err());
        assert_eq!(parse("a 1 1700000000000").unwrap()[0].value, 1.0);
        assert!(parse("a +Inf").unwrap()[0].value.is_infinite());
    }

    proptest! {
        #[test]
        fn render_then_parse_round_trips(
            values in proptest::collection::vec(
                ("[a-z]{1,6}", "[ -~\n]{0,12}", -1e12f64..1e12f64), 0..20)
        ) {
            let samples: Vec<Sample> = values
                .into_iter()
                .map(|(key, value, number)| Sample {
                    name: "r3fs_test_value_units".to_string(),
                    labels: vec![(key, value)],
                    value: number,
                })
                .collect();
            let parsed = parse(&render_samples(&samples)).unwrap();
            prop_assert_eq!(parsed, samples);
        }
    }
}
