//! What the client and the workers both need to move blobs and to call a farm: blob names
//! (sha256), the chunked `Write` messages, the checks on what a `Read` brings, and the
//! farm-token interceptor.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

use crate::v1::{BlobRef, WriteBlobRequest};
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

/// The size a download of `blob` must come to, as a buffer length.
///
/// # Errors
/// The reason, when this machine cannot hold that many bytes in memory.
pub fn announced_size(blob: &BlobRef) -> Result<usize, String> {
    usize::try_from(blob.size)
        .map_err(|_| format!("{} bytes is too large for this machine", blob.size))
}

/// Appends one `Read` message's bytes to a download that must come to `expected` bytes.
///
/// # Errors
/// `DATA_LOSS` when the bytes would run past `expected`.
pub fn append_read(data: &mut Vec<u8>, chunk: &[u8], expected: usize) -> Result<(), Status> {
    if data.len() + chunk.len() > expected {
        return Err(Status::data_loss(format!(
            "more than the {expected} bytes announced came"
        )));
    }
    data.extend_from_slice(chunk);
    Ok(())
}

/// Checks that a finished download is `blob`: its size, then its hash.
///
/// # Errors
/// The reason when it is not.
pub fn verify_download(blob: &BlobRef, data: &[u8]) -> Result<(), String> {
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
    use super::*;

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
        let e = append_read(&mut got, b"x", 10).unwrap_err();
        assert_eq!(e.code(), tonic::Code::DataLoss);
        assert_eq!(e.message(), "more than the 10 bytes announced came");
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
