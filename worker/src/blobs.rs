//! Blobs: moving images to and from the coordinator's BlobService in chunks of at most
//! [`stylefarm_proto::BLOB_CHUNK_BYTES`], checking every hash, and a local content-addressed cache so a worker
//! fetches a style image (or a content frame) once.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use stylefarm_proto::blob::{is_sha256, read_blob, sha256_hex, write_requests, ReadError};
use stylefarm_proto::v1::blob_service_client::BlobServiceClient;
use stylefarm_proto::v1::{BlobRef, FindMissingBlobsRequest};

use tonic::Status;

use crate::rpc::{retry, transient, within, Transport, RPC_TIMEOUT};

/// Largest blob a task may ask this worker to fetch.
pub(crate) const MAX_BLOB_BYTES: u64 = 512 * 1024 * 1024;

/// Default size bound of the blob cache; the least recently used blobs go first.
const CACHE_MAX_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Tries per transfer (a broken `Read` resumes from where it stopped).
const TRANSFER_ATTEMPTS: u32 = 4;

/// Uploads `data` (whose sha256 is `sha256`) unless the coordinator already has it.
pub(crate) async fn upload(
    client: &BlobServiceClient<Transport>,
    data: Arc<Vec<u8>>,
    sha256: String,
) -> Result<BlobRef, Status> {
    let blob = BlobRef {
        sha256: sha256.clone(),
        size: data.len() as u64,
    };
    retry(TRANSFER_ATTEMPTS, || {
        let mut client = client.clone();
        let (data, sha256) = (data.clone(), sha256.clone());
        async move {
            let missing = within(
                RPC_TIMEOUT,
                client.find_missing_blobs(FindMissingBlobsRequest {
                    sha256: vec![sha256.clone()],
                }),
            )
            .await?
            .into_inner()
            .missing;
            if !missing.contains(&sha256) {
                return Ok(());
            }
            // Generous: a large blob on a slow link takes a while.
            let limit = RPC_TIMEOUT + std::time::Duration::from_secs(data.len() as u64 >> 20);
            let stream = tokio_stream::iter(write_requests(data, sha256.clone()));
            let written = within(limit, client.write(stream)).await?.into_inner().blob;
            match written {
                Some(b) if b.sha256 == sha256 => Ok(()),
                other => Err(Status::data_loss(format!(
                    "the coordinator stored the blob as {other:?}, expected {sha256}"
                ))),
            }
        }
    })
    .await?;
    Ok(blob)
}

/// Downloads `blob` with `Read`, each call and message within [`RPC_TIMEOUT`], resuming from
/// the last byte received after a [`transient`] failure, and checks its size and sha256.
pub(crate) async fn download(
    client: &BlobServiceClient<Transport>,
    blob: &BlobRef,
) -> Result<Vec<u8>, ReadError> {
    read_blob(
        client.clone(),
        blob,
        TRANSFER_ATTEMPTS,
        transient,
        Some(RPC_TIMEOUT),
    )
    .await
}

/// Blobs kept on disk as `DIR/ab/abcdef...` (named by their sha256), verified on every read.
#[derive(Debug)]
pub(crate) struct BlobCache {
    dir: PathBuf,
    max_bytes: u64,
    /// Keeps a temporary cache directory alive (and removes it on drop).
    _temp: Option<tempfile::TempDir>,
}

