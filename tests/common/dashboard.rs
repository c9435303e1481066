//! The Grafana dashboard's queries, read for the names of the metrics they use: shared by the
//! parsing checks (`tests/deploy.rs`) and the live check against a running pipeline's
//! `/metrics` (`tests/receipts.rs`).

use std::collections::BTreeSet;
use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
pub const DASHBOARD: &str = "deploy/grafana/dashboards/otp-pipeline.json";

/// Every metric name (`otp_[a-z0-9_]+`) the dashboard's queries use, as written in them
/// (histograms as their `_bucket` series).
pub fn dashboard_metric_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for expr in dashboard_exprs() {
        names.extend(metric_names_in(&expr));
    }
    names
}

pub fn metric_names_in(expr: &str) -> BTreeSet<String> {
    let bytes = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = expr[from..].find("otp_") {
        let start = from + at;
        let end = start
            + bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'_')
                .count();
        let at_word_start =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if at_word_start {
            names.insert(expr[start..end].to_string());
        }
        from = end;
    }
    names
}

pub fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(Path::new(ROOT).join(DASHBOARD))
        .unwrap_or_else(|e| panic!("read {DASHBOARD}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not valid JSON: {e}"))
}

/// Every `expr` of the dashboard, rows' nested panels included.
pub fn dashboard_exprs() -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard(), &mut out);
    out
}
