//! Who may read and steer the farm from a browser: the farm's client token, sent once to the
//! login and then carried by an HttpOnly, SameSite=Strict session cookie (or sent as
//! `Authorization: Bearer` by scripts), and the checks that keep other sites from making a
//! signed-in browser act.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::api::ApiError;
use super::Web;

/// The session cookie's name.
const COOKIE: &str = "stylefarm_session";
/// How long a login lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at once; a new login past it ends the oldest.
const MAX_SESSIONS: usize = 1024;
/// The longest token accepted at the login, in bytes.
const MAX_TOKEN_BYTES: usize = 4096;
/// The header every mutation must carry: a cross-site form cannot set it.
pub(super) const CSRF_HEADER: &str = "x-stylefarm";

/// The logged-in browsers: random session ids and when each ends.
#[derive(Default)]
pub(super) struct Sessions {
    ends: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    /// A new session; the oldest goes when there are too many.
    fn create(&self) -> String {
        let id = hex::encode(rand::random::<[u8; 32]>());
        let now = Instant::now();
        let mut ends = self.ends.lock().unwrap_or_else(|e| e.into_inner());
        ends.retain(|_, end| *end > now);
        if ends.len() >= MAX_SESSIONS {
            if let Some(oldest) = ends.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) {
                ends.remove(&oldest);
            }
        }
        ends.insert(id.clone(), now + SESSION_LIFETIME);
        id
    }

    fn is_valid(&self, id: &str) -> bool {
        let ends = self.ends.lock().unwrap_or_else(|e| e.into_inner());
        ends.get(id).is_some_and(|end| *end > Instant::now())
    }

    fn end(&self, id: &str) {
        let mut ends = self.ends.lock().unwrap_or_else(|e| e.into_inner());
        ends.remove(id);
    }
}

/// The session id the request's cookie carries.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// Whether the request carries the farm's client token or a live session (always, when the
/// farm has no token).
fn signed_in(web: &Web, headers: &HeaderMap) -> bool {
    let auth = &web.http.client_auth;
    auth.is_open()
        || (headers.contains_key(header::AUTHORIZATION)
            && auth.accepts(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())))
        || session_cookie(headers).is_some_and(|id| web.sessions.is_valid(id))
}

/// Refuses a request that is not signed in.
pub(super) fn authorize(web: &Web, headers: &HeaderMap) -> Result<(), ApiError> {
    if signed_in(web, headers) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this farm needs its token: sign in first",
        ))
    }
}

/// Refuses a mutation that another site may have caused: it must carry [`CSRF_HEADER`], and
/// neither `Sec-Fetch-Site` nor `Origin` may name another site.
pub(super) fn same_site(headers: &HeaderMap) -> Result<(), ApiError> {
    let refuse = |why: &str| Err(ApiError::new(StatusCode::FORBIDDEN, why));
    if headers.get(CSRF_HEADER).is_none_or(|v| v != "1") {
        return refuse("a change must carry the X-Stylefarm: 1 header");
    }
    // Every value counts: a request with two says nothing trustworthy with either.
    let other_site = headers
        .get_all("sec-fetch-site")
        .iter()
        .any(|site| site != "same-origin" && site != "none");
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let other_origin = headers.get_all(header::ORIGIN).iter().any(|origin| {
        let origin = origin.to_str().ok();
        let same = match (origin, host) {
            (Some(o), Some(h)) => {
                o.strip_prefix("http://")
                    .or_else(|| o.strip_prefix("https://"))
                    == Some(h)
            }
            _ => false,
        };
        !same
    });
    if other_site || other_origin {
        return refuse("a change must come from the farm's own page");
    }
    Ok(())
}

/// `GET /api/session`: whether the farm wants a token and whether this browser is in.
pub(super) async fn session(State(web): State<Web>, headers: HeaderMap) -> Response {
    Json(serde_json::json!({
        "token_required": !web.http.client_auth.is_open(),
        "signed_in": signed_in(&web, &headers),
    }))
    .into_response()
}

/// The login's body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Login {
    token: String,
}

/// `POST /api/session {"token": ...}`: checks the token once and sets the session cookie.
pub(super) async fn login(
    State(web): State<Web>,
    headers: HeaderMap,
    Json(login): Json<Login>,
) -> Result<Response, ApiError> {
    same_site(&headers)?;
    let token = login.token.trim();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("a token is at most {MAX_TOKEN_BYTES} bytes"),
        ));
    }
    let bearer = format!("Bearer {token}");
    if !web.http.client_auth.accepts(Some(bearer.as_bytes())) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "that is not this farm's token",
        ));
    }
    let id = web.sessions.create();
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    );
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response())
}

/// `DELETE /api/session`: ends this browser's session.
pub(super) async fn logout(
    State(web): State<Web>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    same_site(&headers)?;
    if let Some(id) = session_cookie(&headers) {
        web.sessions.end(id);
    }
    let gone = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, gone)]).into_response())
}
