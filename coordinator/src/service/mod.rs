//! The gRPC services. Handlers are thin: check and convert the request, call the farm's state, turn
//! its error into a status (one `From<CoordinatorError> for Status`).

mod admin;
mod blobs;
mod guard;
mod jobs;
mod workers;

pub(crate) use guard::{GuardLayer, GuardLimits, ShardSplit};

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::blobs::BlobStore;
use crate::error::{CoordinatorError, Result};
use crate::state::{Signals, StateHandle};
use crate::validate::{ImageChecker, JobLimits};

/// Everything the handlers share.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) state: StateHandle,
    pub(crate) blobs: Arc<BlobStore>,
    pub(crate) images: Arc<ImageChecker>,
    pub(crate) signals: Arc<Signals>,
    pub(crate) limits: Limits,
    /// The running lock-step drivers, which shards' streams join.
    pub(crate) lockstep: Arc<crate::lockstep::Lockstep>,
    /// The metrics (`/metrics`) and the autoscaler's numbers.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

/// The settings the handlers need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) job: JobLimits,
    pub(crate) max_blob_bytes: u64,
    pub(crate) max_long_poll: Duration,
    pub(crate) heartbeat_interval: Duration,
}

/// Longest id accepted, in bytes (ids are UUIDs; an over-long one is not echoed back).
const MAX_ID_BYTES: usize = 64;

/// An id field of a request.
pub(crate) fn parse_id<T>(s: &str, field: &str) -> Result<T>
where
    T: FromStr,
    T::Err: ToString,
{
    if s.is_empty() {
        return Err(CoordinatorError::invalid(field, "missing"));
    }
    if s.len() > MAX_ID_BYTES {
        return Err(CoordinatorError::invalid(
            field,
            format!("{} bytes long, not an id", s.len()),
        ));
    }
    s.parse()
        .map_err(|e: T::Err| CoordinatorError::invalid(field, e.to_string()))
}

/// Refuses calls that do not carry one of the tokens of the roles a service serves
/// (`authorization: Bearer TOKEN`); every call passes when the farm has no token.
#[derive(Clone)]
pub(crate) struct Auth {
    accepted: Arc<Vec<MetadataValue<tonic::metadata::Ascii>>>,
}

impl Auth {
    /// Accepts each of `tokens` that is set; with none set, every call. Errors when a token
    /// cannot be sent in a header.
    pub(crate) fn new(tokens: &[&Option<String>]) -> anyhow::Result<Self> {
        let accepted = tokens
            .iter()
            .filter_map(|t| t.as_deref())
            .map(|t| {
                MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
                    anyhow::anyhow!("the farm token holds characters a gRPC header cannot carry")
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            accepted: Arc::new(accepted),
        })
    }

    /// True when the farm has no token for these roles: every call passes.
    pub(crate) fn is_open(&self) -> bool {
        self.accepted.is_empty()
    }

    /// Whether `authorization` (the header's value, `Bearer TOKEN`) carries one of the
    /// accepted tokens; always true when none is set.
    pub(crate) fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        if self.accepted.is_empty() {
            return true;
        }
        // Every token is compared, whichever matches, so the time says nothing of which.
        self.accepted.iter().fold(false, |ok, expected| {
            ok | authorization.is_some_and(|g| same_bytes(g, expected.as_bytes()))
        })
    }
}

/// Compares in time independent of where the first difference is.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Interceptor for Auth {
    fn call(&mut self, request: Request<()>) -> std::result::Result<Request<()>, Status> {
        let given = request.metadata().get("authorization");
        if self.accepts(given.map(|g| g.as_bytes())) {
            Ok(request)
        } else {
            Err(CoordinatorError::Unauthenticated.into())
        }
    }
}

/// An `Api` on a fresh data directory, for handler tests.
#[cfg(test)]
pub(crate) fn test_api(dir: &std::path::Path) -> Api {
    use crate::clock::ManualClock;
    use crate::scheduler::SchedulerConfig;
    use crate::state::State;
    use stylefarm_core::image_io::DecodeLimits;

    let signals = Arc::new(Signals::new());
    let config = SchedulerConfig {
        lease_ms: 30_000,
        default_max_attempts: 3,
    };
    let clock = Arc::new(ManualClock::default());
    let state = State::open(dir, config, clock, signals.clone()).unwrap();
    let metrics = state.metrics();
    let (state, _stopped) = StateHandle::start(state).unwrap();
    Api {
        state,
        metrics,
        blobs: Arc::new(BlobStore::open(dir).unwrap()),
        images: Arc::new(ImageChecker::new(DecodeLimits::default().max_pixels)),
        signals,
        lockstep: Arc::default(),
        limits: Limits {
            job: JobLimits {
                max_tasks: 10,
                max_iterations: 100_000,
                max_queued_jobs: 100,
                max_queued_jobs_per_client: 100,
            },
            max_blob_bytes: 1 << 20,
            max_long_poll: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(2),
        },
    }
}
