//! Requests to an `http(s)://` side, shared by its snapshot (src/connect/http.rs) and its
//! writeback (src/writeback/http.rs): timeouts, a response size limit, a rate limit, retries, and
//! redirects that never carry credentials elsewhere.
//!
//! - **Retries** with jittered exponential backoff (base 200 ms, at most 10 s): after a failed
//!   connection (nothing was sent) and a `429` (honouring `Retry-After`, at most 60 s) for every
//!   request; after a timeout, a `408` or a `5xx` only for requests that cannot create a record
//!   twice (every method but POST, unless a template says `idempotent`; listings always). A POST
//!   whose answer was lost is not repeated: the next run's diff sees whether it landed.
//! - **Redirects** are followed by hand (at most 5): the configured headers go only to the url's
//!   own origin (scheme, host, port), and https → http is refused. reqwest's own policy drops
//!   only standard credentials on a cross-host hop, and none on a same-host https→http one.
//! - **Secrets**: urls are shown redacted, header values never.

pub mod template;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};

use crate::config::{Endpoint, HttpOptions, redact};
use crate::error::{Error, Result, Side};

/// Longest wait a `Retry-After` may ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
const MAX_REDIRECTS: usize = 5;

/// A client for one side's API.
pub struct Client {
    http: reqwest::Client,
    pub side: Side,
    pub base: Url,
    pub options: HttpOptions,
    headers: HeaderMap,
    limiter: Option<Limiter>,
}

/// A response read whole (within `max_body`).
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub url: Url,
    pub body: bytes::Bytes,
}

/// Why a request did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// The API refused this request (a 4xx, or an error reported in the body): the record
    /// concerned fails alone.
    Refused(String),
    /// The answer was lost after the request was sent, and repeating it could create a second
    /// record: the record fails for this run.
    Unknown(String),
    /// The API cannot be used (unreachable, server errors after retries, a refused redirect).
    Fatal(Error),
}

