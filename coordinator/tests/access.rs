//! Who may reach the farm, and how: TLS (a test authority made with `openssl`, as the README
//! shows), mutual TLS for workers, separate client and worker tokens, a coordinator beyond
//! loopback that is never open by default, one clear sentence for a plaintext/TLS mismatch,
//! and the limits every request meets before it costs anything.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use stylefarm_coordinator::{Config, ServerTls};
use stylefarm_proto::connect::{endpoint, tls_mismatch, TlsFiles};
use stylefarm_proto::v1;
use stylefarm_proto::v1::job_service_client::JobServiceClient;
use stylefarm_proto::v1::worker_service_client::WorkerServiceClient;
use tonic::transport::Channel;
use tonic::Code;

/// A certificate authority, a certificate for `localhost`/`127.0.0.1` and one for a worker,
/// made in `dir` by `openssl` the way the README shows.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &key[..],
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=stylefarm test CA",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    std::fs::write(dir.join("worker.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for name in ["server", "worker"] {
        run(&[
            &["req"][..],
            &key[..],
            &[
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        ]
        .concat());
        let (csr, pem) = (format!("{name}.csr"), format!("{name}.pem"));
        let mut sign = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
        ];
        let ext = format!("{name}.ext");
        sign.extend(["-extfile", &ext]);
        run(&sign);
    }
}

fn server_tls(dir: &Path, client_ca: bool) -> ServerTls {
    ServerTls {
        cert_pem: std::fs::read(dir.join("server.pem")).unwrap(),
        key_pem: std::fs::read(dir.join("server.key")).unwrap(),
        client_ca_pem: client_ca.then(|| std::fs::read(dir.join("ca.pem")).unwrap()),
    }
}

async fn channel(url: &str, tls: &TlsFiles) -> Result<Channel, String> {
    let endpoint = endpoint(url, tls)?;
    endpoint.connect().await.map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    })
}

async fn list(channel: Channel, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(v1::ListJobsRequest::default());
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    JobServiceClient::new(channel)
        .list_jobs(request)
        .await
        .map(drop)
}

#[tokio::test]
async fn tls_serves_what_trusts_its_authority_and_a_mismatch_is_one_sentence() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.tls = Some(server_tls(certs.path(), false));
    let farm = Farm::start_with(config).await;
    let https = farm.url.replace("http://", "https://");
    let trusted = TlsFiles {
        ca: Some(certs.path().join("ca.pem")),
        identity: None,
    };
    let c = channel(&https, &trusted)
        .await
        .expect("TLS with the test CA");
    list(c, None).await.unwrap();

    // Not trusting the authority: refused by the handshake.
    let stranger = tempfile::tempdir().unwrap();
    make_certificates(stranger.path());
    let other = TlsFiles {
        ca: Some(stranger.path().join("ca.pem")),
        identity: None,
    };
    assert!(channel(&https, &other).await.is_err());

    // Plaintext at a TLS coordinator: one sentence saying what to change.
    let plain = match channel(&farm.url, &TlsFiles::default()).await {
        Err(e) => e,
        Ok(c) => list(c, None).await.unwrap_err().to_string(),
    };
    let sentence = tls_mismatch(&farm.url, &plain).unwrap_or_else(|| panic!("{plain}"));
    assert!(sentence.contains("https://"), "{sentence}");
    // TLS files with an http:// address are refused before connecting.
    assert!(endpoint(&farm.url, &trusted)
        .unwrap_err()
        .contains("https://"));
    farm.stop().await;

    // TLS at a plaintext coordinator.
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let https = farm.url.replace("http://", "https://");
    let e = channel(&https, &trusted).await.unwrap_err();
    let sentence = tls_mismatch(&https, &e).unwrap_or_else(|| panic!("{e}"));
    assert!(sentence.contains("does not speak TLS"), "{sentence}");
    farm.stop().await;
}

