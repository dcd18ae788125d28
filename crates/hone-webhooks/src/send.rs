//! One attempt: the signed POST of an event to an endpoint, with the limits a server
//! that sends requests to URLs its users chose needs: timeouts on connecting and on
//! the whole exchange, no redirects (a 3xx is a failed attempt, not a new target), no
//! proxy from the environment, the target's addresses checked by the resolver (and an
//! address written in the URL checked here), and the response read only up to a cap.

use std::time::{Duration, Instant};

use hone_domain::webhook::{parse_endpoint_url, signature_header, TargetPolicy};
use hone_store::webhook_outbox::{AttemptResult, ClaimedDelivery};

use crate::target::CheckedResolver;

/// Bytes of a response read at most; the rest is not waited for.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Bytes of a response kept in the delivery log.
const LOGGED_RESPONSE_BYTES: usize = 1024;

/// Sends attempts; cheap to clone (one connection pool).
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    policy: TargetPolicy,
}

/// The limits of every attempt.
#[derive(Clone, Copy, Debug)]
pub struct SendLimits {
    pub connect_timeout: Duration,
    /// The whole exchange, connecting and reading the response included.
    pub timeout: Duration,
}

impl Sender {
    pub fn new(policy: TargetPolicy, limits: SendLimits) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("hone-webhooks/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .https_only(!policy.allow_http)
            .dns_resolver(std::sync::Arc::new(CheckedResolver(policy)))
            .connect_timeout(limits.connect_timeout)
            .timeout(limits.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self { client, policy })
    }

    /// Makes one attempt of `d`, signed now; what it got, never an error.
    pub async fn send(&self, d: &ClaimedDelivery) -> AttemptResult {
        let started = Instant::now();
        let failed = |error: String| AttemptResult {
            succeeded: false,
            status_code: None,
            latency_ms: elapsed_ms(started),
            error: Some(error),
            response_body: None,
        };
        // The URL was checked when it was stored; the server's policy may have changed
        // since, and an address written in the URL never meets the resolver.
        if let Err(e) = parse_endpoint_url(&d.url, self.policy) {
            return failed(e.message);
        }
        let body = match serde_json::to_vec(&d.event) {
            Ok(b) => b,
            Err(e) => return failed(format!("cannot serialise the event: {e}")),
        };
        let timestamp = unix_now();
        let secrets: Vec<_> = d.secrets.iter().collect();
        let signature = signature_header(&secrets, &d.event.id, timestamp, &body);
        let request = self
            .client
            .post(&d.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &d.event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body);
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => return failed(describe(&e)),
        };
        let status = response.status();
        let mut read = Vec::new();
        let mut read_error = None;
        while read.len() < MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => {
                    read_error = Some(describe(&e));
                    break;
                }
            }
        }
        read.truncate(LOGGED_RESPONSE_BYTES);
        let body = (!read.is_empty()).then(|| String::from_utf8_lossy(&read).into_owned());
        let succeeded = status.is_success();
        let error = if succeeded {
            None
        } else if status.is_redirection() {
            let to = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .unwrap_or("?");
            Some(format!(
                "HTTP {status}: redirects are not followed (to {to})"
            ))
        } else {
            Some(format!("HTTP {status}"))
        };
        AttemptResult {
            succeeded,
            status_code: Some(i32::from(status.as_u16())),
            latency_ms: elapsed_ms(started),
            // A receiver that answered 2xx has the event even if its body broke off.
            error: error.or(read_error.filter(|_| !succeeded)),
            response_body: body,
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn elapsed_ms(started: Instant) -> i64 {
    i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX)
}

