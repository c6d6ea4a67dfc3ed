//! `stylefarm.v1.BlobService`: content-addressed blobs in and out, in chunks of at most
//! [`BLOB_CHUNK_BYTES`] (well under gRPC's 4 MiB message limit).

use std::pin::Pin;

use futures::Stream;
use sha2::{Digest, Sha256};
use stylefarm_proto::v1::{self, blob_service_server::BlobService};
use stylefarm_proto::BLOB_CHUNK_BYTES;
use tokio::io::AsyncReadExt;
use tonic::{Request, Response, Status, Streaming};

use super::Api;
use crate::blobs::BlobHash;
use crate::error::CoordinatorError;

/// Most hashes asked about at once.
const MAX_FIND: usize = 10_000;

type ReadStream = Pin<Box<dyn Stream<Item = Result<v1::ReadBlobResponse, Status>> + Send>>;

fn check_chunk(len: usize) -> Result<(), CoordinatorError> {
    if len > BLOB_CHUNK_BYTES {
        return Err(CoordinatorError::invalid(
            "data",
            format!("a message carries {len} bytes, over the chunk limit of {BLOB_CHUNK_BYTES}"),
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl BlobService for Api {
    async fn find_missing_blobs(
        &self,
        request: Request<v1::FindMissingBlobsRequest>,
    ) -> Result<Response<v1::FindMissingBlobsResponse>, Status> {
        let hashes = request.into_inner().sha256;
        if hashes.len() > MAX_FIND {
            return Err(CoordinatorError::LimitExceeded(format!(
                "{} hashes in one request, over the limit of {MAX_FIND}",
                hashes.len()
            ))
            .into());
        }
        let mut missing = Vec::new();
        for (i, s) in hashes.iter().enumerate() {
            let hash = BlobHash::parse(s, &format!("sha256[{i}]"))?;
            if self.blobs.size(&hash).await?.is_none() {
                if !missing.contains(s) {
                    missing.push(s.clone());
                }
            } else {
                // The caller will name it in a job without uploading it: keep it.
                self.blobs.touch(&hash).await;
            }
        }
        Ok(Response::new(v1::FindMissingBlobsResponse { missing }))
    }

    async fn write(
        &self,
        request: Request<Streaming<v1::WriteBlobRequest>>,
    ) -> Result<Response<v1::WriteBlobResponse>, Status> {
        let mut stream = request.into_inner();
        let first = stream.message().await?.ok_or_else(|| {
            CoordinatorError::invalid("sha256", "missing: the stream carried no message")
        })?;
        let hash = BlobHash::parse(&first.sha256, "sha256")?;
        if first.size > self.limits.max_blob_bytes {
            return Err(CoordinatorError::LimitExceeded(format!(
                "blob {hash} of {} bytes is over the limit of {} bytes",
                first.size, self.limits.max_blob_bytes
            ))
            .into());
        }
        check_chunk(first.data.len())?;
        let mut writer = self.blobs.begin(hash.clone(), first.size).await?;
        writer.write(&first.data).await?;
        while let Some(msg) = stream.message().await? {
            if !msg.sha256.is_empty() && msg.sha256 != hash.as_str() {
                return Err(CoordinatorError::invalid(
                    "sha256",
                    "a later message of the stream names another blob",
                )
                .into());
            }
            check_chunk(msg.data.len())?;
            writer.write(&msg.data).await?;
        }
        let size = writer.finish().await?;
        tracing::debug!(sha256 = %hash, size, "blob stored");
        Ok(Response::new(v1::WriteBlobResponse {
            blob: Some(v1::BlobRef {
                sha256: hash.to_string(),
                size,
            }),
        }))
    }

    type ReadStream = ReadStream;

    async fn read(
        &self,
        request: Request<v1::ReadBlobRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let req = request.into_inner();
        let hash = BlobHash::parse(&req.sha256, "sha256")?;
        let (file, size) = self.blobs.open_at(&hash, req.offset).await?;
        let left = size - req.offset;
        // A read of the whole blob is hashed as it goes: a blob damaged on disk ends in
        // DATA_LOSS (and is set aside) instead of its last chunk, so it never passes as good.
        let hasher = (req.offset == 0).then(Sha256::new);
        let read = Reading {
            file,
            left,
            hasher,
            hash,
            blobs: self.blobs.clone(),
        };
        let chunks = futures::stream::unfold(Some(read), |reading| async move {
            let mut r = reading?;
            if r.left == 0 {
                return None;
            }
            let want = r.left.min(BLOB_CHUNK_BYTES as u64);
            let mut data = Vec::with_capacity(want as usize);
            let path = r.blobs.path(&r.hash);
            match (&mut r.file).take(want).read_to_end(&mut data).await {
                Ok(0) => Some((
                    Err(
                        CoordinatorError::Internal(format!("{} ended early", path.display()))
                            .into(),
                    ),
                    None,
                )),
                Ok(n) => {
                    r.left -= n as u64;
                    if let Some(h) = r.hasher.as_mut() {
                        h.update(&data);
                    }
                    if r.left == 0 {
                        if let Some(h) = r.hasher.take() {
                            if hex::encode(h.finalize()) != r.hash.as_str() {
                                return Some((Err(r.blobs.damaged(&r.hash).await.into()), None));
                            }
                        }
                    }
                    Some((Ok(v1::ReadBlobResponse { data }), Some(r)))
                }
                Err(e) => Some((Err(CoordinatorError::io(&path, e).into()), None)),
            }
        });
        Ok(Response::new(Box::pin(chunks)))
    }
}

/// A blob being read out.
struct Reading {
    file: tokio::fs::File,
    left: u64,
    hasher: Option<Sha256>,
    hash: BlobHash,
    blobs: std::sync::Arc<crate::blobs::BlobStore>,
}