impl Client {
    pub fn new(endpoint: &Endpoint, url: &str) -> Result<Client> {
        // rustls's ring provider, as sqlx uses (two providers make rustls panic); a second
        // install is refused harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let side = endpoint.side;
        let options = endpoint.http.clone().unwrap_or_default();
        let bad = |message: String| Error::Http {
            side,
            endpoint: redact(url),
            message,
        };
        let base = Url::parse(url).map_err(|e| bad(format!("not a valid url: {e}")))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &options.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| bad(format!("`{name}` is not a valid header name")))?;
            let mut value = HeaderValue::from_str(value).map_err(|_| {
                bad(format!(
                    "the value of header `{name}` is not valid header text"
                ))
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(options.timeout)
            .connect_timeout(options.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("recon/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| bad(format!("cannot start an HTTP client: {e}")))?;
        let limiter = options.rate_limit.map(Limiter::new);
        Ok(Client {
            http,
            side,
            base,
            options,
            headers,
            limiter,
        })
    }

    /// The endpoint for messages (redacted).
    pub fn endpoint(&self) -> String {
        redact(self.base.as_str())
    }

    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::Http {
            side: self.side,
            endpoint: self.endpoint(),
            message: message.into(),
        }
    }

    /// `base` + `path` (a path starting with `/` or empty extends the url's path; a full url is
    /// taken as it is).
    pub fn url(&self, path: &str) -> Result<Url> {
        if path.starts_with("http://") || path.starts_with("https://") {
            return Url::parse(path)
                .map_err(|e| self.error(format!("`{}` is not a valid url: {e}", redact(path))));
        }
        let mut url = self.base.clone();
        if !path.is_empty() {
            let joined = format!("{}{}", url.path().trim_end_matches('/'), path);
            url.set_path(&joined);
        }
        Ok(url)
    }

    /// Send a request, with the retries, redirects and limits above. A status ≥ 400 after retries
    /// is `Refused` for a 4xx and `Fatal` otherwise, the API's message included.
    pub async fn send(
        &self,
        method: &str,
        url: Url,
        body: Option<String>,
        idempotent: bool,
    ) -> Result<Response, Failure> {
        let mut attempt = 0u32;
        loop {
            let outcome = self.follow(method, url.clone(), body.clone()).await;
            let retry = match &outcome {
                Ok(r) if r.status == StatusCode::TOO_MANY_REQUESTS => {
                    Some(retry_after(&r.headers).unwrap_or_else(|| backoff(attempt)))
                }
                Ok(r)
                    if (r.status.is_server_error() || r.status == StatusCode::REQUEST_TIMEOUT)
                        && idempotent =>
                {
                    Some(retry_after(&r.headers).unwrap_or_else(|| backoff(attempt)))
                }
                Err(Attempt::NotSent(_)) => Some(backoff(attempt)),
                Err(Attempt::Lost(_)) if idempotent => Some(backoff(attempt)),
                _ => None,
            };
            match retry {
                Some(wait) if attempt < self.options.retries => {
                    tracing::debug!(endpoint = %self.endpoint(), attempt, ?wait, "retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => return self.settle(outcome),
            }
        }
    }

    fn settle(&self, outcome: Result<Response, Attempt>) -> Result<Response, Failure> {
        match outcome {
            Ok(r) if r.status.is_success() => match self.reported_error(&r.body) {
                Some(message) => Err(Failure::Refused(message)),
                None => Ok(r),
            },
            Ok(r) => {
                let message = format!("{} {}", r.status, api_message(&r.body));
                match r.status.is_client_error() && r.status != StatusCode::TOO_MANY_REQUESTS {
                    true => Err(Failure::Refused(message.trim().to_string())),
                    false => Err(Failure::Fatal(self.error(message.trim().to_string()))),
                }
            }
            Err(Attempt::NotSent(m)) => Err(Failure::Fatal(self.error(m))),
            Err(Attempt::Lost(m)) => Err(Failure::Unknown(m)),
            Err(Attempt::Fatal(e)) => Err(Failure::Fatal(e)),
        }
    }

    /// An error the API reports in a success response (GraphQL's `errors`, JSON-RPC's `error`).
    fn reported_error(&self, body: &[u8]) -> Option<String> {
        if self.options.errors.is_empty() {
            return None;
        }
        let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
        let found = doc.pointer(&self.options.errors)?;
        let empty = match found {
            serde_json::Value::Null => true,
            serde_json::Value::Array(a) => a.is_empty(),
            serde_json::Value::Object(o) => o.is_empty(),
            _ => false,
        };
        (!empty).then(|| first_message(found))
    }

    /// One attempt, following redirects.
    async fn follow(
        &self,
        method: &str,
        mut url: Url,
        body: Option<String>,
    ) -> Result<Response, Attempt> {
        let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
        for _ in 0..=MAX_REDIRECTS {
            if let Some(l) = &self.limiter {
                l.wait().await;
            }
            let mut request = self.http.request(method.clone(), url.clone());
            if same_origin(&url, &self.base) {
                request = request.headers(self.headers.clone());
            }
            if let Some(b) = &body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            let response = request
                .send()
                .await
                .map_err(|e| self.attempt_error(&url, e))?;
            let status = response.status();
            if status.is_redirection()
                && let Some(to) = response.headers().get(reqwest::header::LOCATION)
            {
                let to = to
                    .to_str()
                    .ok()
                    .and_then(|t| url.join(t).ok())
                    .ok_or_else(|| {
                        Attempt::Fatal(self.error("a redirect without a valid Location"))
                    })?;
                if let Some(refusal) = redirect_refusal(&url, &to, &method) {
                    return Err(Attempt::Fatal(self.error(refusal)));
                }
                url = to;
                continue;
            }
            let headers = response.headers().clone();
            let body = self.read_body(&url, response).await?;
            return Ok(Response {
                status,
                headers,
                url,
                body,
            });
        }
        Err(Attempt::Fatal(
            self.error(format!("more than {MAX_REDIRECTS} redirects")),
        ))
    }

    async fn read_body(
        &self,
        url: &Url,
        mut response: reqwest::Response,
    ) -> Result<bytes::Bytes, Attempt> {
        let limit = self.options.max_body;
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(Attempt::Fatal(self.too_large(url)));
        }
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.attempt_error(url, e))?
        {
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(Attempt::Fatal(self.too_large(url)));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    fn too_large(&self, url: &Url) -> Error {
        self.error(format!(
            "the response to `{}` is larger than max_body ({} bytes); raise `max_body` or ask for smaller pages",
            redact(url.as_str()),
            self.options.max_body
        ))
    }

    fn attempt_error(&self, url: &Url, e: reqwest::Error) -> Attempt {
        let what = if e.is_timeout() {
            format!("no complete answer within {:?}", self.options.timeout)
        } else if e.is_connect() {
            "cannot connect".to_string()
        } else {
            "the connection failed".to_string()
        };
        // reqwest's own message carries the url: show ours, redacted, and the innermost cause
        // (a refused connection, a certificate that does not verify), which carries none.
        let mut cause = String::new();
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            cause = inner.to_string();
            source = inner.source();
        }
        let message = match cause.is_empty() {
            true => format!("{what} (`{}`)", redact(url.as_str())),
            false => format!("{what} (`{}`): {}", redact(url.as_str()), redact(&cause)),
        };
        if e.is_connect() {
            Attempt::NotSent(message)
        } else {
            Attempt::Lost(message)
        }
    }
}

enum Attempt {
    /// Nothing reached the server: always safe to repeat.
    NotSent(String),
    /// The request may have reached the server; its answer was lost.
    Lost(String),
    Fatal(Error),
}

/// Why a redirect from `from` to `to` is not followed: a downgrade from https, or a request
/// other than a listing's GET (a write is never re-sent elsewhere).
fn redirect_refusal(from: &Url, to: &Url, method: &Method) -> Option<String> {
    if from.scheme() == "https" && to.scheme() != "https" {
        return Some(format!(
            "refusing a redirect from https to `{}`",
            redact(to.as_str())
        ));
    }
    (method != Method::GET).then(|| {
        format!(
            "the API answered {method} with a redirect to `{}`; point the url or path at the final location",
            redact(to.as_str())
        )
    })
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

fn backoff(attempt: u32) -> Duration {
    let base = 200u64.saturating_mul(1 << attempt.min(6)).min(10_000);
    // Jitter: between half and the whole of the step, from the clock's nanoseconds.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    Duration::from_millis(base / 2 + nanos % (base / 2 + 1))
}

/// `Retry-After` in seconds (or an HTTP date), at most [`MAX_RETRY_AFTER`].
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let wait = match text.parse::<f64>() {
        Ok(s) if s >= 0.0 => Duration::try_from_secs_f64(s).ok()?,
        _ => {
            let at = chrono::DateTime::parse_from_rfc2822(text).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The API's own message from an error body: `message`, `error`, `detail` or the first error of
/// an `errors` list; else the start of the body.
pub fn api_message(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(doc) => first_message(&doc),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            text.chars().take(200).collect()
        }
    }
}

fn first_message(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.first().map(first_message).unwrap_or_default(),
        Value::Object(o) => {
            let mut message = ["message", "error", "detail", "errors", "msg"]
                .iter()
                .find_map(|k| o.get(*k).map(first_message))
                .unwrap_or_else(|| v.to_string());
            // PocketBase puts the field-level reasons under `data`.
            if let Some(Value::Object(data)) = o.get("data")
                && !data.is_empty()
            {
                message = format!("{message} {}", Value::Object(data.clone()));
            }
            message.chars().take(500).collect()
        }
        other => other.to_string(),
    }
}

/// Spaces requests at most `rate` a second, over every task of the run.
struct Limiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Limiter {
    fn new(rate: f64) -> Limiter {
        Limiter {
            interval: Duration::from_secs_f64(1.0 / rate),
            next: Mutex::new(Instant::now()),
        }
    }

    async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_and_capped() {
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("86400"),
        );
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn api_messages_are_found_where_apis_put_them() {
        let pocketbase = br#"{"message":"Failed to create record.","data":{"qty":{"code":"validation_min_greater_equal_than_required","message":"Must be larger than 0."}}}"#;
        assert!(api_message(pocketbase).starts_with("Failed to create record. {\"qty\""));
        assert_eq!(
            api_message(br#"{"errors":[{"message":"bad id"}]}"#),
            "bad id"
        );
        assert_eq!(
            api_message(b"<html><body>Bad Gateway</body></html>"),
            "<html><body>Bad Gateway</body></html>"
        );
    }

    #[test]
    fn redirects_never_downgrade_and_never_move_a_write() {
        let u = |s: &str| Url::parse(s).unwrap();
        let refusal = redirect_refusal(
            &u("https://api.test/a"),
            &u("http://api.test/a?token=x"),
            &Method::GET,
        );
        assert_eq!(
            refusal.as_deref(),
            Some("refusing a redirect from https to `http://api.test/a?token=***`")
        );
        assert!(
            redirect_refusal(&u("http://a.test/"), &u("https://b.test/"), &Method::GET).is_none()
        );
        assert!(
            redirect_refusal(&u("https://a.test/"), &u("https://a.test/b"), &Method::POST)
                .is_some()
        );
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(same_origin(
            &u("http://127.0.0.1:8090/a"),
            &u("http://127.0.0.1:8090/b?x=1")
        ));
        assert!(!same_origin(
            &u("http://127.0.0.1:8090/a"),
            &u("http://127.0.0.1:8091/a")
        ));
        assert!(!same_origin(&u("https://h/a"), &u("http://h/a")));
        assert!(same_origin(&u("https://h/a"), &u("https://h:443/a")));
    }
}
