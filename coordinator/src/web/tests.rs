//! The web monitor's API in process (tower `oneshot`): access with and without the farm's
//! token, the session cookie, cross-site refusals, security headers, bounds, and a job's life
//! through the JSON API and its event stream.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use futures::StreamExt as _;
use serde_json::{json, Value};
use stylefarm_core::image_io::{encode_png, RgbImage};
use tower::ServiceExt as _;

use crate::http::HttpState;
use crate::service::{test_api, Auth};

const TOKEN: &str = "correct-horse-battery-staple";

fn app(dir: &std::path::Path, token: Option<&str>) -> Router {
    let token = token.map(str::to_string);
    crate::http::router(HttpState {
        api: test_api(dir),
        client_auth: Auth::new(&[&token]).unwrap(),
    })
}

async fn send(app: &Router, request: Request<Body>) -> Response {
    app.clone().oneshot(request).await.unwrap()
}

async fn body_bytes(r: Response) -> Vec<u8> {
    axum::body::to_bytes(r.into_body(), 1 << 24)
        .await
        .unwrap()
        .to_vec()
}

async fn body_json(r: Response) -> Value {
    serde_json::from_slice(&body_bytes(r).await).unwrap()
}

fn get(path: &str) -> axum::http::request::Builder {
    Request::get(path).header(header::HOST, "farm:8080")
}

/// A change as the page sends it.
fn change(method: &str, path: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "farm:8080")
        .header("x-stylefarm", "1")
        .header("sec-fetch-site", "same-origin")
        .header(header::ORIGIN, "http://farm:8080")
}

fn with_json(b: axum::http::request::Builder, v: &Value) -> Request<Body> {
    b.header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(v.to_string()))
        .unwrap()
}

