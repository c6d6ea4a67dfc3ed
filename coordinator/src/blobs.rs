//! The blob store: content-addressed files under `data_dir/blobs/<aa>/<sha256>`.
//!
//! A blob is written to a temporary file while its hash is computed, checked against the
//! declared hash and size, fsynced, renamed into place and its directory fsynced: a blob that
//! exists under its name is always complete and correct, whatever crashed when.

use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use stylefarm_proto::v1;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::error::{CoordinatorError, Result};

/// A checked blob name: 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct BlobHash(String);

impl BlobHash {
    /// Checks `s` as the value of `field`.
    pub(crate) fn parse(s: &str, field: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(CoordinatorError::invalid(
                field,
                "missing: a blob's sha256 is needed",
            ));
        }
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            let shown: String = s.chars().take(80).collect();
            return Err(CoordinatorError::invalid(
                field,
                format!("`{shown}` is not a sha256 (64 lowercase hex digits)"),
            ));
        }
        Ok(Self(s.to_string()))
    }

    /// The hash as text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The store's directories, and the bytes it holds against its limit.
#[derive(Debug)]
pub(crate) struct BlobStore {
    root: PathBuf,
    tmp: PathBuf,
    /// Bytes of the stored blobs (counted at open, then as blobs are added).
    used: Arc<AtomicU64>,
    /// The most bytes the store may hold (`--max-store-bytes`).
    max_bytes: u64,
}

/// An I/O error, as a limit when the disk is full.
fn io_error(path: &Path, e: std::io::Error) -> CoordinatorError {
    if matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded) {
        CoordinatorError::DiskFull(format!(
            "the coordinator's disk is full: cannot write {}; the upload stored nothing and may \
             be made again once space is freed",
            path.display()
        ))
    } else {
        CoordinatorError::io(path, e)
    }
}

impl BlobStore {
    /// Stores `data` as a blob (unless it is already there) and returns its reference: how
    /// the coordinator's own tasks keep their results.
    pub(crate) async fn put(&self, data: &[u8]) -> Result<v1::BlobRef> {
        let sha = hex::encode(Sha256::digest(data));
        let hash = BlobHash::parse(&sha, "sha256")?;
        let size = data.len() as u64;
        if self.size(&hash).await? != Some(size) {
            let mut w = self.begin(hash, size).await?;
            w.write(data).await?;
            w.finish().await?;
        }
        Ok(v1::BlobRef { sha256: sha, size })
    }

