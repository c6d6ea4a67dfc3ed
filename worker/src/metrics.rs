//! The worker's Prometheus metrics (`/metrics` on its `--http-listen` port): what it has run,
//! how long that took and how fast it iterates. Updating them costs an atomic add; they are
//! encoded only when scraped.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// How a task ended on this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Outcome {
    /// Rendered and reported.
    Completed,
    /// Failed (reported as failed to the coordinator).
    Failed,
    /// Cancelled, handed back on shutdown, or its lease lost.
    Interrupted,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// A worker's metrics; clones share them.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    registry: Arc<Registry>,
    tasks: Family<OutcomeLabels, Counter>,
    task_seconds: Histogram,
    iterations: Counter,
    iterations_per_second: Gauge<f64, AtomicU64>,
    busy: Gauge,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    /// Every metric at zero, registered under the `stylefarm_worker_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("stylefarm_worker");
        let tasks = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "tasks",
            "Tasks this worker ran, by how they ended (completed, failed, interrupted)",
            tasks.clone(),
        );
        // 0.5 s to ~2.3 h.
        let task_seconds = Histogram::new(exponential_buckets(0.5, 2.0, 15));
        registry.register(
            "task_duration_seconds",
            "Wall time of each task on this worker, lease to report",
            task_seconds.clone(),
        );
        let iterations = Counter::default();
        registry.register(
            "iterations",
            "Optimisation iterations rendered (rate() of it is the iterations per second)",
            iterations.clone(),
        );
        let iterations_per_second = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "iterations_per_second",
            "Iterations per second of the last task that rendered any",
            iterations_per_second.clone(),
        );
        let busy = Gauge::default();
        registry.register("busy", "1 while a task runs, else 0", busy.clone());
        for outcome in [Outcome::Completed, Outcome::Failed, Outcome::Interrupted] {
            let _ = tasks.get_or_create(&OutcomeLabels::of(outcome));
        }
        Self {
            registry: Arc::new(registry),
            tasks,
            task_seconds,
            iterations,
            iterations_per_second,
            busy,
        }
    }

    /// A task began.
    pub(crate) fn task_started(&self) {
        self.busy.set(1);
    }

    /// A task ended after `seconds`, having rendered `iterations`.
    pub(crate) fn task_ended(&self, outcome: Outcome, seconds: f64, iterations: u32) {
        self.busy.set(0);
        self.tasks.get_or_create(&OutcomeLabels::of(outcome)).inc();
        self.task_seconds.observe(seconds);
        self.iterations.inc_by(u64::from(iterations));
        if iterations > 0 && seconds > 0.0 {
            self.iterations_per_second
                .set(f64::from(iterations) / seconds);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

impl OutcomeLabels {
    fn of(outcome: Outcome) -> Self {
        Self {
            outcome: match outcome {
                Outcome::Completed => "completed",
                Outcome::Failed => "failed",
                Outcome::Interrupted => "interrupted",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_counts_its_outcome_time_and_iterations() {
        let m = WorkerMetrics::new();
        m.task_started();
        assert!(m.encode().contains("stylefarm_worker_busy 1\n"));
        m.task_ended(Outcome::Completed, 2.0, 50);
        let text = m.encode();
        assert!(text.contains("stylefarm_worker_busy 0\n"), "{text}");
        assert!(
            text.contains("stylefarm_worker_tasks_total{outcome=\"completed\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("stylefarm_worker_tasks_total{outcome=\"failed\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("stylefarm_worker_iterations_total 50\n"),
            "{text}"
        );
        let rate: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("stylefarm_worker_iterations_per_second "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(rate, 25.0);
        assert!(
            text.contains("stylefarm_worker_task_duration_seconds_count 1\n"),
            "{text}"
        );
    }
}
