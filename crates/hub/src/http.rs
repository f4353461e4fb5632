//! The HTTP client every Hub call goes through: one place decides where the token goes (only to
//! URLs on the configured endpoint, never to the storage a Hub response points at), which
//! failures are retried (5xx, 429, refused, reset or broken connections; with exponential
//! backoff), and how statuses become errors (401/403 name the token, 404 says not found).

use std::path::Path;
use std::time::Duration;

use ureq::Agent;
use ureq::http::{Request, Response};

use crate::config::{HubConfig, RetryPolicy};
use crate::error::{HubError, Result, io};
use crate::token::Token;

/// A request body; files are re-opened on each attempt so that a retry sends them whole again.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Body<'a> {
    /// Bytes in memory.
    Bytes(&'a [u8]),
    /// A file, sent with its length as Content-Length (S3-style storage refuses chunked uploads).
    File(&'a Path),
}

/// What one attempt produced, for the retry loop.
pub(crate) enum Attempt<T> {
    /// Worth another try (5xx, 429, a broken connection).
    Transient(HubError),
    /// Final.
    Fatal(HubError),
    /// Success.
    Done(T),
}

impl<T> Attempt<T> {
    /// Maps the success value.
    pub(crate) fn map_done<U>(self, f: impl FnOnce(T) -> U) -> Attempt<U> {
        match self {
            Attempt::Done(t) => Attempt::Done(f(t)),
            Attempt::Transient(e) => Attempt::Transient(e),
            Attempt::Fatal(e) => Attempt::Fatal(e),
        }
    }
}

/// The Hub client.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    agent: Agent,
    /// The endpoint's base URL, without a trailing slash.
    pub endpoint: String,
    origin: String,
    token: Option<Token>,
    retry: RetryPolicy,
}

impl Client {
    /// A client for `config`'s endpoint. Redirects are not followed automatically: the callers
    /// follow them by hand so that the token never travels to another host.
    pub fn new(config: &HubConfig) -> Client {
        let agent: Agent = Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .user_agent(concat!("lora-hub/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            agent,
            endpoint: config.endpoint.clone(),
            origin: origin(&config.endpoint),
            token: config.token.clone(),
            retry: config.retry,
        }
    }

    /// Whether a token is configured.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `url` is on the configured endpoint (and so may receive the token).
    pub fn is_endpoint(&self, url: &str) -> bool {
        origin(url) == self.origin
    }

    /// One request, without retries; the token is attached only for endpoint URLs. Transport
    /// failures come back as `Transient`.
    pub fn attempt(
        &self,
        method: &'static str,
        url: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> Attempt<Response<ureq::Body>> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if let (Some(token), true) = (&self.token, self.is_endpoint(url)) {
            b = b.header("Authorization", token.bearer());
        }
        let sent = match body {
            Body::Bytes(bytes) => b.body(bytes).map(|r| self.agent.run(r)),
            Body::File(path) => match std::fs::File::open(path) {
                Ok(f) => b.body(f).map(|r| self.agent.run(r)),
                Err(e) => return Attempt::Fatal(io(path)(e)),
            },
        };
        match sent {
            Err(e) => Attempt::Fatal(HubError::Protocol { url: url.into(), message: format!("bad request: {e}") }),
            Ok(Err(e)) if is_transient(&e) => {
                Attempt::Transient(HubError::Connection { method, url: url.into(), attempts: 1, error: e.to_string() })
            }
            Ok(Err(e)) => {
                Attempt::Fatal(HubError::Connection { method, url: url.into(), attempts: 1, error: e.to_string() })
            }
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                if status == 429 || status >= 500 {
                    Attempt::Transient(status_error(method, url, resp, self.has_token()))
                } else {
                    Attempt::Done(resp)
                }
            }
        }
    }

    /// A request with retries of transient failures; any status below 500 (but 429) is returned
    /// as it is, for the caller to judge (`expect`).
    pub fn send(
        &self,
        method: &'static str,
        url: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> Result<Response<ureq::Body>> {
        self.retry(|| self.attempt(method, url, headers, body))
    }

    /// Runs `f` until it succeeds, fails for good, or the attempts run out.
    pub fn retry<T>(&self, mut f: impl FnMut() -> Attempt<T>) -> Result<T> {
        let attempts = self.retry.attempts.max(1);
        let mut n = 1;
        loop {
            match f() {
                Attempt::Done(t) => return Ok(t),
                Attempt::Fatal(e) => return Err(e),
                Attempt::Transient(e) if n >= attempts => {
                    return Err(match e {
                        HubError::Connection { method, url, error, .. } => {
                            HubError::Connection { method, url, attempts: n, error }
                        }
                        other => other,
                    });
                }
                Attempt::Transient(_) => {
                    std::thread::sleep(self.retry.delay(n));
                    n += 1;
                }
            }
        }
    }

    /// The JSON body of a 2xx response, or the error its status means.
    pub fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: &'static str,
        url: &str,
        resp: Response<ureq::Body>,
    ) -> Result<T> {
        let mut resp = self.expect(method, url, resp, &[])?;
        let bytes = read_all(url, &mut resp)?;
        serde_json::from_slice(&bytes).map_err(|e| HubError::Protocol { url: url.into(), message: e.to_string() })
    }