    /// Bytes of the blobs stored now.
    pub(crate) fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Opens the store under `data_dir/blobs`, creating it, and removes the temporary files
    /// of writes a crash interrupted. Blocking.
    pub(crate) fn open(data_dir: &Path) -> Result<Self> {
        let root = data_dir.join("blobs");
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| CoordinatorError::io(&tmp, e))?;
        let entries = std::fs::read_dir(&tmp).map_err(|e| CoordinatorError::io(&tmp, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a leftover temporary blob");
            }
        }
        let used = stored_bytes(&root);
        Ok(Self {
            root,
            tmp,
            used: Arc::new(AtomicU64::new(used)),
            max_bytes: u64::MAX,
        })
    }

    /// The same store, refusing uploads that would take it past `max_bytes`.
    pub(crate) fn with_limit(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Where the blob lives.
    pub(crate) fn path(&self, hash: &BlobHash) -> PathBuf {
        self.root.join(&hash.as_str()[..2]).join(hash.as_str())
    }

    /// The blob's size, or `None` when it is not stored.
    pub(crate) async fn size(&self, hash: &BlobHash) -> Result<Option<u64>> {
        let path = self.path(hash);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CoordinatorError::io(path, e)),
        }
    }

    /// The blob's bytes.
    pub(crate) async fn read_all(&self, hash: &BlobHash) -> Result<Vec<u8>> {
        let path = self.path(hash);
        let bytes = tokio::fs::read(&path).await.map_err(|e| match e.kind() {
            ErrorKind::NotFound => CoordinatorError::NotFound {
                kind: "blob",
                id: hash.to_string(),
            },
            _ => CoordinatorError::io(&path, e),
        })?;
        if hex::encode(Sha256::digest(&bytes)) != hash.as_str() {
            return Err(self.damaged(hash).await);
        }
        Ok(bytes)
    }

    /// Moves a blob whose bytes no longer match its name to `blobs/damaged/`, so that it is
    /// never handed out again (an upload of the right bytes stores it anew), and says so.
    pub(crate) async fn damaged(&self, hash: &BlobHash) -> CoordinatorError {
        let path = self.path(hash);
        let aside = self.root.join("damaged");
        let len = tokio::fs::metadata(&path).await.map_or(0, |m| m.len());
        let to = aside.join(format!("{hash}.{}", uuid::Uuid::new_v4().simple()));
        let moved = match tokio::fs::create_dir_all(&aside).await {
            Ok(()) => tokio::fs::rename(&path, &to).await,
            Err(e) => Err(e),
        };
        if moved.is_ok() {
            let used = self.used.load(Ordering::Relaxed);
            self.used.fetch_sub(len.min(used), Ordering::Relaxed);
        }
        tracing::error!(%hash, moved = moved.is_ok(), "a stored blob is damaged: its bytes no longer match its hash");
        CoordinatorError::Damaged(format!(
            "blob {hash} is damaged on the coordinator's disk (its bytes no longer match its \
             hash); it was set aside: upload it again"
        ))
    }

    /// Deletes a stored blob; returns the bytes freed (0 when it was not there).
    pub(crate) async fn remove(&self, hash: &BlobHash) -> u64 {
        let path = self.path(hash);
        let len = tokio::fs::metadata(&path).await.map_or(0, |m| m.len());
        if tokio::fs::remove_file(&path).await.is_err() {
            return 0;
        }
        let used = self.used.load(Ordering::Relaxed);
        self.used.fetch_sub(len.min(used), Ordering::Relaxed);
        len
    }

    /// Marks a stored blob as just used, so that a collection running now keeps it (a client
    /// that finds it present will not upload it again before naming it in a job).
    pub(crate) async fn touch(&self, hash: &BlobHash) {
        let path = self.path(hash);
        let _ = tokio::task::spawn_blocking(move || {
            std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        })
        .await;
    }

    /// Deletes every stored blob that is not in `keep` and was not written or touched in the
    /// last `grace`; returns how many blobs and bytes went.
    pub(crate) async fn sweep(
        &self,
        keep: std::collections::HashSet<String>,
        grace: std::time::Duration,
    ) -> Result<(usize, u64)> {
        let root = self.root.clone();
        let (count, bytes) = tokio::task::spawn_blocking(move || {
            let cutoff = std::time::SystemTime::now()
                .checked_sub(grace)
                .unwrap_or(std::time::UNIX_EPOCH);
            let (mut count, mut bytes) = (0usize, 0u64);
            let Ok(dirs) = std::fs::read_dir(&root) else {
                return (0, 0);
            };
            for dir in dirs.flatten() {
                let name = dir.file_name();
                if name.len() != 2 {
                    continue;
                }
                let Ok(files) = std::fs::read_dir(dir.path()) else {
                    continue;
                };
                for file in files.flatten() {
                    let Some(sha) = file.file_name().to_str().map(str::to_string) else {
                        continue;
                    };
                    if keep.contains(&sha) {
                        continue;
                    }
                    let Ok(meta) = file.metadata() else { continue };
                    if meta.modified().is_ok_and(|m| m > cutoff) {
                        continue;
                    }
                    if std::fs::remove_file(file.path()).is_ok() {
                        count += 1;
                        bytes += meta.len();
                    }
                }
            }
            (count, bytes)
        })
        .await
        .map_err(|e| CoordinatorError::Internal(format!("collecting blobs failed: {e}")))?;
        let used = self.used.load(Ordering::Relaxed);
        self.used.fetch_sub(bytes.min(used), Ordering::Relaxed);
        Ok((count, bytes))
    }

    /// The blob opened at `offset`, and its size.
    pub(crate) async fn open_at(
        &self,
        hash: &BlobHash,
        offset: u64,
    ) -> Result<(tokio::fs::File, u64)> {
        let path = self.path(hash);
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => CoordinatorError::NotFound {
                    kind: "blob",
                    id: hash.to_string(),
                },
                _ => CoordinatorError::io(&path, e),
            })?;
        let size = file
            .metadata()
            .await
            .map_err(|e| CoordinatorError::io(&path, e))?
            .len();
        if offset > size {
            return Err(CoordinatorError::OffsetOutOfRange {
                sha256: hash.to_string(),
                size,
                offset,
            });
        }
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| CoordinatorError::io(&path, e))?;
        Ok((file, size))
    }

    /// Starts writing a blob that should hash to `hash` and hold `size` bytes.
    pub(crate) async fn begin(&self, hash: BlobHash, size: u64) -> Result<BlobWriter> {
        let used = self.used.load(Ordering::Relaxed);
        if used.saturating_add(size) > self.max_bytes {
            return Err(CoordinatorError::LimitExceeded(format!(
                "the blob store holds {used} bytes and a blob of {size} more would pass its limit \
                 of {} bytes (--max-store-bytes): delete finished jobs (stylefarm delete) first",
                self.max_bytes
            )));
        }
        let tmp = self
            .tmp
            .join(format!("{}.{}", hash, uuid::Uuid::new_v4().simple()));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io_error(&tmp, e))?;
        Ok(BlobWriter {
            file,
            guard: TempFile(Some(tmp)),
            hasher: Sha256::new(),
            written: 0,
            size,
            path: self.path(&hash),
            hash,
            used: self.used.clone(),
        })
    }
}

