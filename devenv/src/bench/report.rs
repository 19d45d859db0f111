//! The result: one table (measure, target, value, verdict), printed and written as JSON with
//! the details behind it. Verdicts against targets are information; only invariants (things
//! that must hold for the numbers to mean anything) fail the run.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::BenchResult;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Meets its target.
    Pass,
    /// Misses its target.
    Miss,
    /// No target: a number to compare runs by.
    Info,
    /// An invariant failed: the run exits non-zero.
    Fail,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Miss => "MISS",
            Verdict::Info => "info",
            Verdict::Fail => "FAIL",
        }
    }

    /// `pass` when `ok`, else `miss` (a target, not an invariant).
    pub fn target(ok: bool) -> Self {
        if ok { Verdict::Pass } else { Verdict::Miss }
    }

    /// `pass` when `ok`, else `fail` (an invariant).
    pub fn invariant(ok: bool) -> Self {
        if ok { Verdict::Pass } else { Verdict::Fail }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub measure: String,
    pub target: String,
    pub value: String,
    pub verdict: Verdict,
    /// The value as a number, when it is one (seconds, bytes, counts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<f64>,
}

#[derive(Default, Serialize)]
pub struct Report {
    pub profile: Value,
    pub machine: Value,
    pub rows: Vec<Row>,
    pub details: serde_json::Map<String, Value>,
}

impl Report {
    pub fn row(
        &mut self,
        measure: impl Into<String>,
        target: impl Into<String>,
        value: impl Into<String>,
        verdict: Verdict,
        number: Option<f64>,
    ) {
        self.rows.push(Row { measure: measure.into(), target: target.into(), value: value.into(), verdict, number });
    }

    /// A measure without a target.
    pub fn info(&mut self, measure: impl Into<String>, value: impl Into<String>, number: Option<f64>) {
        self.row(measure, "-", value, Verdict::Info, number);
    }

    pub fn detail(&mut self, key: &str, value: impl Serialize) {
        self.details.insert(key.to_owned(), serde_json::to_value(value).unwrap_or(Value::Null));
    }

    pub fn failed(&self) -> bool {
        self.rows.iter().any(|r| r.verdict == Verdict::Fail)
    }

    /// The table as aligned text.
    pub fn table(&self) -> String {
        let headers = ["measure", "target", "value", "verdict"];
        let cells: Vec<[&str; 4]> =
            self.rows.iter().map(|r| [r.measure.as_str(), r.target.as_str(), r.value.as_str(), r.verdict.label()]).collect();
        let width = |i: usize| cells.iter().map(|c| c[i].chars().count()).chain([headers[i].len()]).max().unwrap_or(0);
        let widths = [width(0), width(1), width(2), width(3)];
        let line = |c: [&str; 4]| {
            format!(
                "| {:<w0$} | {:<w1$} | {:<w2$} | {:<w3$} |\n",
                c[0],
                c[1],
                c[2],
                c[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3]
            )
        };
        let mut out = line(headers);
        out.push_str(&format!(
            "|{}|{}|{}|{}|\n",
            "-".repeat(widths[0] + 2),
            "-".repeat(widths[1] + 2),
            "-".repeat(widths[2] + 2),
            "-".repeat(widths[3] + 2)
        ));
        for c in cells {
            out.push_str(&line(c));
        }
        out
    }

    pub fn write_json(&self, path: &Path) -> BenchResult<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(self)?)?;
        Ok(())
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn millis(seconds: f64) -> String {
    if seconds >= 10.0 { format!("{seconds:.1} s") } else { format!("{:.1} ms", seconds * 1000.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_invariants_fail_the_run_and_the_table_is_markdown() {
        let mut report = Report::default();
        report.row("memory", "< 64 MiB", "80.0 MiB", Verdict::target(false), Some(80.0));
        report.info("cold start", "12 s", Some(12.0));
        assert!(!report.failed(), "a missed target is a result, not a failure");
        report.row("rotations arrived", "all", "99/100", Verdict::invariant(false), Some(99.0));
        assert!(report.failed());
        let table = report.table();
        assert!(table.starts_with("| measure "), "{table}");
        assert_eq!(table.lines().count(), 5);
        assert!(table.lines().all(|l| l.starts_with('|') && l.ends_with('|')));
        assert_eq!(
            (millis(0.0123), millis(12.34), mib(64 * 1024 * 1024)),
            ("12.3 ms".to_owned(), "12.3 s".to_owned(), "64.0 MiB".to_owned())
        );
    }
}
