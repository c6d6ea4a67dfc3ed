//! Admission control in front of every service, as a tower layer: a bound on the calls in
//! flight (short calls and long-lived streams counted apart, so that idle workers' long polls
//! and open watches cannot starve submissions, nor the reverse), load shedding past it
//! (RESOURCE_EXHAUSTED at once, naming the limit, instead of a queue that grows), and a
//! deadline on short calls that leaves the long-lived ones alone (a watch, a long poll, a
//! shard's stream or an upload lasts as long as its work).
//!
//! [`ShardSplit`] gives the worker service two message-size limits: a shard's stream carries
//! a tile's gradient (hundreds of MiB for the largest tiles), every other call a few KiB.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::Status;

/// The layer's bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GuardLimits {
    /// Short calls in flight at once (`--max-concurrent-requests`).
    pub(crate) max_requests: usize,
    /// Long-lived calls open at once (`--max-concurrent-streams`): watches, long polls,
    /// shards' streams, uploads and downloads.
    pub(crate) max_streams: usize,
    /// The longest a short call may take (`--rpc-timeout-seconds`).
    pub(crate) rpc_timeout: Duration,
    /// The largest message (`--max-message-bytes`), named when one is refused.
    pub(crate) max_message_bytes: usize,
}

/// Wraps every service of the server in a [`Guard`] sharing one set of permits.
#[derive(Debug, Clone)]
pub(crate) struct GuardLayer {
    limits: GuardLimits,
    requests: Arc<Semaphore>,
    streams: Arc<Semaphore>,
}

impl GuardLayer {
    pub(crate) fn new(limits: GuardLimits) -> Self {
        Self {
            limits,
            requests: Arc::new(Semaphore::new(limits.max_requests)),
            streams: Arc::new(Semaphore::new(limits.max_streams)),
        }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            layer: self.clone(),
        }
    }
}

/// See the [module docs](self).
#[derive(Debug, Clone)]
pub(crate) struct Guard<S> {
    inner: S,
    layer: GuardLayer,
}

/// Whether the method at `path` (`/package.Service/Method`) lives as long as its work rather
/// than answering at once.
fn is_long_lived(path: &str) -> bool {
    matches!(
        path.rsplit('/').next(),
        Some(
            "WatchJob"
                | "Shard"
                | "Read"
                | "Write"
                | "LeaseTask"
                | "Watch"
                | "StreamIsActive"
                | "ServerReflectionInfo"
        )
    )
}

impl<S, B> tower::Service<http::Request<B>> for Guard<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let long = is_long_lived(request.uri().path());
        let (permits, limit, flag) = if long {
            (
                &self.layer.streams,
                self.layer.limits.max_streams,
                "--max-concurrent-streams",
            )
        } else {
            (
                &self.layer.requests,
                self.layer.limits.max_requests,
                "--max-concurrent-requests",
            )
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let what = if long { "long-lived calls" } else { "calls" };
            let status = Status::resource_exhausted(format!(
                "the coordinator is at its limit of {limit} concurrent {what} ({flag}): try again \
                 shortly"
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        };
        // The service that was polled ready serves this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let answer = inner.call(request);
        let timeout = (!long).then_some(self.layer.limits.rpc_timeout);
        let message_limit = self.layer.limits.max_message_bytes;
        Box::pin(async move {
            let response = match timeout {
                None => answer.await?,
                Some(t) => match tokio::time::timeout(t, answer).await {
                    Ok(response) => response?,
                    Err(_) => {
                        return Ok(Status::deadline_exceeded(format!(
                            "the call took longer than the coordinator's limit of {} s \
                             (--rpc-timeout-seconds)",
                            t.as_secs_f64()
                        ))
                        .into_http())
                    }
                },
            };
            if let Some(status) = over_size(&response, message_limit) {
                return Ok(status.into_http());
            }
            // The permit is held until the reply's body (a stream's last message) is sent.
            Ok(response.map(|body| Body::new(Held::new(body, permit))))
        })
    }
}

/// tonic refuses a message over its decoding limit with OUT_OF_RANGE and its own words; the
/// farm's contract is RESOURCE_EXHAUSTED naming the limit and the flag that sets it.
fn over_size(response: &http::Response<Body>, limit: usize) -> Option<Status> {
    let headers = response.headers();
    let code = headers.get("grpc-status")?.to_str().ok()?;
    let message = headers.get("grpc-message")?.to_str().ok()?;
    let too_large = message.contains("too large") || message.contains("too%20large");
    (code == (tonic::Code::OutOfRange as i32).to_string() && too_large).then(|| {
        Status::resource_exhausted(format!(
            "a message was over the coordinator's limit of {limit} bytes \
             (--max-message-bytes; a shard's stream may carry {} bytes)",
            stylefarm_proto::MAX_SHARD_MESSAGE_BYTES
        ))
    })
}

