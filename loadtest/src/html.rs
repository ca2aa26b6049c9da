//! The self-contained HTML report.

use crate::report::Report;

pub fn render(report: &Report) -> String {
    format!("<!doctype html><title>loadtest {}</title>", report.scenario)
}
