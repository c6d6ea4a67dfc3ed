//! The client's connection to a coordinator: the job, blob and admin services on one channel,
//! blob transfers in chunks of at most [`BLOB_CHUNK_BYTES`] with every hash checked, and
//! errors as one sentence a person can act on.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use stylefarm_proto::blob::{read_blob, sha256_hex, write_requests, Auth, ReadError};
use stylefarm_proto::connect::{self, TlsFiles};
use stylefarm_proto::v1::admin_service_client::AdminServiceClient;
use stylefarm_proto::v1::blob_service_client::BlobServiceClient;
use stylefarm_proto::v1::job_service_client::JobServiceClient;
use stylefarm_proto::v1::{
    BlobRef, CancelJobRequest, DeleteJobRequest, FindMissingBlobsRequest, GetJobRequest, Job,
    JobEvent, JobSpec, ListJobsRequest, ListWorkersRequest, PlanJobResponse, SubmitJobRequest,
    WatchJobRequest, WorkerInfo,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// How long connecting to the coordinator may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on an idle connection, so a vanished coordinator is noticed while watching.
const KEEP_ALIVE: Duration = Duration::from_secs(20);
/// Tries of a blob read that breaks off (each resumes where the last stopped).
const READ_ATTEMPTS: u32 = 4;

/// What a call to the coordinator can fail with; each displays as one sentence.
#[derive(Debug, thiserror::Error)]
pub enum FarmError {
    /// The address is not one tonic can connect to.
    #[error(
        "invalid coordinator address `{url}`: {reason} (expected e.g. http://127.0.0.1:50051)"
    )]
    BadAddress {
        /// The address as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// Nothing answers at the address, or the connection broke.
    #[error("cannot reach the coordinator at {url}: {reason}")]
    Unreachable {
        /// The coordinator's address.
        url: String,
        /// What the transport said.
        reason: String,
    },
    /// One side speaks TLS and the other does not.
    #[error("{0}")]
    Tls(String),
    /// The coordinator answered with an error status.
    #[error("{}", refusal_sentence(.url, .status))]
    Refused {
        /// The coordinator's address.
        url: String,
        /// Its answer.
        status: Status,
    },
    /// A blob came back other than it was announced.
    #[error("blob {sha256} arrived damaged: {reason}")]
    Corrupt {
        /// The blob.
        sha256: String,
        /// What was wrong.
        reason: String,
    },
}

impl FarmError {
    /// The gRPC status code, when the coordinator answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Refused { status, .. } => Some(status.code()),
            Self::Unreachable { .. } => Some(Code::Unavailable),
            Self::Tls(_) => Some(Code::Unavailable),
            Self::BadAddress { .. } | Self::Corrupt { .. } => None,
        }
    }

    /// The coordinator's own message, when it answered.
    pub fn message(&self) -> Option<&str> {
        match self {
            Self::Refused { status, .. } => Some(status.message()),
            _ => None,
        }
    }
}

/// The status as a sentence: the coordinator's own messages for bad input already name the
/// field or the id, so those pass through unchanged.
fn refusal_sentence(url: &str, status: &Status) -> String {
    let message = status.message();
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::ResourceExhausted
        | Code::OutOfRange
        | Code::AlreadyExists => message.to_string(),
        Code::Unauthenticated | Code::PermissionDenied => format!(
            "the coordinator at {url} refused the request: {message} (pass --token or \
             --token-file, or set STYLEFARM_TOKEN)"
        ),
        Code::Unimplemented => {
            format!("the server at {url} does not look like a stylefarm coordinator: {message}")
        }
        Code::DeadlineExceeded => format!("the coordinator at {url} did not answer in time"),
        Code::Unavailable => format!("cannot reach the coordinator at {url}: {message}"),
        code => format!("the coordinator at {url} failed ({code:?}): {message}"),
    }
}

/// Whether a status says the connection failed rather than the coordinator answering:
/// UNAVAILABLE, CANCELLED (the client never cancels its own calls: the channel dropped the
/// call with its connection), or what tonic makes of a connection that broke mid-call.
fn is_transport_failure(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Cancelled => true,
        Code::Unknown | Code::Internal => {
            let m = status.message().to_ascii_lowercase();
            [
                "transport error",
                "h2 protocol error",
                "connection",
                "broken pipe",
                "tcp connect",
            ]
            .iter()
            .any(|p| m.contains(p))
        }
        _ => false,
    }
}

/// An error and its sources in one line, without repeating a source that the error's own
/// text already contains.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// The channel the clients share.
pub type Transport = InterceptedService<Channel, Auth>;

