//! What the client and the workers both need to move blobs and to call a farm: blob names
//! (sha256), the chunked `Write` messages, the resumable, checked `Read` of a whole blob, time
//! limits on calls, and the farm-token interceptor.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tonic::codegen::{Body, Bytes, StdError};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

use crate::v1::blob_service_client::BlobServiceClient;
use crate::v1::{BlobRef, ReadBlobRequest, WriteBlobRequest};
use crate::BLOB_CHUNK_BYTES;

/// Lowercase hex sha256 of `data`: a blob's name.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Whether `s` is a blob name: 64 lowercase hex digits (so it is also a safe file name).
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The messages of a `Write` of `data`: the first carries the hash and size, each at most
/// [`BLOB_CHUNK_BYTES`] of data; an empty blob is one message without data.
pub fn write_requests(
    data: Arc<Vec<u8>>,
    sha256: String,
) -> impl Iterator<Item = WriteBlobRequest> + Send + 'static {
    let chunks = data.len().div_ceil(BLOB_CHUNK_BYTES).max(1);
    (0..chunks).map(move |i| {
        let start = i * BLOB_CHUNK_BYTES;
        let end = (start + BLOB_CHUNK_BYTES).min(data.len());
        let first = i == 0;
        WriteBlobRequest {
            sha256: if first { sha256.clone() } else { String::new() },
            size: if first { data.len() as u64 } else { 0 },
            data: data[start..end].to_vec(),
        }
    })
}

/// Why [`read_blob`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The last `Read` failed with this status and was not to be retried (or the tries ran
    /// out).
    #[error("{:?}: {}", .0.code(), .0.message())]
    Rpc(Status),
    /// The bytes that came are not the blob that was asked for: the reason.
    #[error("{0}")]
    Corrupt(String),
}

/// Reads the whole of `blob` with `BlobService.Read` and checks its size and sha256.
///
/// A read that fails with a status for which `retry_if` holds is resumed from the last byte
/// received, up to `attempts` reads in all. With `time_limit`, the call and each message of
/// its stream must come within it (running out reads as `DEADLINE_EXCEEDED`, see [`within`]).
///
/// # Errors
/// [`ReadError::Rpc`] with the status of the read that failed for good, or
/// [`ReadError::Corrupt`] when the bytes that came are not `blob`.
pub async fn read_blob<T>(
    mut client: BlobServiceClient<T>,
    blob: &BlobRef,
    attempts: u32,
    retry_if: impl Fn(&Status) -> bool,
    time_limit: Option<Duration>,
) -> Result<Vec<u8>, ReadError>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    let expected = announced_size(blob).map_err(ReadError::Corrupt)?;
    let mut data = Vec::with_capacity(expected);
    let mut tries = 0;
    loop {
        tries += 1;
        match read_into(&mut client, blob, expected, time_limit, &mut data).await {
            Ok(()) => break,
            Err(ReadError::Rpc(s)) if retry_if(&s) && tries < attempts => {
                tracing::debug!(
                    offset = data.len(),
                    "blob read broke off ({:?}: {}), resuming",
                    s.code(),
                    s.message()
                );
            }
            Err(e) => return Err(e),
        }
    }
    verify_download(blob, &data).map_err(ReadError::Corrupt)?;
    Ok(data)
}

/// One `Read` from `data.len()` on, appending to `data` (never past `expected`).
async fn read_into<T>(
    client: &mut BlobServiceClient<T>,
    blob: &BlobRef,
    expected: usize,
    time_limit: Option<Duration>,
    data: &mut Vec<u8>,
) -> Result<(), ReadError>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    let request = ReadBlobRequest {
        sha256: blob.sha256.clone(),
        offset: data.len() as u64,
    };
    let mut stream = bounded(time_limit, client.read(request))
        .await
        .map_err(ReadError::Rpc)?
        .into_inner();
    while let Some(msg) = bounded(time_limit, stream.message())
        .await
        .map_err(ReadError::Rpc)?
    {
        append_read(data, &msg.data, expected).map_err(ReadError::Corrupt)?;
    }
    Ok(())
}

/// `fut` with a time limit; running out reads as `DEADLINE_EXCEEDED`.
///
/// # Errors
/// `fut`'s own status, or `DEADLINE_EXCEEDED` when it did not finish within `limit`.
pub async fn within<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer in time")))
}

/// `fut` [`within`] `limit` when there is one.
async fn bounded<T>(
    limit: Option<Duration>,
    fut: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match limit {
        Some(limit) => within(limit, fut).await,
        None => fut.await,
    }
}

/// The size a download of `blob` must come to, as a buffer length, unless this machine cannot
/// hold that many bytes in memory.
fn announced_size(blob: &BlobRef) -> Result<usize, String> {
    usize::try_from(blob.size)
        .map_err(|_| format!("{} bytes is too large for this machine", blob.size))
}

/// Appends one `Read` message's bytes to a download that must come to `expected` bytes, unless
/// they would run past it.
fn append_read(data: &mut Vec<u8>, chunk: &[u8], expected: usize) -> Result<(), String> {
    if data.len() + chunk.len() > expected {
        return Err(format!("more than the {expected} bytes announced came"));
    }
    data.extend_from_slice(chunk);
    Ok(())
}