/// Removes a temporary file unless it was renamed into place.
#[derive(Debug)]
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Best effort: a leftover is removed at the next start.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Bytes of the blobs under `root` (`<aa>/<sha256>` files; the temporary folder aside).
fn stored_bytes(root: &Path) -> u64 {
    let Ok(dirs) = std::fs::read_dir(root) else {
        return 0;
    };
    dirs.flatten()
        .filter(|d| d.file_name().len() == 2)
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(|files| files.flatten())
        .filter_map(|f| f.metadata().ok())
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
        .sum()
}

/// A blob being written.
#[derive(Debug)]
pub(crate) struct BlobWriter {
    file: tokio::fs::File,
    guard: TempFile,
    hasher: Sha256,
    written: u64,
    size: u64,
    hash: BlobHash,
    path: PathBuf,
    used: Arc<AtomicU64>,
}

impl BlobWriter {
    /// Appends `data`; refuses more bytes than declared.
    pub(crate) async fn write(&mut self, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        if self.written + len > self.size {
            return Err(CoordinatorError::invalid(
                "data",
                format!(
                    "the stream carries more than the declared size of {} bytes; nothing was stored",
                    self.size
                ),
            ));
        }
        self.hasher.update(data);
        let tmp = self
            .guard
            .0
            .as_deref()
            .unwrap_or(Path::new("temporary blob"));
        self.file
            .write_all(data)
            .await
            .map_err(|e| io_error(tmp, e))?;
        self.written += len;
        Ok(())
    }

    /// Checks size and hash, then makes the blob durable under its name.
    pub(crate) async fn finish(mut self) -> Result<u64> {
        if self.written != self.size {
            return Err(CoordinatorError::invalid(
                "size",
                format!(
                    "the stream carried {} bytes, not the declared {}; nothing was stored",
                    self.written, self.size
                ),
            ));
        }
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if actual != self.hash.as_str() {
            return Err(CoordinatorError::invalid(
                "sha256",
                format!(
                    "the data's sha256 is {actual}, not the declared {}; nothing was stored",
                    self.hash
                ),
            ));
        }
        let Some(tmp) = self.guard.0.clone() else {
            return Err(CoordinatorError::Internal("blob written twice".into()));
        };
        self.file.flush().await.map_err(|e| io_error(&tmp, e))?;
        self.file.sync_all().await.map_err(|e| io_error(&tmp, e))?;
        let path = self.path.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<bool> {
            let dir = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
            let new = !path.exists();
            std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))?;
            // The rename is durable once the directory is.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| CoordinatorError::io(dir, e))?;
            Ok(new)
        })
        .await
        .map_err(|e| CoordinatorError::Internal(format!("storing a blob failed: {e}")))?;
        if result? {
            self.used.fetch_add(self.written, Ordering::Relaxed);
        }
        // Renamed: nothing left to remove.
        self.guard.0 = None;
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[test]
    fn hashes_are_checked() {
        assert!(BlobHash::parse(&sha(b"x"), "sha256").is_ok());
        let upper = sha(b"x").to_uppercase();
        let e = BlobHash::parse(&upper, "sha256").unwrap_err();
        assert!(e.to_string().starts_with("invalid sha256: `"), "{e}");
        let e = BlobHash::parse("", "spec.content[0].sha256").unwrap_err();
        assert!(e.to_string().contains("spec.content[0].sha256"), "{e}");
        assert!(BlobHash::parse("../../etc/passwd", "sha256").is_err());
    }

    #[tokio::test]
    async fn a_blob_is_stored_only_when_its_hash_matches() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data = b"hello blobs";
        let hash = BlobHash::parse(&sha(data), "sha256").unwrap();

        let mut w = store.begin(hash.clone(), data.len() as u64).await.unwrap();
        w.write(b"hello BLOBS").await.unwrap();
        let e = w.finish().await.unwrap_err();
        assert!(e.to_string().contains("nothing was stored"), "{e}");
        assert_eq!(store.size(&hash).await.unwrap(), None);

        let mut w = store.begin(hash.clone(), data.len() as u64).await.unwrap();
        w.write(data).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), data.len() as u64);
        assert_eq!(store.size(&hash).await.unwrap(), Some(data.len() as u64));
        assert_eq!(store.read_all(&hash).await.unwrap(), data);
        // No temporary files are left behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs/tmp"))
                .unwrap()
                .count(),
            0
        );

        let mut w = store.begin(hash.clone(), 3).await.unwrap();
        assert!(w.write(data).await.is_err());
    }
}