/// A request error with its causes (reqwest's own message is often just "error
/// sending request"; the resolver's refusal is a cause).
fn describe(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::{HeaderMap, StatusCode};
    use hone_domain::webhook::{
        forbidden_address, sign, WebhookEvent, WebhookEventData, WebhookEventType, WebhookSecret,
    };

    use super::*;

    const LOOPBACK: TargetPolicy = TargetPolicy {
        allow_http: true,
        allow_private: true,
    };
    const LIMITS: SendLimits = SendLimits {
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_millis(500),
    };

    type Seen = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

    /// A loopback server whose `/ok`, `/moved`, `/slow` and `/big` answer as named.
    async fn server() -> (String, Seen) {
        let seen: Seen = Arc::default();
        let keep = seen.clone();
        let app = axum::Router::new()
            .route(
                "/ok",
                axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                    let keep = keep.clone();
                    async move {
                        keep.lock().expect("seen").push((headers, body.to_vec()));
                        "thanks"
                    }
                }),
            )
            .route(
                "/moved",
                axum::routing::post(|| async {
                    (
                        StatusCode::MOVED_PERMANENTLY,
                        [("location", "http://10.0.0.1/")],
                    )
                }),
            )
            .route(
                "/slow",
                axum::routing::post(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route(
                "/big",
                axum::routing::post(|| async { (StatusCode::BAD_GATEWAY, "x".repeat(1 << 20)) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        (format!("http://{addr}"), seen)
    }

    fn delivery(url: String, secret: &WebhookSecret) -> ClaimedDelivery {
        ClaimedDelivery {
            id: "whdel-1".into(),
            attempt: 1,
            endpoint_id: "wh-1".into(),
            url,
            secrets: vec![secret.clone()],
            event: WebhookEvent {
                id: "evt-1".into(),
                object: "event",
                kind: WebhookEventType::JobSucceeded,
                created_at: 1,
                data: WebhookEventData {
                    id: "ftjob-1".into(),
                },
            },
        }
    }

    #[tokio::test]
    async fn an_attempt_is_signed_and_a_2xx_succeeds() {
        let (base, seen) = server().await;
        let secret = WebhookSecret::generate();
        let sender = Sender::new(LOOPBACK, LIMITS).expect("client");
        let r = sender.send(&delivery(format!("{base}/ok"), &secret)).await;
        assert!(r.succeeded, "{r:?}");
        assert_eq!(r.status_code, Some(200));
        assert_eq!(r.response_body.as_deref(), Some("thanks"));
        let seen = seen.lock().expect("seen");
        let (headers, body) = &seen[0];
        let header = |n: &str| headers[n].to_str().expect("ascii").to_owned();
        assert_eq!(header("webhook-id"), "evt-1");
        let timestamp: i64 = header("webhook-timestamp").parse().expect("unix seconds");
        assert!((timestamp - unix_now()).abs() < 60);
        assert_eq!(
            header("webhook-signature"),
            sign(&secret, "evt-1", timestamp, body)
        );
        assert_eq!(header("content-type"), "application/json");
    }

    #[tokio::test]
    async fn redirects_timeouts_and_big_answers_fail_within_bounds() {
        let (base, _) = server().await;
        let secret = WebhookSecret::generate();
        let sender = Sender::new(LOOPBACK, LIMITS).expect("client");

        let r = sender
            .send(&delivery(format!("{base}/moved"), &secret))
            .await;
        assert!(!r.succeeded);
        assert_eq!(r.status_code, Some(301));
        assert!(
            r.error
                .as_deref()
                .is_some_and(|e| e.contains("redirects are not followed")),
            "{r:?}"
        );

        let r = sender
            .send(&delivery(format!("{base}/slow"), &secret))
            .await;
        assert!(!r.succeeded && r.status_code.is_none(), "{r:?}");
        assert!(
            r.error.as_deref().is_some_and(|e| e.contains("timed out")),
            "{r:?}"
        );
        assert!(r.latency_ms < 2000, "{r:?}");

        let r = sender.send(&delivery(format!("{base}/big"), &secret)).await;
        assert_eq!(r.status_code, Some(502));
        assert_eq!(
            r.response_body.map(|b| b.len()),
            Some(LOGGED_RESPONSE_BYTES)
        );
    }

    #[tokio::test]
    async fn private_targets_are_refused_at_send_time_too() {
        let (base, seen) = server().await;
        let secret = WebhookSecret::generate();
        let strict = TargetPolicy {
            allow_http: true,
            allow_private: false,
        };
        let sender = Sender::new(strict, LIMITS).expect("client");
        // An address in the URL; and a name, checked by the client's resolver: the
        // machine's own name, which resolves to a loopback or private address on any
        // usual host (`localhost` itself is refused before resolving).
        let mut urls = vec![format!("{base}/ok")];
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host = host.trim();
        let own = crate::target::resolve_checked(host, 80, LOOPBACK).await;
        if own.is_ok_and(|a| a.iter().all(|a| forbidden_address(a.ip()).is_some())) {
            urls.push(format!("{}/ok", base.replace("127.0.0.1", host)));
        } else {
            eprintln!("{host:?} does not resolve to a private address here; name not checked");
        }
        for url in urls {
            let r = sender.send(&delivery(url.clone(), &secret)).await;
            assert!(!r.succeeded && r.status_code.is_none(), "{url}: {r:?}");
            assert!(
                r.error
                    .as_deref()
                    .is_some_and(|e| e.contains("webhook_allow_private_targets")),
                "{url}: {r:?}"
            );
        }
        assert!(seen.lock().expect("seen").is_empty());
    }
}