/// Checks that a finished download is `blob`: its size, then its hash.
fn verify_download(blob: &BlobRef, data: &[u8]) -> Result<(), String> {
    if data.len() as u64 != blob.size {
        return Err(format!(
            "{} bytes came, {} were announced",
            data.len(),
            blob.size
        ));
    }
    let got = sha256_hex(data);
    if got != blob.sha256 {
        return Err(format!("the bytes that came hash to {got}"));
    }
    Ok(())
}

/// Adds `authorization: Bearer TOKEN` to every call when a farm token is set.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    header: Option<MetadataValue<Ascii>>,
}

impl Auth {
    /// The interceptor for `token` (`None`: no header); `None` back if the token holds
    /// characters a header cannot carry.
    pub fn new(token: Option<&str>) -> Option<Self> {
        match token {
            Some(t) => format!("Bearer {t}")
                .parse::<MetadataValue<Ascii>>()
                .ok()
                .map(|h| Self { header: Some(h) }),
            None => Some(Self { header: None }),
        }
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Mutex;

    use tonic::codegen::tokio_stream::{self, Stream, StreamExt};
    use tonic::{Code, Response};

    use super::*;
    use crate::v1::blob_service_server::{BlobService, BlobServiceServer};
    use crate::v1::{FindMissingBlobsRequest, FindMissingBlobsResponse, ReadBlobResponse};
    use crate::v1::{WriteBlobRequest, WriteBlobResponse};

    /// How one `Read` of [`Flaky`] goes wrong after its first message.
    enum Fault {
        /// The stream ends with this status.
        Break(Status),
        /// The stream sends nothing more, ever.
        Stall,
    }

    /// A blob service holding one blob, sent in 4-byte messages, whose next reads go wrong
    /// as `faults` says (one each, in order); it records the offset of every read.
    struct Flaky {
        data: Vec<u8>,
        faults: Mutex<Vec<Fault>>,
        offsets: Mutex<Vec<u64>>,
    }

    type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadBlobResponse, Status>> + Send>>;

    #[tonic::async_trait]
    impl BlobService for Flaky {
        async fn find_missing_blobs(
            &self,
            _: Request<FindMissingBlobsRequest>,
        ) -> Result<Response<FindMissingBlobsResponse>, Status> {
            Err(Status::unimplemented("reads only"))
        }

        async fn write(
            &self,
            _: Request<tonic::Streaming<WriteBlobRequest>>,
        ) -> Result<Response<WriteBlobResponse>, Status> {
            Err(Status::unimplemented("reads only"))
        }

        type ReadStream = ReadStream;

        async fn read(
            &self,
            req: Request<ReadBlobRequest>,
        ) -> Result<Response<ReadStream>, Status> {
            let offset = req.into_inner().offset;
            self.offsets.lock().unwrap().push(offset);
            let messages: Vec<_> = self.data[offset as usize..]
                .chunks(4)
                .map(|c| Ok(ReadBlobResponse { data: c.to_vec() }))
                .collect();
            let fault = {
                let mut faults = self.faults.lock().unwrap();
                (!faults.is_empty()).then(|| faults.remove(0))
            };
            let first: Vec<_> = messages.iter().take(1).cloned().collect();
            let stream: ReadStream = match fault {
                None => Box::pin(tokio_stream::iter(messages)),
                Some(Fault::Break(status)) => {
                    Box::pin(tokio_stream::iter(first.into_iter().chain([Err(status)])))
                }
                Some(Fault::Stall) => {
                    Box::pin(tokio_stream::iter(first).chain(tokio_stream::pending()))
                }
            };
            Ok(Response::new(stream))
        }
    }

    /// `read_blob` of `blob` from a [`Flaky`] holding `data`, retrying `UNAVAILABLE` and
    /// `DEADLINE_EXCEEDED`; also the offsets of the reads it made.
    async fn read(
        data: &[u8],
        blob: &BlobRef,
        faults: Vec<Fault>,
        attempts: u32,
        time_limit: Option<Duration>,
    ) -> (Result<Vec<u8>, ReadError>, Vec<u64>) {
        let service = Arc::new(Flaky {
            data: data.to_vec(),
            faults: Mutex::new(faults),
            offsets: Mutex::new(Vec::new()),
        });
        let client = BlobServiceClient::new(BlobServiceServer::from_arc(service.clone()));
        let retry = |s: &Status| matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded);
        let got = read_blob(client, blob, attempts, retry, time_limit).await;
        let offsets = service.offsets.lock().unwrap().clone();
        (got, offsets)
    }

    fn blob_of(data: &[u8]) -> BlobRef {
        BlobRef {
            sha256: sha256_hex(data),
            size: data.len() as u64,
        }
    }

    const DATA: &[u8] = b"ten bytes!";

    fn broken() -> Fault {
        Fault::Break(Status::unavailable("connection reset"))
    }

