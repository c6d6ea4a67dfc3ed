//! Reaching a coordinator, the same way from the client and the worker: the address
//! (`http://` in plaintext, `https://` over TLS, never one quietly for the other), the
//! certificates, the token from a flag, the environment or a file, and a sentence for the
//! usual mistakes (a plaintext client at a TLS coordinator, or the reverse).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// How to check the coordinator, and how to show who we are, over TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// PEM certificates of the authority that signed the coordinator's certificate
    /// (`--tls-ca`); without it, the system's roots.
    pub ca: Option<PathBuf>,
    /// Our own certificate and key, PEM (`--tls-cert`, `--tls-key`), for a coordinator that
    /// asks workers for one (mutual TLS).
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    /// Whether any TLS option was given.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.identity.is_some()
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

/// An endpoint for `url` (`http://` or `https://`), with TLS set up from `tls` for `https://`.
///
/// # Errors
/// One sentence: an address of another scheme, TLS files given for an `http://` address, a
/// file that cannot be read.
pub fn endpoint(url: &str, tls: &TlsFiles) -> Result<Endpoint, String> {
    let secure = if url.starts_with("https://") {
        true
    } else if url.starts_with("http://") {
        false
    } else {
        return Err("only http:// and https:// addresses are supported".into());
    };
    if !secure && tls.is_set() {
        return Err(
            "TLS files were given but the address starts with http://: use https:// to connect \
             over TLS"
                .into(),
        );
    }
    let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| e.to_string())?;
    if !secure {
        return Ok(endpoint);
    }
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca, "CA certificate")?)),
        None => config.with_native_roots(),
    };
    if let Some((cert, key)) = &tls.identity {
        config = config.identity(Identity::from_pem(
            read(cert, "certificate")?,
            read(key, "key")?,
        ));
    }
    endpoint
        .tls_config(config)
        .map_err(|e| format!("cannot set up TLS: {e}"))
}

/// The token given by `flag` (a flag or its environment variable) or read from `file` (its
/// first line, trimmed); `None` when neither is given.
///
/// # Errors
/// Both given, an unreadable or empty file.
pub fn token(flag: Option<String>, file: Option<&Path>) -> Result<Option<String>, String> {
    match (flag.filter(|t| !t.is_empty()), file) {
        (Some(_), Some(_)) => {
            Err("give the token either directly or as a file (--token-file), not both".into())
        }
        (Some(t), None) => Ok(Some(t)),
        (None, Some(path)) => {
            let text = read(path, "token file")?;
            let text = String::from_utf8(text)
                .map_err(|_| format!("the token file {} is not text", path.display()))?;
            let t = text.lines().next().unwrap_or("").trim().to_string();
            if t.is_empty() {
                return Err(format!("the token file {} is empty", path.display()));
            }
            Ok(Some(t))
        }
        (None, None) => Ok(None),
    }
}

/// A sentence for a connection that failed because one side speaks TLS and the other does
/// not, from the transport error's text; `None` for any other failure.
pub fn tls_mismatch(url: &str, error: &str) -> Option<String> {
    let e = error.to_ascii_lowercase();
    if url.starts_with("https://")
        && (e.contains("invalidcontenttype")
            || e.contains("invalid content type")
            || e.contains("corrupt message")
            || e.contains("received corrupt message")
            || e.contains("wrong version number")
            || e.contains("peer is incompatible"))
    {
        return Some(format!(
            "the coordinator at {url} does not speak TLS: use http:// (or start the coordinator \
             with --tls-cert and --tls-key)"
        ));
    }
    if url.starts_with("http://")
        && (e.contains("frame with invalid size")
            || e.contains("invalid http version")
            || e.contains("connection reset")
            || e.contains("broken pipe")
            || e.contains("http2 error")
            || e.contains("h2 protocol error"))
    {
        return Some(format!(
            "the coordinator at {url} did not answer in plaintext gRPC; if it runs with TLS, use \
             https:// and --tls-ca"
        ));
    }
    None
}