#[tokio::test]
async fn mutual_tls_refuses_a_peer_without_a_certificate_of_the_authority() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.tls = Some(server_tls(certs.path(), true));
    let farm = Farm::start_with(config).await;
    let https = farm.url.replace("http://", "https://");
    let with_cert = TlsFiles {
        ca: Some(certs.path().join("ca.pem")),
        identity: Some((
            certs.path().join("worker.pem"),
            certs.path().join("worker.key"),
        )),
    };
    let c = channel(&https, &with_cert).await.unwrap();
    list(c, None).await.unwrap();
    let without = TlsFiles {
        ca: Some(certs.path().join("ca.pem")),
        identity: None,
    };
    let refused = match channel(&https, &without).await {
        Err(_) => true,
        Ok(c) => list(c, None).await.is_err(),
    };
    assert!(refused, "a peer without a certificate was served");

    // The container probe, with the coordinator's own flags: it trusts the farm's authority
    // and shows the coordinator's certificate.
    let listen = farm.url.trim_start_matches("http://").to_string();
    let pem = |f: &str| certs.path().join(f).to_string_lossy().into_owned();
    let probe = |extra: Vec<String>| {
        let mut args = vec![
            "--health-check".to_string(),
            "--listen".into(),
            listen.clone(),
            "--tls-cert".into(),
            pem("server.pem"),
            "--tls-key".into(),
            pem("server.key"),
        ];
        args.extend(extra);
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_stylefarm-coordinator"))
                .args(args)
                .env_remove("STYLEFARM_HEALTH_CHECK_CA")
                .output()
                .unwrap()
        })
    };
    let ok = probe(vec!["--tls-client-ca".into(), pem("ca.pem")])
        .await
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    // Without a certificate to show, mutual TLS turns the probe away: one sentence, exit 1.
    let no_identity = probe(vec!["--health-check-ca".into(), pem("ca.pem")])
        .await
        .unwrap();
    assert_eq!(no_identity.status.code(), Some(1), "{no_identity:?}");
    assert_eq!(
        String::from_utf8_lossy(&no_identity.stderr).lines().count(),
        1
    );
    farm.stop().await;
}

#[tokio::test]
async fn client_and_worker_tokens_open_only_their_own_services() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.client_token = Some("client-secret".into());
    config.worker_token = Some("worker-secret".into());
    let farm = Farm::start_with(config).await;
    let c = farm.clients().await;
    list(c.channel.clone(), Some("client-secret"))
        .await
        .unwrap();
    let e = list(c.channel.clone(), Some("worker-secret"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(!e.message().contains("secret"), "{}", e.message());
    assert_eq!(
        list(c.channel.clone(), None).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let register = |token: &'static str| {
        let channel = c.channel.clone();
        async move {
            let mut request = tonic::Request::new(v1::RegisterWorkerRequest {
                name: "w".into(),
                ..Default::default()
            });
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            WorkerServiceClient::new(channel)
                .register_worker(request)
                .await
        }
    };
    assert!(register("worker-secret").await.is_ok());
    assert_eq!(
        register("client-secret").await.unwrap_err().code(),
        Code::Unauthenticated
    );
    farm.stop().await;

    // One role's token without the other's is a mistake, said at start.
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.client_token = Some("only-clients".into());
    let e = Farm::try_start(config).await.err().unwrap();
    assert!(e.contains("--worker-token"), "{e}");
}

#[tokio::test]
async fn a_coordinator_beyond_loopback_without_a_token_makes_one() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(stylefarm_coordinator::serve(
        listener,
        Config::new(dir.path()),
        async {
            let _ = stopped.await;
        },
    ));
    let url = format!("http://127.0.0.1:{port}");
    let token_file = dir.path().join("token");
    let mut waited = 0;
    while !token_file.exists() && waited < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    let token = std::fs::read_to_string(&token_file).unwrap();
    let token = token.trim();
    assert_eq!(token.len(), 64, "32 random bytes in hex");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "only its owner may read the token");
    }
    let c = clients_of(&url).await;
    assert_eq!(
        list(c.channel.clone(), None).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    list(c.channel.clone(), Some(token)).await.unwrap();
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn two_coordinators_cannot_share_a_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let first = Farm::start(dir.path()).await;
    let _ = first.clients().await;
    let e = Farm::try_start(Config::new(dir.path()))
        .await
        .err()
        .unwrap();
    assert!(e.contains("another coordinator"), "{e}");
    first.stop().await;
    let again = Farm::try_start(Config::new(dir.path())).await.unwrap();
    again.stop().await;
}