/// A reply body that holds its call's permit until it is dropped.
struct Held {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl Held {
    fn new(body: Body, permit: OwnedSemaphorePermit) -> Self {
        Self {
            body,
            _permit: permit,
        }
    }
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The worker service with two message-size limits: `shard` serves the `Shard` stream, whose
/// messages carry tiles, `small` every other call.
#[derive(Debug, Clone)]
pub(crate) struct ShardSplit<S> {
    pub(crate) small: S,
    pub(crate) shard: S,
}

impl<S: NamedService> NamedService for ShardSplit<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for ShardSplit<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both are ready at once: tonic's services always are.
        match self.small.poll_ready(cx) {
            Poll::Ready(Ok(())) => self.shard.poll_ready(cx),
            other => other,
        }
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path().ends_with("/Shard") {
            self.shard.call(request)
        } else {
            self.small.call(request)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer as _, Service as _, ServiceExt as _};

    /// A service that answers OK after `delay`.
    fn slow(
        delay: Duration,
    ) -> impl tower::Service<
        http::Request<()>,
        Response = http::Response<Body>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        tower::service_fn(move |_: http::Request<()>| async move {
            tokio::time::sleep(delay).await;
            Ok(Status::ok("").into_http())
        })
    }

    fn status(response: &http::Response<Body>) -> String {
        response.headers()["grpc-status"]
            .to_str()
            .unwrap()
            .to_string()
    }

    fn call(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_call_is_cut_at_its_deadline_and_a_stream_is_not() {
        let layer = GuardLayer::new(GuardLimits {
            max_requests: 8,
            max_streams: 8,
            rpc_timeout: Duration::from_secs(1),
            max_message_bytes: 1 << 20,
        });
        let mut guard = layer.layer(slow(Duration::from_secs(5)));
        let unary = guard
            .ready()
            .await
            .unwrap()
            .call(call("/stylefarm.v1.JobService/GetJob"))
            .await
            .unwrap();
        assert_eq!(
            status(&unary),
            (tonic::Code::DeadlineExceeded as i32).to_string()
        );
        let stream = guard
            .ready()
            .await
            .unwrap()
            .call(call("/stylefarm.v1.JobService/WatchJob"))
            .await
            .unwrap();
        assert_eq!(status(&stream), "0");
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_limit_calls_are_shed_at_once_and_let_in_again_after() {
        let layer = GuardLayer::new(GuardLimits {
            max_requests: 1,
            max_streams: 1,
            rpc_timeout: Duration::from_secs(60),
            max_message_bytes: 1 << 20,
        });
        let guard = layer.layer(slow(Duration::from_secs(2)));
        let first = tokio::spawn(
            guard
                .clone()
                .oneshot(call("/stylefarm.v1.JobService/GetJob")),
        );
        tokio::task::yield_now().await;
        let shed = guard
            .clone()
            .oneshot(call("/stylefarm.v1.JobService/ListJobs"))
            .await
            .unwrap();
        assert_eq!(
            status(&shed),
            (tonic::Code::ResourceExhausted as i32).to_string()
        );
        // Streams have their own permits.
        let stream = tokio::spawn(
            guard
                .clone()
                .oneshot(call("/stylefarm.v1.JobService/WatchJob")),
        );
        let first = first.await.unwrap().unwrap();
        assert_eq!(status(&first), "0");
        drop(first);
        let again = guard
            .clone()
            .oneshot(call("/stylefarm.v1.JobService/ListJobs"))
            .await
            .unwrap();
        assert_eq!(status(&again), "0");
        assert_eq!(status(&stream.await.unwrap().unwrap()), "0");
    }

    #[test]
    fn streams_and_long_polls_are_long_lived_and_the_rest_is_not() {
        for path in [
            "/stylefarm.v1.JobService/WatchJob",
            "/stylefarm.v1.WorkerService/Shard",
            "/stylefarm.v1.WorkerService/LeaseTask",
            "/stylefarm.v1.BlobService/Write",
            "/stylefarm.v1.BlobService/Read",
            "/grpc.health.v1.Health/Watch",
            "/externalscaler.ExternalScaler/StreamIsActive",
        ] {
            assert!(is_long_lived(path), "{path}");
        }
        for path in [
            "/stylefarm.v1.JobService/SubmitJob",
            "/stylefarm.v1.WorkerService/RegisterWorker",
            "/grpc.health.v1.Health/Check",
            "/externalscaler.ExternalScaler/GetMetrics",
        ] {
            assert!(!is_long_lived(path), "{path}");
        }
    }
}
