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

/// Asks the server at `endpoint` whether it serves, the way a container probe does:
/// `grpc.health.v1.Health/Check` for the whole server, connecting and answering within
/// `timeout`.
///
/// # Errors
/// One sentence: the server cannot be reached, did not answer, or is not `SERVING`.
pub async fn check_health(endpoint: Endpoint, timeout: std::time::Duration) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let url = endpoint.uri().to_string();
    let url = url.trim_end_matches('/');
    let channel = endpoint
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| {
            let text = error_chain(&e);
            tls_mismatch(url, &text).unwrap_or_else(|| format!("cannot reach {url}: {text}"))
        })?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| format!("{url} did not answer the health check: {}", s.message()))?;
    match answer.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("{url} is not serving ({})", other.as_str_name())),
    }
}

/// An error and its causes, joined by `: ` (tonic's transport error says only "transport
/// error" itself).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        source = cause.source();
    }
    text
}

/// The address a probe on this machine connects to for a server listening on `listen`
/// (`host:port`): the same port on loopback when it listens on every address (`0.0.0.0`,
/// `[::]`), else `listen` itself.
pub fn local_address(listen: &str) -> String {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => {
            let ip: std::net::IpAddr = if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            std::net::SocketAddr::new(ip, addr.port()).to_string()
        }
        _ => listen.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_reach_every_address_listener_on_loopback() {
        assert_eq!(local_address("0.0.0.0:50051"), "127.0.0.1:50051");
        assert_eq!(local_address("[::]:9090"), "[::1]:9090");
        assert_eq!(local_address("10.1.2.3:50051"), "10.1.2.3:50051");
        assert_eq!(local_address("coordinator:50051"), "coordinator:50051");
    }
}