#[tokio::test]
async fn every_size_a_request_chooses_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.max_queued_jobs_per_client = 2;
    config.max_iterations = 50;
    config.max_concurrent_streams = 1;
    let farm = Farm::start_with(config).await;
    let mut c = farm.clients().await;

    // A 6 MiB registration is refused by size, naming the limit, before it costs memory.
    let e = c
        .workers
        .register_worker(v1::RegisterWorkerRequest {
            name: "x".repeat(6 << 20),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("--max-message-bytes"),
        "{}",
        e.message()
    );

    // L-BFGS history and memory from the request are bounded.
    let mut spec = simple_spec(&mut c).await;
    spec.settings
        .get_or_insert_with(Default::default)
        .lbfgs_history = Some(u32::MAX);
    let e = submit(&mut c, spec).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("lbfgs"), "{}", e.message());
    let mut spec = simple_spec(&mut c).await;
    spec.required_memory_bytes = u64::MAX;
    let e = submit(&mut c, spec).await.unwrap_err();
    assert!(
        e.message().contains("spec.required_memory_bytes"),
        "{}",
        e.message()
    );
    let mut spec = simple_spec(&mut c).await;
    spec.settings
        .get_or_insert_with(Default::default)
        .num_iterations = Some(51);
    let e = submit(&mut c, spec).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("--max-iterations"), "{}", e.message());

    // A huge id is not echoed back.
    let e = c
        .jobs
        .get_job(v1::GetJobRequest {
            job_id: "x".repeat(10_000),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().len() < 200, "{}", e.message());

    // Unfinished jobs per client.
    for _ in 0..2 {
        let spec = simple_spec(&mut c).await;
        submit(&mut c, spec).await.unwrap();
    }
    let spec = simple_spec(&mut c).await;
    let e = submit(&mut c, spec).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message().contains("--max-queued-jobs-per-client"),
        "{}",
        e.message()
    );

    // A job nobody can take says why it waits.
    let jobs = c
        .jobs
        .list_jobs(v1::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(
        jobs.iter().all(|j| j.error.contains("none has registered")),
        "{jobs:?}"
    );

    // Long-lived calls: one at a time here, the next is shed at once.
    let id = jobs[0].id.clone();
    let _watch = c
        .jobs
        .watch_job(v1::WatchJobRequest { job_id: id.clone() })
        .await
        .unwrap();
    let e = c
        .jobs
        .watch_job(v1::WatchJobRequest { job_id: id })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message().contains("--max-concurrent-streams"),
        "{}",
        e.message()
    );
    farm.stop().await;
}

#[tokio::test]
async fn a_result_that_is_not_an_image_is_refused_and_the_task_stays_leased() {
    let dir = tempfile::tempdir().unwrap();
    let farm = Farm::start(dir.path()).await;
    let mut c = farm.clients().await;
    let spec = simple_spec(&mut c).await;
    let job = submit(&mut c, spec).await.unwrap();
    let worker = register(&mut c, "w", 1 << 34).await;
    let lease = lease(&mut c, &worker, 1000).await.expect("a task");
    let garbage = upload(&mut c, b"this is not a png").await;
    let e = complete_raw(&mut c, &lease.lease_id, &garbage)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("result"), "{}", e.message());
    let j = get_job(&mut c, &job).await;
    assert_ne!(job_state(&j), v1::JobState::Completed);
    let good = upload(&mut c, &png(32, 24, 7)).await;
    complete_raw(&mut c, &lease.lease_id, &good).await.unwrap();
    assert_eq!(
        job_state(&get_job(&mut c, &job).await),
        v1::JobState::Completed
    );
    farm.stop().await;
}