/// A connection to one coordinator (cheap to clone: the clients share the channel).
#[derive(Debug, Clone)]
pub struct FarmClient {
    url: String,
    /// `JobService`.
    pub jobs: JobServiceClient<Transport>,
    /// `BlobService`.
    pub blobs: BlobServiceClient<Transport>,
    /// `AdminService`.
    pub admin: AdminServiceClient<Transport>,
}

impl FarmClient {
    /// Connects to the coordinator at `url` (`http://host:port`; a bare `host:port` means
    /// `http://`), sending `token` with every call when given.
    ///
    /// # Errors
    /// [`FarmError::BadAddress`] for an unusable address or token, [`FarmError::Unreachable`]
    /// when nothing answers.
    pub async fn connect(url: &str, token: Option<&str>) -> Result<Self, FarmError> {
        Self::connect_with(url, token, &TlsFiles::default()).await
    }

    /// [`Self::connect`], over TLS as `tls` says for an `https://` address.
    ///
    /// # Errors
    /// As [`Self::connect`]; a TLS mismatch (a plaintext address for a TLS coordinator, or
    /// the reverse) is one sentence saying so.
    pub async fn connect_with(
        url: &str,
        token: Option<&str>,
        tls: &TlsFiles,
    ) -> Result<Self, FarmError> {
        let url = url.trim().trim_end_matches('/');
        let url = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        let bad = |reason: String| FarmError::BadAddress {
            url: url.clone(),
            reason,
        };
        let endpoint = connect::endpoint(&url, tls)
            .map_err(bad)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEP_ALIVE)
            .keep_alive_timeout(KEEP_ALIVE)
            .keep_alive_while_idle(true);
        let auth = Auth::new(token)
            .ok_or_else(|| bad("the farm token holds characters a header cannot carry".into()))?;
        let channel = endpoint.connect().await.map_err(|e| {
            let reason = chain(&e);
            match connect::tls_mismatch(&url, &reason) {
                Some(sentence) => FarmError::Tls(sentence),
                None => FarmError::Unreachable {
                    url: url.clone(),
                    reason,
                },
            }
        })?;
        let channel = InterceptedService::new(channel, auth);
        Ok(Self {
            jobs: JobServiceClient::new(channel.clone()),
            blobs: BlobServiceClient::new(channel.clone()),
            admin: AdminServiceClient::new(channel),
            url,
        })
    }

    /// The coordinator's address, as connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A failed call as a [`FarmError`].
    pub fn error(&self, status: Status) -> FarmError {
        if is_transport_failure(&status) {
            let text = chain(&status);
            if let Some(sentence) = connect::tls_mismatch(&self.url, &text) {
                return FarmError::Tls(sentence);
            }
            return FarmError::Unreachable {
                url: self.url.clone(),
                reason: status.message().to_string(),
            };
        }
        FarmError::Refused {
            url: self.url.clone(),
            status,
        }
    }

    /// Uploads the blobs the coordinator does not have yet (one `FindMissingBlobs` for all,
    /// then a `Write` each) and returns their references, in order.
    pub async fn upload_all(&self, blobs: &[&[u8]]) -> Result<Vec<BlobRef>, FarmError> {
        let refs: Vec<BlobRef> = blobs
            .iter()
            .map(|data| BlobRef {
                sha256: sha256_hex(data),
                size: data.len() as u64,
            })
            .collect();
        let mut wanted: Vec<String> = Vec::new();
        for r in &refs {
            if !wanted.contains(&r.sha256) {
                wanted.push(r.sha256.clone());
            }
        }
        let missing: HashSet<String> = self
            .blobs
            .clone()
            .find_missing_blobs(FindMissingBlobsRequest { sha256: wanted })
            .await
            .map_err(|s| self.error(s))?
            .into_inner()
            .missing
            .into_iter()
            .collect();
        let mut sent = HashSet::new();
        for (data, r) in blobs.iter().zip(&refs) {
            if missing.contains(&r.sha256) && sent.insert(r.sha256.clone()) {
                self.write(data, &r.sha256).await?;
            }
        }
        Ok(refs)
    }

    /// Uploads one blob unless the coordinator has it.
    pub async fn upload(&self, data: &[u8]) -> Result<BlobRef, FarmError> {
        let mut refs = self.upload_all(&[data]).await?;
        refs.pop().ok_or_else(|| FarmError::Corrupt {
            sha256: sha256_hex(data),
            reason: "the upload returned no reference".into(),
        })
    }

    /// One `Write` of `data`, whatever the coordinator holds.
    pub async fn write(&self, data: &[u8], sha256: &str) -> Result<BlobRef, FarmError> {
        let requests = write_requests(Arc::new(data.to_vec()), sha256.to_string());
        let written = self
            .blobs
            .clone()
            .write(tokio_stream::iter(requests))
            .await
            .map_err(|s| self.error(s))?
            .into_inner()
            .blob;
        match written {
            Some(b) if b.sha256 == sha256 && b.size == data.len() as u64 => Ok(b),
            other => Err(FarmError::Corrupt {
                sha256: sha256.to_string(),
                reason: format!("the coordinator stored it as {other:?}"),
            }),
        }
    }

    /// Downloads a blob, resuming a read that breaks off, and checks its size and hash.
    pub async fn download(&self, blob: &BlobRef) -> Result<Vec<u8>, FarmError> {
        let unavailable = |s: &Status| s.code() == Code::Unavailable;
        read_blob(self.blobs.clone(), blob, READ_ATTEMPTS, unavailable, None)
            .await
            .map_err(|e| match e {
                ReadError::Rpc(s) => self.error(s),
                ReadError::Corrupt(reason) => FarmError::Corrupt {
                    sha256: blob.sha256.clone(),
                    reason,
                },
            })
    }

    /// Submits a job; returns its id.
    pub async fn submit(&self, spec: JobSpec) -> Result<String, FarmError> {
        Ok(self
            .jobs
            .clone()
            .submit_job(SubmitJobRequest { spec: Some(spec) })
            .await
            .map_err(|s| self.error(s))?
            .into_inner()
            .job_id)
    }

    /// The tasks a job would make, without submitting it.
    pub async fn plan(&self, spec: JobSpec) -> Result<PlanJobResponse, FarmError> {
        self.jobs
            .clone()
            .plan_job(SubmitJobRequest { spec: Some(spec) })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.error(s))
    }

    /// A job with its tasks.
    pub async fn job(&self, job_id: &str) -> Result<Job, FarmError> {
        self.jobs
            .clone()
            .get_job(GetJobRequest {
                job_id: job_id.to_string(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.error(s))
    }

    /// The newest jobs (at most `limit`; 0: the coordinator's default).
    pub async fn list_jobs(&self, limit: u32) -> Result<Vec<Job>, FarmError> {
        Ok(self
            .jobs
            .clone()
            .list_jobs(ListJobsRequest { limit })
            .await
            .map_err(|s| self.error(s))?
            .into_inner()
            .jobs)
    }

    /// Cancels a job; returns it as it is afterwards.
    pub async fn cancel(&self, job_id: &str) -> Result<Job, FarmError> {
        self.jobs
            .clone()
            .cancel_job(CancelJobRequest {
                job_id: job_id.to_string(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.error(s))
    }

    /// Deletes a finished job, its tasks and the blobs only it used.
    pub async fn delete(&self, job_id: &str) -> Result<(), FarmError> {
        self.jobs
            .clone()
            .delete_job(DeleteJobRequest {
                job_id: job_id.to_string(),
            })
            .await
            .map(drop)
            .map_err(|s| self.error(s))
    }

    /// The job's events: a snapshot first, then every change.
    pub async fn watch(&self, job_id: &str) -> Result<Streaming<JobEvent>, FarmError> {
        self.jobs
            .clone()
            .watch_job(WatchJobRequest {
                job_id: job_id.to_string(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.error(s))
    }

    /// The registered workers.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, FarmError> {
        Ok(self
            .admin
            .clone()
            .list_workers(ListWorkersRequest {})
            .await
            .map_err(|s| self.error(s))?
            .into_inner()
            .workers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_sentences() {
        let url = "http://farm:50051";
        let s = refusal_sentence(url, &Status::invalid_argument("invalid spec.styles: x"));
        assert_eq!(s, "invalid spec.styles: x");
        let s = refusal_sentence(url, &Status::unauthenticated("needs the token"));
        assert!(s.contains("STYLEFARM_TOKEN"), "{s}");
        let s = refusal_sentence(url, &Status::internal("db"));
        assert_eq!(
            s,
            "the coordinator at http://farm:50051 failed (Internal): db"
        );
    }

    #[tokio::test]
    async fn an_unreachable_coordinator_is_one_sentence() {
        // Port 1 on localhost: nothing listens there.
        let e = FarmClient::connect("127.0.0.1:1", None).await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("cannot reach the coordinator at http://127.0.0.1:1: "),
            "{text}"
        );
        let e = FarmClient::connect("ftp://x", None).await.unwrap_err();
        assert!(matches!(e, FarmError::BadAddress { .. }), "{e}");
    }
}
