//! The coordinator's Prometheus metrics, served at `/metrics` on its HTTP port.
//!
//! Scraping never waits for the database thread: that thread copies its running tally (tasks
//! by state and pool, jobs by state: a few dozen numbers kept in step as tasks move) and the
//! events it counted into these metrics after each commit, and a scrape encodes what is here.
//! The autoscaler's numbers ([`Metrics::tally`]) come from the same copy.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::scheduler::{Counted, Pool, Tally, JOB_STATES, OWN_COLUMN, TASK_STATES};

/// The content type of the exposition: OpenMetrics text, which Prometheus reads.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `pool` label of the coordinator's own tasks (lock-step drivers, contact sheets).
const OWN_POOL: &str = "coordinator";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TaskLabels {
    state: &'static str,
    pool: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PoolLabel {
    pool: &'static str,
}

/// Every metric of the coordinator.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    tasks: Family<TaskLabels, Gauge>,
    jobs: Family<StateLabel, Gauge>,
    queue_depth: Family<PoolLabel, Gauge>,
    demand: Family<PoolLabel, Gauge>,
    lease_expiries: Counter,
    retries: Counter,
    blocklistings: Counter,
    task_seconds: Histogram,
    blob_bytes: Gauge,
    /// The tally as of the last commit (the autoscaler watches it).
    tally: watch::Sender<Tally>,
}

fn pool_name(column: usize) -> &'static str {
    Pool::ALL.get(column).map_or(OWN_POOL, |p| p.name())
}

impl Metrics {
    /// Every metric registered, at zero.
    pub(crate) fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("stylefarm");
        let tasks = Family::<TaskLabels, Gauge>::default();
        registry.register(
            "tasks",
            "Tasks by state and worker pool (cpu, cuda; coordinator: its own tasks)",
            tasks.clone(),
        );
        let jobs = Family::<StateLabel, Gauge>::default();
        registry.register("jobs", "Jobs by state", jobs.clone());
        let queue_depth = Family::<PoolLabel, Gauge>::default();
        registry.register(
            "queue_depth",
            "Tasks waiting for a worker of the pool (queued, or failed with attempts left)",
            queue_depth.clone(),
        );
        let demand = Family::<PoolLabel, Gauge>::default();
        registry.register(
            "pool_demand",
            "Tasks of the pool waiting for a worker or leased or running on one: the \
             autoscaler's metric",
            demand.clone(),
        );
        let lease_expiries = Counter::default();
        registry.register(
            "lease_expiries",
            "Leases that lapsed because their worker stopped reporting",
            lease_expiries.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "task_retries",
            "Failed attempts after which the task was queued again",
            retries.clone(),
        );
        let blocklistings = Counter::default();
        registry.register(
            "worker_blocklistings",
            "Times a worker was set aside for a job after failing its tasks",
            blocklistings.clone(),
        );
        // 0.5 s to ~2.3 h.
        let task_seconds = Histogram::new(exponential_buckets(0.5, 2.0, 15));
        registry.register(
            "task_duration_seconds",
            "Time workers report for the tasks they completed",
            task_seconds.clone(),
        );
        let blob_bytes = Gauge::default();
        registry.register(
            "blob_store_bytes",
            "Bytes of the blobs stored (images, results, previews)",
            blob_bytes.clone(),
        );
        let metrics = Self {
            registry,
            tasks,
            jobs,
            queue_depth,
            demand,
            lease_expiries,
            retries,
            blocklistings,
            task_seconds,
            blob_bytes,
            tally: watch::Sender::new(Tally::default()),
        };
        metrics.publish(Tally::default(), Counted::default());
        Arc::new(metrics)
    }

    /// Takes the farm's state as of a commit: the tally, and the events counted in it.
    pub(crate) fn publish(&self, tally: Tally, counted: Counted) {
        for (row, state) in TASK_STATES.iter().enumerate() {
            for column in 0..=OWN_COLUMN {
                let n = tally.tasks[row][column];
                self.tasks
                    .get_or_create(&TaskLabels {
                        state,
                        pool: pool_name(column),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        for (row, state) in JOB_STATES.iter().enumerate() {
            self.jobs
                .get_or_create(&StateLabel { state })
                .set(i64::try_from(tally.jobs[row]).unwrap_or(i64::MAX));
        }
        for pool in Pool::ALL {
            let label = PoolLabel { pool: pool.name() };
            let depth = i64::try_from(tally.queue_depth(pool)).unwrap_or(i64::MAX);
            self.queue_depth.get_or_create(&label).set(depth);
            let demand = i64::try_from(tally.demand(pool)).unwrap_or(i64::MAX);
            self.demand.get_or_create(&label).set(demand);
        }
        self.lease_expiries.inc_by(counted.lease_expiries);
        self.retries.inc_by(counted.retries);
        self.blocklistings.inc_by(counted.blocklistings);
        self.tally.send_if_modified(|t| {
            let changed = *t != tally;
            *t = tally;
            changed
        });
    }

    /// The tally as of the last commit.
    pub(crate) fn tally(&self) -> Tally {
        *self.tally.borrow()
    }

    /// The tally as of the last commit, and each later one that differs.
    pub(crate) fn watch_tally(&self) -> watch::Receiver<Tally> {
        self.tally.subscribe()
    }

    /// A task completed after `seconds` (as its worker measured).
    pub(crate) fn task_completed(&self, seconds: f64) {
        if seconds.is_finite() && seconds >= 0.0 {
            self.task_seconds.observe(seconds);
        }
    }

    /// The text exposition, with the blob store holding `blob_bytes`.
    pub(crate) fn encode(&self, blob_bytes: u64) -> String {
        self.blob_bytes
            .set(i64::try_from(blob_bytes).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_numbers_show_in_the_exposition() {
        let m = Metrics::new();
        let mut tally = Tally::default();
        tally.tasks[1][0] = 3; // queued, cpu
        tally.tasks[3][1] = 2; // running, cuda
        tally.jobs[1] = 1; // active
        m.publish(
            tally,
            Counted {
                lease_expiries: 1,
                retries: 2,
                blocklistings: 0,
            },
        );
        m.task_completed(1.5);
        m.task_completed(f64::NAN);
        let text = m.encode(1234);
        for line in [
            "stylefarm_tasks{state=\"queued\",pool=\"cpu\"} 3",
            "stylefarm_tasks{state=\"running\",pool=\"cuda\"} 2",
            "stylefarm_tasks{state=\"queued\",pool=\"coordinator\"} 0",
            "stylefarm_jobs{state=\"active\"} 1",
            "stylefarm_queue_depth{pool=\"cpu\"} 3",
            "stylefarm_pool_demand{pool=\"cuda\"} 2",
            "stylefarm_lease_expiries_total 1",
            "stylefarm_task_retries_total 2",
            "stylefarm_worker_blocklistings_total 0",
            "stylefarm_task_duration_seconds_count 1",
            "stylefarm_blob_store_bytes 1234",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        assert_eq!(m.tally(), tally);
    }
}
