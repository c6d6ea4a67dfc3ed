//! The connection to the coordinator: tonic clients on one lazily connected channel (so a
//! worker may start before its coordinator), the farm token, time limits and retry rules.

use std::future::Future;
use std::time::Duration;

pub(crate) use stylefarm_proto::blob::within;
use stylefarm_proto::blob::Auth;
use stylefarm_proto::v1::blob_service_client::BlobServiceClient;
use stylefarm_proto::v1::worker_service_client::WorkerServiceClient;

use stylefarm_proto::connect::{self, TlsFiles};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::WorkerError;

/// Longest a unary call may take (the `LeaseTask` long poll gets its wait on top).
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(15);

/// The channel every client uses, with the token interceptor.
pub(crate) type Transport = InterceptedService<Channel, Auth>;

/// The worker's clients of the coordinator (cheap to clone: they share the channel).
#[derive(Debug, Clone)]
pub(crate) struct Rpc {
    /// The coordinator's address, for messages.
    pub(crate) url: String,
    pub(crate) workers: WorkerServiceClient<Transport>,
    pub(crate) blobs: BlobServiceClient<Transport>,
}

impl Rpc {
    /// Clients of the coordinator at `url`; nothing is connected until the first call, and a
    /// lost connection is re-established by the next call.
    pub(crate) fn connect(
        url: &str,
        token: Option<&str>,
        tls: &TlsFiles,
    ) -> Result<Self, WorkerError> {
        let bad = |reason: String| WorkerError::BadCoordinator {
            url: url.to_string(),
            reason,
        };
        let endpoint = connect::endpoint(url, tls)
            .map_err(bad)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let auth = Auth::new(token).ok_or_else(|| WorkerError::Refused {
            url: url.to_string(),
            message: "the farm token holds characters a gRPC header cannot carry".into(),
        })?;
        let channel = InterceptedService::new(endpoint.connect_lazy(), auth);
        Ok(Self {
            url: url.to_string(),
            workers: WorkerServiceClient::new(channel.clone()),
            blobs: BlobServiceClient::new(channel),
        })
    }
}

/// The coordinator no longer counts this lease: stop and drop the task.
pub(crate) fn lease_lost(status: &Status) -> bool {
    matches!(status.code(), Code::FailedPrecondition | Code::NotFound)
}

/// A failure that may pass if the call is made again later.
pub(crate) fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::Aborted
            | Code::Cancelled
            | Code::ResourceExhausted
    )
}

/// The status in one line, for logs and task errors.
pub(crate) fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Doubling waits between retries, from 100 ms up to 5 s.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The wait before the next try.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Calls `call` until it succeeds, fails for good, or `attempts` tries have failed
/// transiently.
pub(crate) async fn retry<T, F, Fut>(attempts: u32, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut backoff = Backoff::new();
    let mut tries = 0;
    loop {
        tries += 1;
        match call().await {
            Err(s) if transient(&s) && tries < attempts => {
                tracing::debug!("retrying after {}", describe(&s));
                tokio::time::sleep(backoff.next_wait()).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_addresses_are_refused_up_front() {
        for url in ["127.0.0.1:50051", "", "http://[::1"] {
            let err = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async { Rpc::connect(url, None, &TlsFiles::default()).map(|_| ()) })
                .unwrap_err()
                .to_string();
            assert!(err.contains("invalid coordinator address"), "{url}: {err}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::new();
        let waits: Vec<u64> = (0..8).map(|_| b.next_wait().as_millis() as u64).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn retry_stops_at_success_permanent_errors_or_the_limit() {
        let mut n = 0;
        let r: Result<u32, Status> = retry(5, || {
            n += 1;
            let n = n;
            async move {
                if n < 3 {
                    Err(Status::unavailable("down"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
        let mut n = 0;
        let r: Result<(), Status> = retry(5, || {
            n += 1;
            async { Err(Status::failed_precondition("lease gone")) }
        })
        .await;
        assert_eq!((r.unwrap_err().code(), n), (Code::FailedPrecondition, 1));
    }
}
