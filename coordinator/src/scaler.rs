//! KEDA's external scaler API (`externalscaler.ExternalScaler`), served on the gRPC port so
//! that KEDA scales each worker pool on the farm's own queue.
//!
//! A `ScaledObject`'s trigger names its pool in its metadata: `pool` is `cpu` (the default)
//! or `cuda`, and `targetTasksPerWorker` (default 1) is how many tasks one worker should
//! have. The metric of a pool is its tasks waiting for a worker plus those leased or running
//! on one ([`Tally::demand`]): a scaler that counted only the waiting tasks would read ~0 as
//! soon as tasks are handed out and scale the busy workers away. Tasks that ask for no device
//! count toward `cpu`, the pool that always runs. KEDA asks for the replicas the HPA needs,
//! `ceil(metric / targetTasksPerWorker)`; `IsActive` (demand above 0) is what lets it scale
//! a pool from and to zero.
//!
//! Open like health: KEDA's external scaler sends no token (it can show a client certificate
//! under mutual TLS), and the answers are a few counts per pool, nothing about the jobs.
//! Numbers come from the copy the database thread publishes after each commit: no call here
//! waits for it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use stylefarm_proto::externalscaler::external_scaler_server::ExternalScaler;
use stylefarm_proto::externalscaler::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::scheduler::{Pool, Tally};
use crate::state::Signals;

/// The trigger metadata key naming the pool.
const POOL_KEY: &str = "pool";
/// The trigger metadata key for the tasks one worker should have.
const TARGET_KEY: &str = "targetTasksPerWorker";
/// The largest `targetTasksPerWorker` accepted.
const MAX_TARGET: f64 = 1_000_000.0;

/// The scaler service.
#[derive(Clone)]
pub(crate) struct Scaler {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) signals: Arc<Signals>,
}

/// What a trigger asks about.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Trigger {
    pool: Pool,
    target: f64,
}

impl Trigger {
    fn of(object: Option<&ScaledObjectRef>) -> Result<Self, Status> {
        let empty = HashMap::new();
        let metadata = object.map_or(&empty, |o| &o.scaler_metadata);
        let pool = match metadata.get(POOL_KEY).map(|p| p.trim()) {
            None | Some("") => Pool::Cpu,
            Some(name) => Pool::named(name).ok_or_else(|| {
                let shown: String = name.chars().take(40).collect();
                Status::invalid_argument(format!(
                    "scalerMetadata.{POOL_KEY}: unknown pool `{shown}` (cpu or cuda)"
                ))
            })?,
        };
        let target = match metadata.get(TARGET_KEY).map(|t| t.trim()) {
            None | Some("") => 1.0,
            Some(text) => text
                .parse::<f64>()
                .ok()
                .filter(|t| t.is_finite() && *t > 0.0 && *t <= MAX_TARGET)
                .ok_or_else(|| {
                    let shown: String = text.chars().take(40).collect();
                    Status::invalid_argument(format!(
                        "scalerMetadata.{TARGET_KEY}: `{shown}` is not a number of tasks above 0 \
                         and at most {MAX_TARGET}"
                    ))
                })?,
        };
        Ok(Self { pool, target })
    }

    /// The metric's name, as KEDA sees it.
    fn metric_name(self) -> String {
        format!("stylefarm-{}-tasks", self.pool.name())
    }

    fn active(self, tally: &Tally) -> bool {
        tally.demand(self.pool) > 0
    }
}

type ActiveStream = Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for Scaler {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let trigger = Trigger::of(Some(request.get_ref()))?;
        Ok(Response::new(IsActiveResponse {
            result: trigger.active(&self.metrics.tally()),
        }))
    }

    type StreamIsActiveStream = ActiveStream;

    /// The pool's activity now, then each time it changes, until the coordinator stops.
    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let trigger = Trigger::of(Some(request.get_ref()))?;
        let mut tally = self.metrics.watch_tally();
        let signals = self.signals.clone();
        let stream = async_stream(move |tx| async move {
            let mut last = None;
            loop {
                let active = trigger.active(&tally.borrow_and_update());
                if last != Some(active) {
                    last = Some(active);
                    if tx
                        .send(Ok(IsActiveResponse { result: active }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                tokio::select! {
                    changed = tally.changed() => if changed.is_err() { return },
                    () = signals.shutdown_requested() => return,
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let trigger = Trigger::of(Some(request.get_ref()))?;
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: trigger.metric_name(),
                // KEDA's deprecated integer target, rounded up (at least 1).
                target_size: trigger.target.ceil().max(1.0) as i64,
                target_size_float: trigger.target,
            }],
        }))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let request = request.into_inner();
        let trigger = Trigger::of(request.scaled_object_ref.as_ref())?;
        let demand = self.metrics.tally().demand(trigger.pool);
        let metric_name = if request.metric_name.is_empty() {
            trigger.metric_name()
        } else {
            request.metric_name
        };
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name,
                metric_value: i64::try_from(demand).unwrap_or(i64::MAX),
                metric_value_float: demand as f64,
            }],
        }))
    }
}

/// A stream fed by `produce` through a channel of one: it ends when `produce` returns, and
/// `produce` sees the receiver gone when the caller hangs up.
fn async_stream<F, Fut>(produce: F) -> ActiveStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<IsActiveResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(produce(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(pairs: &[(&str, &str)]) -> ScaledObjectRef {
        ScaledObjectRef {
            name: "workers".into(),
            namespace: "farm".into(),
            scaler_metadata: pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        }
    }

    #[test]
    fn triggers_name_a_pool_and_a_target() {
        let t = Trigger::of(Some(&object(&[]))).unwrap();
        assert_eq!((t.pool, t.target), (Pool::Cpu, 1.0));
        let t = Trigger::of(None).unwrap();
        assert_eq!(t.pool, Pool::Cpu);
        let t = Trigger::of(Some(&object(&[("pool", "cuda"), (TARGET_KEY, "2.5")]))).unwrap();
        assert_eq!((t.pool, t.target), (Pool::Cuda, 2.5));
        assert_eq!(t.metric_name(), "stylefarm-cuda-tasks");
        for bad in [
            &[("pool", "tpu")][..],
            &[(TARGET_KEY, "0")][..],
            &[(TARGET_KEY, "-1")][..],
            &[(TARGET_KEY, "NaN")][..],
            &[(TARGET_KEY, "1e9")][..],
            &[(TARGET_KEY, "many")][..],
        ] {
            let e = Trigger::of(Some(&object(bad))).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }
}