impl BlobCache {
    /// A cache in `dir` (created if needed), or in a new temporary directory.
    pub(crate) fn open(dir: Option<PathBuf>) -> io::Result<Self> {
        let (dir, temp) = match dir {
            Some(d) => {
                fs::create_dir_all(&d)?;
                (d, None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("stylefarm-worker-blobs-")
                    .tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        Ok(Self {
            dir,
            max_bytes: CACHE_MAX_BYTES,
            _temp: temp,
        })
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(&sha256[..2]).join(sha256)
    }

    /// The blob, if it is cached with the right size and hash; a damaged copy is removed.
    /// `sha256` must satisfy [`is_sha256`].
    pub(crate) fn get(&self, sha256: &str, size: u64) -> Option<Vec<u8>> {
        let path = self.path(sha256);
        let data = fs::read(&path).ok()?;
        if data.len() as u64 != size || sha256_hex(&data) != sha256 {
            tracing::warn!(path = %path.display(), "removing a damaged cached blob");
            let _ = fs::remove_file(&path);
            return None;
        }
        // Mark it recently used, for eviction; failing that only makes it go sooner.
        if let Ok(f) = fs::File::options().append(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(data)
    }

    /// Stores `data` under `sha256` (already verified by the caller), atomically, then trims
    /// the cache to its size bound.
    pub(crate) fn put(&self, sha256: &str, data: &[u8]) -> io::Result<()> {
        let path = self.path(sha256);
        let parent = path.parent().unwrap_or(&self.dir);
        fs::create_dir_all(parent)?;
        let mut tmp = tempfile::NamedTempFile::new_in(parent)?;
        tmp.write_all(data)?;
        tmp.persist(&path).map_err(|e| e.error)?;
        self.trim(&path)
    }

    /// Removes the least recently used blobs (never `keep`) until the cache fits its bound.
    fn trim(&self, keep: &Path) -> io::Result<()> {
        let mut files = Vec::new();
        for sub in fs::read_dir(&self.dir)? {
            let sub = sub?.path();
            if !sub.is_dir() {
                continue;
            }
            for f in fs::read_dir(&sub)? {
                let f = f?;
                let meta = f.metadata()?;
                let name = f.file_name();
                if meta.is_file() && name.to_str().is_some_and(is_sha256) {
                    let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    files.push((used, meta.len(), f.path()));
                }
            }
        }
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if path != keep && fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_reuses_verified_blobs_and_drops_damaged_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(Some(dir.path().join("blobs"))).unwrap();
        let data = b"pixels".to_vec();
        let sha = sha256_hex(&data);
        assert_eq!(cache.get(&sha, 6), None);
        cache.put(&sha, &data).unwrap();
        assert_eq!(cache.get(&sha, 6), Some(data.clone()));
        // Another cache on the same directory (a restarted worker) finds it too.
        let again = BlobCache::open(Some(dir.path().join("blobs"))).unwrap();
        assert_eq!(again.get(&sha, 6), Some(data.clone()));
        // The wrong size is a miss, and so is a damaged file, which goes away.
        assert_eq!(cache.get(&sha, 7), None);
        cache.put(&sha, &data).unwrap();
        fs::write(cache.path(&sha), b"pixelz").unwrap();
        assert_eq!(cache.get(&sha, 6), None);
        assert!(!cache.path(&sha).exists());
    }

    #[test]
    fn cache_keeps_to_its_bound_dropping_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = BlobCache::open(Some(dir.path().to_path_buf())).unwrap();
        cache.max_bytes = 25;
        let blobs: Vec<(String, Vec<u8>)> = (0..3u8)
            .map(|i| {
                let d = vec![i; 10];
                (sha256_hex(&d), d)
            })
            .collect();
        let day = std::time::Duration::from_secs(86_400);
        for (i, (sha, d)) in blobs.iter().enumerate().take(2) {
            cache.put(sha, d).unwrap();
            // Distinct ages without waiting: blob 0 used two days ago, blob 1 one day ago.
            let f = fs::File::options()
                .append(true)
                .open(cache.path(sha))
                .unwrap();
            f.set_modified(SystemTime::now() - day * (2 - i as u32))
                .unwrap();
        }
        // Using blob 0 makes blob 1 the least recently used.
        assert!(cache.get(&blobs[0].0, 10).is_some());
        cache.put(&blobs[2].0, &blobs[2].1).unwrap();
        assert!(cache.path(&blobs[0].0).exists());
        assert!(!cache.path(&blobs[1].0).exists());
        assert!(cache.path(&blobs[2].0).exists());
    }

    #[test]
    fn a_temporary_cache_goes_away_with_it() {
        let cache = BlobCache::open(None).unwrap();
        let dir = cache.dir.clone();
        cache.put(&sha256_hex(b"x"), b"x").unwrap();
        assert!(dir.is_dir());
        drop(cache);
        assert!(!dir.exists());
    }
}
