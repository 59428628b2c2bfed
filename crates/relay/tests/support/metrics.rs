//! The counters one sipguard instance records, read in-process: a Prometheus recorder of the
//! test's own, given to the relay it starts (nothing is installed process-wide, so tests running
//! side by side never see each other's figures), and a lookup of one series in its rendered
//! text. Shared by the relay's tests and the end-to-end tests (included there by path).

use metrics::Recorder;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::sync::Arc;

/// One instance's recorder and the handle that renders it.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        Metrics {
            recorder: Arc::new(recorder),
            handle,
        }
    }
}

impl Metrics {
    /// The recorder to hand to the relay.
    pub fn recorder(&self) -> Arc<dyn Recorder + Send + Sync> {
        Arc::clone(&self.recorder) as Arc<dyn Recorder + Send + Sync>
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// The value of the series `name` carrying every label in `labels` (e.g. `reason="idle"`);
    /// 0 when there is none.
    pub fn counter(&self, name: &str, labels: &[&str]) -> f64 {
        self.render()
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
}