    /// Passes 2xx responses (and the statuses in `also`); turns the rest into errors.
    pub fn expect(
        &self,
        method: &'static str,
        url: &str,
        resp: Response<ureq::Body>,
        also: &[u16],
    ) -> Result<Response<ureq::Body>> {
        let status = resp.status().as_u16();
        if (200..300).contains(&status) || also.contains(&status) {
            Ok(resp)
        } else {
            Err(status_error(method, url, resp, self.has_token()))
        }
    }
}

/// Reads a whole (small, JSON) response body.
pub(crate) fn read_all(url: &str, resp: &mut Response<ureq::Body>) -> Result<Vec<u8>> {
    resp.body_mut()
        .with_config()
        .limit(256 << 20)
        .read_to_vec()
        .map_err(|e| HubError::Protocol { url: url.into(), message: format!("reading the response: {e}") })
}

/// The error a non-success status means.
fn status_error(method: &'static str, url: &str, mut resp: Response<ureq::Body>, has_token: bool) -> HubError {
    let status = resp.status().as_u16();
    let body = resp.body_mut().with_config().limit(64 << 10).read_to_string().unwrap_or_default();
    let body = message_of(&body);
    match status {
        401 | 403 => HubError::Unauthorized { method, url: url.into(), status, has_token },
        404 => HubError::NotFound { method, url: url.into(), body },
        _ => HubError::Status { method, url: url.into(), status, body },
    }
}

/// The Hub's `{"error": "..."}` message, else the body itself, on one line and short.
fn message_of(body: &str) -> String {
    let msg = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str().map(str::to_string)))
        .unwrap_or_else(|| body.to_string());
    one_line(&msg)
}

/// A server message on one line, cut at 300 characters.
pub(crate) fn one_line(msg: &str) -> String {
    let line = msg.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > 300 { line.chars().take(300).collect::<String>() + "..." } else { line }
}

/// Failures worth retrying: the connection was refused, reset, timed out or closed early.
fn is_transient(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Timeout(_)
            | ureq::Error::Protocol(_)
            | ureq::Error::BodyStalled
    )
}

/// `scheme://host:port` of a URL, lower-cased, with the default port made explicit.
fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // Drop any userinfo: it is not part of the origin.
    let authority = authority.rsplit('@').next().unwrap_or(authority).to_ascii_lowercase();
    let scheme = scheme.to_ascii_lowercase();
    let has_port =
        authority.rsplit_once(':').is_some_and(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty());
    if has_port {
        format!("{scheme}://{authority}")
    } else {
        let port = if scheme == "https" { 443 } else { 80 };
        format!("{scheme}://{authority}:{port}")
    }
}

/// Percent-encodes a revision for a URL path segment (`refs/pr/1` → `refs%2Fpr%2F1`).
pub(crate) fn encode_revision(rev: &str) -> String {
    let mut out = String::new();
    for b in rev.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        assert_eq!(origin("https://huggingface.co/api/x"), "https://huggingface.co:443");
        assert_eq!(origin("https://huggingface.co:443"), origin("HTTPS://HuggingFace.co/"));
        assert_ne!(origin("http://127.0.0.1:1234/a"), origin("http://127.0.0.1:1235/a"));
        assert_ne!(origin("https://huggingface.co"), origin("https://cdn-lfs.huggingface.co/x"));
        assert_eq!(origin("http://user@127.0.0.1:9/x"), "http://127.0.0.1:9");
    }

    #[test]
    fn revisions_are_percent_encoded() {
        assert_eq!(encode_revision("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_revision("v1.0-rc_2"), "v1.0-rc_2");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let r =
            RetryPolicy { attempts: 9, base_delay: Duration::from_millis(100), max_delay: Duration::from_millis(350) };
        let d: Vec<u128> = (1..=4).map(|n| r.delay(n).as_millis()).collect();
        assert_eq!(d, [100, 200, 350, 350]);
    }
}