fn bearer(b: axum::http::request::Builder) -> axum::http::request::Builder {
    b.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy_and_no_inline_script() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path(), Some(TOKEN));
    for path in [
        "/",
        "/assets/app.js",
        "/assets/views.js",
        "/assets/plot.js",
        "/assets/style.css",
    ] {
        // The page itself needs no token: it holds no data.
        let r = send(&app, get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"));
        assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
    let html = String::from_utf8(
        body_bytes(send(&app, get("/").body(Body::empty()).unwrap()).await).await,
    )
    .unwrap();
    // Every script is a module from the page's origin; nothing inline.
    assert!(html.contains(r#"<script type="module" src="/assets/app.js"></script>"#));
    assert_eq!(html.matches("<script").count(), 1);
    assert!(!html.contains("style=") && !html.contains("<style") && !html.contains("javascript:"));
    let missing = send(&app, get("/assets/nope.js").body(Body::empty()).unwrap()).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(missing
        .headers()
        .contains_key(header::CONTENT_SECURITY_POLICY));
}

#[tokio::test]
async fn with_a_token_reads_need_it_or_the_session_the_login_sets() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path(), Some(TOKEN));
    let farm = || get("/api/farm");

    let r = send(&app, farm().body(Body::empty()).unwrap()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = send(
        &app,
        farm()
            .header(header::AUTHORIZATION, "Bearer wrong")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = send(&app, bearer(farm()).body(Body::empty()).unwrap()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v = body_json(r).await;
    assert_eq!(v["workers"], json!([]));

    let session =
        body_json(send(&app, get("/api/session").body(Body::empty()).unwrap()).await).await;
    assert_eq!(
        session,
        json!({ "token_required": true, "signed_in": false })
    );

    // A wrong token: no cookie.
    let r = send(
        &app,
        with_json(change("POST", "/api/session"), &json!({ "token": "nope" })),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(!r.headers().contains_key(header::SET_COOKIE));

    // The login itself is a change: a cross-site page cannot sign a browser in.
    let r = send(
        &app,
        with_json(
            change("POST", "/api/session").header("sec-fetch-site", "cross-site"),
            &json!({ "token": TOKEN }),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let r = send(
        &app,
        with_json(change("POST", "/api/session"), &json!({ "token": TOKEN })),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let cookie = r.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(
        !cookie.contains(TOKEN),
        "the cookie is a session, not the token"
    );
    let pair = cookie.split(';').next().unwrap().to_string();

    let r = send(
        &app,
        farm()
            .header(header::COOKIE, &pair)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let forged = format!("stylefarm_session={}", "0".repeat(64));
    let r = send(
        &app,
        farm()
            .header(header::COOKIE, forged)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Logging out ends the session.
    let r = send(
        &app,
        change("DELETE", "/api/session")
            .header(header::COOKIE, &pair)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = send(
        &app,
        farm()
            .header(header::COOKIE, &pair)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn changes_from_another_site_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path(), None);
    let path = format!("/api/jobs/{}/cancel", stylefarm_proto::ids::JobId::new());
    let cases = [
        // A plain form post: no custom header.
        Request::post(&path)
            .header(header::HOST, "farm:8080")
            .body(Body::empty())
            .unwrap(),
        bearer(change("POST", &path))
            .header("sec-fetch-site", "cross-site")
            .body(Body::empty())
            .unwrap(),
        change("POST", &path)
            .header(header::ORIGIN, "http://evil.example")
            .body(Body::empty())
            .unwrap(),
        change("POST", &path)
            .header("sec-fetch-site", "same-site")
            .body(Body::empty())
            .unwrap(),
    ];
    for request in cases {
        let r = send(&app, request).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    // From the page itself it reaches the farm (which knows no such job).
    let r = send(&app, change("POST", &path).body(Body::empty()).unwrap()).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(body_json(r).await["error"]
        .as_str()
        .unwrap()
        .contains("job"));
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let pixels = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
    encode_png(&RgbImage::from_raw(w, h, pixels).unwrap()).unwrap()
}

async fn upload(app: &Router, bytes: Vec<u8>) -> Value {
    let r = send(
        app,
        bearer(change("POST", "/api/blobs"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(bytes))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    body_json(r).await
}

#[tokio::test]
async fn a_job_is_planned_submitted_watched_listed_and_canceled_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path(), Some(TOKEN));
    let content = upload(&app, png(32, 24)).await;
    let style = upload(&app, png(16, 16)).await;
    let form = json!({
        "name": "harbour",
        "content": [content], "content_names": ["harbour.png"],
        "styles": [style],
        "image_size": 32, "num_iterations": 5, "style_weight": 1000.0,
        "sweeps": [{ "parameter": "style-weight", "values": ["10", "100"] }],
    });

    let r = send(&app, with_json(bearer(change("POST", "/api/plan")), &form)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let plan = body_json(r).await;
    let kinds: Vec<&str> = plan["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["part"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["sweep", "sweep", "sheet"]);
    assert_eq!(
        (plan["width"].as_u64(), plan["height"].as_u64()),
        (Some(32), Some(24))
    );

    let r = send(&app, with_json(bearer(change("POST", "/api/jobs")), &form)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = body_json(r).await["id"].as_str().unwrap().to_string();

    let list = body_json(
        send(
            &app,
            bearer(get("/api/jobs?limit=100000"))
                .body(Body::empty())
                .unwrap(),
        )
        .await,
    )
    .await;
    assert_eq!(list["jobs"][0]["id"], json!(id));
    assert_eq!(list["jobs"][0]["state"], json!("queued"));
    // The farm view counts the two sweep points in the CPU pool's queue (the contact sheet is
    // the coordinator's own task, in no pool).
    let farm =
        body_json(send(&app, bearer(get("/api/farm")).body(Body::empty()).unwrap()).await).await;
    assert_eq!(farm["pools"]["cpu"], json!({ "queued": 2, "demand": 2 }));
    assert_eq!(farm["pools"]["cuda"], json!({ "queued": 0, "demand": 0 }));
    let job = body_json(
        send(
            &app,
            bearer(get(&format!("/api/jobs/{id}")))
                .body(Body::empty())
                .unwrap(),
        )
        .await,
    )
    .await;
    assert_eq!(job["name"], json!("harbour"));
    assert_eq!(job["settings"]["style_weight"], json!(1000.0));
    assert_eq!(job["tasks"][0]["part"]["label"], json!("style-weight=10"));

    // The event stream starts with the job's snapshot.
    let r = send(
        &app,
        bearer(get(&format!("/api/jobs/{id}/events")))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut stream = r.into_body().into_data_stream();
    let first = String::from_utf8(stream.next().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(first.starts_with("event: snapshot\ndata: {"), "{first}");
    assert!(first.contains(&id));

    let r = send(
        &app,
        bearer(change("POST", &format!("/api/jobs/{id}/cancel")))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body_json(r).await["state"], json!("canceled"));
    // ...which the stream reports, then ends.
    let mut rest = String::new();
    while let Some(chunk) = stream.next().await {
        rest.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(
        rest.contains("event: job\n") && rest.contains(r#""state":"canceled""#),
        "{rest}"
    );

    // The uploaded image comes back as an image, named safely when asked to.
    let sha = content["sha256"].as_str().unwrap();
    let r = send(
        &app,
        bearer(get(&format!("/api/blobs/{sha}?name=../a%20b.png")))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "image/png");
    assert_eq!(
        r.headers()[header::CONTENT_DISPOSITION],
        "attachment; filename=\"..ab.png\""
    );
    assert_eq!(body_bytes(r).await, png(32, 24));
}

#[tokio::test]
async fn every_size_a_request_chooses_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path(), None);
    // test_api's blobs are at most 1 MiB.
    let r = send(
        &app,
        change("POST", "/api/blobs")
            .body(Body::from(vec![0u8; (1 << 20) + 1]))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let big = json!({ "content": [], "styles": [], "name": "x".repeat(70 * 1024) });
    let r = send(&app, with_json(change("POST", "/api/plan"), &big)).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let blob = json!({ "sha256": "0".repeat(64), "size": 1 });
    let many = json!({ "content": [blob], "styles": vec![blob.clone(); 17] });
    let r = send(&app, with_json(change("POST", "/api/plan"), &many)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        body_json(r).await["error"],
        json!("17 style images given, at most 16 in one job")
    );
    let r = send(
        &app,
        get("/api/blobs/not-a-hash").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = send(
        &app,
        change("POST", "/api/session")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({ "token": "t".repeat(5000) }).to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}