    #[tokio::test]
    async fn a_broken_read_resumes_from_the_last_byte() {
        let (got, offsets) = read(DATA, &blob_of(DATA), vec![broken(), broken()], 3, None).await;
        assert_eq!(got.unwrap(), DATA);
        assert_eq!(offsets, vec![0, 4, 8]);
    }

    #[tokio::test]
    async fn a_read_gives_up_on_a_permanent_error_or_after_its_last_try() {
        let gone = Fault::Break(Status::not_found("no such blob"));
        let (got, offsets) = read(DATA, &blob_of(DATA), vec![gone], 3, None).await;
        match got {
            Err(ReadError::Rpc(s)) => assert_eq!(s.code(), Code::NotFound),
            other => panic!("{other:?}"),
        }
        assert_eq!(offsets, vec![0]);

        let (got, offsets) = read(DATA, &blob_of(DATA), vec![broken(), broken()], 2, None).await;
        let err = got.unwrap_err();
        assert!(matches!(&err, ReadError::Rpc(s) if s.code() == Code::Unavailable));
        assert_eq!(err.to_string(), "Unavailable: connection reset");
        assert_eq!(offsets, vec![0, 4]);
    }

    #[tokio::test]
    async fn damaged_blobs_are_refused() {
        let corrupt = |got: Result<Vec<u8>, ReadError>| match got {
            Err(ReadError::Corrupt(reason)) => reason,
            other => panic!("{other:?}"),
        };
        let mut blob = blob_of(b"other byte");
        let (got, _) = read(DATA, &blob, vec![], 1, None).await;
        assert!(corrupt(got).starts_with("the bytes that came hash to "));
        blob = blob_of(DATA);
        blob.size = 6;
        let (got, _) = read(DATA, &blob, vec![], 1, None).await;
        assert_eq!(corrupt(got), "more than the 6 bytes announced came");
        blob.size = 12;
        let (got, _) = read(DATA, &blob, vec![], 1, None).await;
        assert_eq!(corrupt(got), "10 bytes came, 12 were announced");
    }

    #[tokio::test]
    async fn a_stalled_read_runs_out_of_time_and_resumes() {
        let limit = Some(Duration::from_millis(50));
        let (got, _) = read(DATA, &blob_of(DATA), vec![Fault::Stall], 1, limit).await;
        match got {
            Err(ReadError::Rpc(s)) => {
                assert_eq!(
                    (s.code(), s.message()),
                    (Code::DeadlineExceeded, "no answer in time")
                );
            }
            other => panic!("{other:?}"),
        }
        let (got, offsets) = read(DATA, &blob_of(DATA), vec![Fault::Stall], 2, limit).await;
        assert_eq!(got.unwrap(), DATA);
        assert_eq!(offsets, vec![0, 4]);
    }

    #[test]
    fn downloads_are_checked_for_size_and_hash() {
        let data = b"some bytes".to_vec();
        let blob = BlobRef {
            sha256: sha256_hex(&data),
            size: data.len() as u64,
        };
        let mut got = Vec::new();
        append_read(&mut got, &data[..4], 10).unwrap();
        append_read(&mut got, &data[4..], 10).unwrap();
        assert_eq!(verify_download(&blob, &got), Ok(()));
        assert_eq!(announced_size(&blob), Ok(10));
        assert_eq!(
            append_read(&mut got, b"x", 10),
            Err("more than the 10 bytes announced came".into())
        );
        assert_eq!(
            verify_download(&blob, &data[..3]),
            Err("3 bytes came, 10 were announced".into())
        );
        let e = verify_download(&blob, b"other byte").unwrap_err();
        assert!(e.starts_with("the bytes that came hash to "), "{e}");
    }

    #[test]
    fn writes_are_chunked_with_the_hash_first() {
        for len in [
            0,
            1,
            BLOB_CHUNK_BYTES,
            BLOB_CHUNK_BYTES + 1,
            2 * BLOB_CHUNK_BYTES + 5,
        ] {
            let data = Arc::new(vec![7u8; len]);
            let sha = sha256_hex(&data);
            let reqs: Vec<_> = write_requests(data.clone(), sha.clone()).collect();
            assert_eq!(reqs.len(), len.div_ceil(BLOB_CHUNK_BYTES).max(1));
            assert_eq!(reqs[0].sha256, sha);
            assert_eq!(reqs[0].size, len as u64);
            assert!(reqs[1..].iter().all(|r| r.sha256.is_empty() && r.size == 0));
            assert!(reqs.iter().all(|r| r.data.len() <= BLOB_CHUNK_BYTES));
            let joined: Vec<u8> = reqs.iter().flat_map(|r| r.data.clone()).collect();
            assert_eq!(&joined, data.as_ref());
        }
        let abc = sha256_hex(b"abc");
        assert_eq!(
            abc,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_sha256(&abc));
        assert!(!is_sha256(&abc[1..]));
        assert!(!is_sha256(&format!("../{}", &abc[3..])));
        assert!(!is_sha256(&sha256_hex(b"abc").to_uppercase()));
        assert!(Auth::new(Some("bad\ntoken")).is_none());
    }
}
