//! The counters sipguard records, read in-process: a Prometheus recorder installed once for the
//! test binary, and a lookup of one series in its rendered text. Shared by the relay's tests and
//! the end-to-end tests (included there by path).

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// The recorder of this test binary, installed on first use (before any relay registers its
/// counters, as long as tests call this before starting one).
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("no other metrics recorder in this test binary")
    })
}

/// The value of the series `name` carrying every label in `labels` (e.g. `reason="idle"`);
/// 0 when there is none.
pub fn counter(name: &str, labels: &[&str]) -> f64 {
    let rendered = metrics().render();
    rendered
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|line| line.split_once("} "))
        .find(|(series, _)| {
            labels
                .iter()
                .all(|label| series.split(',').any(|l| l == *label))
        })
        .map_or(0.0, |(_, value)| value.parse().unwrap())
}
