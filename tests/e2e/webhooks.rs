//! Webhooks end to end: the real server, a real receiver on loopback, and the Standard
//! Webhooks project's own verifier (PyPI `standardwebhooks`) checking every signature.
//! Each terminal event arrives once per attempt, a receiver that fails twice still gets
//! it on the third, the delivery log says what each attempt got, redelivery and secret
//! rotation work as documented, another project sees nothing, bad endpoints are refused
//! by field, and a process killed while an attempt is in flight still delivers after a
//! restart.

use std::time::Duration;

use serde_json::{json, Value};

use crate::receiver::{count, verify, Answer, Receiver, Request};
use crate::support::{jsonl, two_class_rows, TestServer};

const SUCCEEDED: &str = "fine_tuning.job.succeeded";
const FAILED: &str = "fine_tuning.job.failed";
const CANCELLED: &str = "fine_tuning.job.cancelled";

/// The receiver is on loopback over http, which the server refuses by default; retries
/// start after 300 ms instead of 5 s so the test waits seconds, not minutes.
const ENV: &[(&str, &str)] = &[
    ("HONE_WEBHOOK_ALLOW_HTTP", "true"),
    ("HONE_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true"),
    ("HONE_WEBHOOK_RETRY_FIRST_DELAY_MS", "300"),
    ("HONE_DEVICE", "cpu"),
];

/// The cheapest job: a linear head on frozen features, one epoch.
fn job_request(file: &Value) -> Value {
    json!({"base_model": "all-MiniLM-L6-v2", "training_file": file["id"],
           "method": {"type": "feature_extraction"},
           "hyperparameters": {"epochs": 1, "max_seq_len": 16}})
}

async fn upload(s: &TestServer) -> Value {
    let rows = two_class_rows(40, &["a great film"], &["an awful film"]);
    let (status, file) = s.upload("t.jsonl", jsonl(&rows)).await;
    assert_eq!(status, 200, "{file}");
    file
}

async fn create_webhook(s: &TestServer, url: &str, events: &[&str]) -> Value {
    let (status, hook) = s
        .post_json(
            "/v1/webhooks",
            &json!({"url": url, "events": events, "description": "e2e"}),
        )
        .await;
    assert_eq!(status, 200, "{hook}");
    hook
}

async fn deliveries(s: &TestServer, hook: &str) -> Vec<Value> {
    let (status, page) = s.get(&format!("/v1/webhooks/{hook}/deliveries")).await;
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().expect("data").clone()
}

fn of_type<'a>(got: &'a [Request], event_type: &str) -> Vec<&'a Request> {
    got.iter()
        .filter(|r| r.event_type() == event_type)
        .collect()
}

#[tokio::test]
async fn terminal_events_arrive_signed_once_per_attempt_and_a_failing_receiver_gets_them_on_the_third_try(
) {
    let s = TestServer::start_with(ENV).await;
    let rx = Receiver::start().await;
    rx.answer(SUCCEEDED, &[Answer::Status(500), Answer::Status(500)]);
    let hook = create_webhook(&s, &rx.url, &[SUCCEEDED, FAILED, CANCELLED]).await;
    let hook_id = hook["id"].as_str().expect("id").to_owned();
    let secret = hook["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"), "{hook}");
    let (status, shown) = s.get(&format!("/v1/webhooks/{hook_id}")).await;
    assert_eq!(status, 200, "{shown}");
    assert!(
        shown.get("secret").is_none(),
        "the secret is shown once: {shown}"
    );

    // A job that succeeds, one that fails (its file corrupted on disk after upload: the
    // worker refuses it for good) and one cancelled while it waits behind the first.
    let good = upload(&s).await;
    let bad = upload(&s).await;
    let stored = s
        .data_dir
        .path()
        .join("artifacts/files")
        .join(bad["id"].as_str().expect("id"));
    std::fs::write(&stored, b"{\"text\": \"changed\", \"label\": \"x\"}\n").expect("corrupt");
    let mut ids = Vec::new();
    for file in [&good, &bad, &good] {
        let (status, job) = s
            .post_json("/v1/fine_tuning/jobs", &job_request(file))
            .await;
        assert_eq!(status, 200, "{job}");
        ids.push(job["id"].as_str().expect("id").to_owned());
    }
    let (status, cancelled) = s
        .post_json(
            &format!("/v1/fine_tuning/jobs/{}/cancel", ids[2]),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{cancelled}");
    let mut finished = Vec::new();
    for id in &ids {
        finished.push(s.wait_for_job(id, Duration::from_secs(300)).await);
    }
    let statuses: Vec<&str> = finished
        .iter()
        .map(|j| j["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        statuses,
        ["succeeded", "failed", "cancelled"],
        "{finished:?}"
    );

    // The first two attempts of `succeeded` got 500s: 300 ms and 1.8 s later come the
    // retries (±20%). Then nothing more: a 2xx ends the delivery.
    rx.wait_for(
        "three succeeded, one failed and one cancelled",
        Duration::from_secs(30),
        |g| count(g, SUCCEEDED) == 3 && count(g, FAILED) == 1 && count(g, CANCELLED) == 1,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = rx.received();
    assert_eq!(got.len(), 5, "once per attempt, nothing else: {got:#?}");
    for (event_type, job) in [
        (SUCCEEDED, &ids[0]),
        (FAILED, &ids[1]),
        (CANCELLED, &ids[2]),
    ] {
        for r in of_type(&got, event_type) {
            assert_eq!(r.json["object"], "event");
            assert_eq!(&r.json["data"], &json!({"id": job}), "{}", r.json);
            assert_eq!(r.headers["webhook-id"], r.json["id"].as_str().expect("id"));
            assert_eq!(r.headers["content-type"], "application/json");
            assert!(r.json["created_at"].is_i64());
        }
    }
    let succeeded = of_type(&got, SUCCEEDED);
    assert!(
        succeeded.iter().all(|r| r.json == succeeded[0].json),
        "every attempt sends the same event"
    );

    // The independent verifier accepts every request, and refuses a changed body or
    // another secret (so its acceptance means something).
    let verified = verify(&secret, &got).await;
    for (v, r) in verified.iter().zip(&got) {
        assert_eq!(v.as_ref().map_err(String::as_str), Ok(&r.json), "{r:?}");
    }
    let mut tampered = got[0].clone();
    tampered.body = tampered.body.replace_first(b"event", b"evenT");
    assert!(verify(&secret, &[tampered]).await[0].is_err());
    let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    assert!(verify(other, &got[..1]).await[0].is_err());

    // The delivery log: three attempts of `succeeded` (500, 500, 200), with latency
    // and the error of the failed ones.
    let log = deliveries(&s, &hook_id).await;
    assert_eq!(log.len(), 3, "{log:#?}");
    let delivered = log
        .iter()
        .find(|d| d["event_type"] == SUCCEEDED)
        .expect("a delivery of succeeded");
    assert_eq!(delivered["status"], "succeeded", "{delivered}");
    let attempts = delivered["attempts"].as_array().expect("attempts");
    let codes: Vec<&Value> = attempts.iter().map(|a| &a["status_code"]).collect();
    assert_eq!(
        codes,
        [&json!(500), &json!(500), &json!(200)],
        "{delivered}"
    );
    assert_eq!(attempts[0]["error"], "HTTP 500 Internal Server Error");
    assert!(attempts[2]["error"].is_null());
    assert!(attempts
        .iter()
        .all(|a| a["latency_ms"].as_i64().is_some_and(|l| l >= 0)));
    assert!(log.iter().all(|d| d["status"] == "succeeded"), "{log:#?}");

    // The process's metrics count the same: five attempts, two of them failures, and
    // three deliveries finished, all succeeded.
    let metrics = crate::prometheus::scrape(&s).await;
    let sample = |name, labels| crate::prometheus::sample(&metrics, name, labels);
    assert_eq!(
        sample("hone_webhook_attempts_total", &[("result", "failure")]),
        2.0
    );
    assert_eq!(
        sample("hone_webhook_attempts_total", &[("result", "success")]),
        3.0
    );
    assert_eq!(sample("hone_webhook_attempt_seconds_count", &[]), 5.0);
    assert_eq!(
        sample("hone_webhook_deliveries_total", &[("outcome", "succeeded")]),
        3.0
    );
    assert_eq!(
        sample("hone_webhook_deliveries_total", &[("outcome", "failed")]),
        0.0
    );

    redeliver_and_rotate(&s, &rx, &hook_id, delivered, &secret).await;
    another_project_sees_nothing(&s, &hook_id, delivered).await;
    update_and_delete(&s, &rx, &hook_id).await;
}

trait ReplaceFirst {
    fn replace_first(self, from: &[u8], to: &[u8]) -> Vec<u8>;
}

impl ReplaceFirst for Vec<u8> {
    fn replace_first(mut self, from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = self
            .windows(from.len())
            .position(|w| w == from)
            .expect("found");
        self.splice(at..at + from.len(), to.iter().copied());
        self
    }
}

/// A manual redelivery sends the same event again; after a rotation the deliveries
/// carry a signature per secret, and either secret verifies them.
async fn redeliver_and_rotate(
    s: &TestServer,
    rx: &Receiver,
    hook: &str,
    delivered: &Value,
    old_secret: &str,
) {
    let path = format!(
        "/v1/webhooks/{hook}/deliveries/{}/redeliver",
        delivered["id"].as_str().expect("id")
    );
    let (status, again) = s.post_json(&path, &json!({})).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["status"], "pending");
    assert_eq!(again["redelivery_of"], delivered["id"]);
    let got = rx
        .wait_for("the redelivery", Duration::from_secs(20), |g| {
            count(g, SUCCEEDED) == 4
        })
        .await;
    let last = of_type(&got, SUCCEEDED)[3].clone();
    assert_eq!(
        last.headers["webhook-id"],
        delivered["event_id"].as_str().expect("event")
    );

    let (status, rotated) = s
        .post_json(&format!("/v1/webhooks/{hook}/rotate_secret"), &json!({}))
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().expect("secret");
    assert!(new_secret.starts_with("whsec_") && new_secret != old_secret);
    assert!(rotated["previous_secret_expires_at"].is_i64(), "{rotated}");
    let (status, _) = s.post_json(&path, &json!({})).await;
    assert_eq!(status, 200);
    let got = rx
        .wait_for(
            "the redelivery after rotation",
            Duration::from_secs(20),
            |g| count(g, SUCCEEDED) == 5,
        )
        .await;
    let signed_twice = of_type(&got, SUCCEEDED)[4].clone();
    assert_eq!(
        signed_twice.headers["webhook-signature"].split(' ').count(),
        2,
        "{:?}",
        signed_twice.headers
    );
    for secret in [new_secret, old_secret] {
        assert!(verify(secret, std::slice::from_ref(&signed_twice)).await[0].is_ok());
    }
    assert!(
        verify(new_secret, &[last]).await[0].is_err(),
        "signed before the rotation"
    );
}

async fn another_project_sees_nothing(s: &TestServer, hook: &str, delivered: &Value) {
    let key = s.create_key("elsewhere").await;
    let call = |method: reqwest::Method, path: String| {
        let request = s
            .client
            .request(method, s.url(&path))
            .bearer_auth(&key)
            .json(&json!({}));
        async move {
            let r = request.send().await.expect("request");
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    use reqwest::Method;
    let delivery = delivered["id"].as_str().expect("id");
    for (method, path) in [
        (Method::GET, format!("/v1/webhooks/{hook}")),
        (Method::POST, format!("/v1/webhooks/{hook}")),
        (Method::DELETE, format!("/v1/webhooks/{hook}")),
        (Method::POST, format!("/v1/webhooks/{hook}/rotate_secret")),
        (Method::GET, format!("/v1/webhooks/{hook}/deliveries")),
        (
            Method::POST,
            format!("/v1/webhooks/{hook}/deliveries/{delivery}/redeliver"),
        ),
    ] {
        let (status, err) = call(method.clone(), path.clone()).await;
        assert_eq!(status, 404, "{method} {path}: {err}");
        assert_eq!(err["error"]["type"], "not_found_error", "{err}");
    }
    let (status, list) = call(Method::GET, "/v1/webhooks".into()).await;
    assert_eq!((status, &list["data"]), (200, &json!([])), "{list}");
}

/// An update changes what it names and keeps the rest; `file.processed` arrives for an
/// upload; a deleted endpoint is gone.
async fn update_and_delete(s: &TestServer, rx: &Receiver, hook: &str) {
    let (status, updated) = s
        .post_json(
            &format!("/v1/webhooks/{hook}"),
            &json!({"events": ["file.processed"], "description": null}),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["events"], json!(["file.processed"]));
    assert!(updated["description"].is_null(), "{updated}");
    assert_eq!(updated["enabled"], true);
    let file = upload(s).await;
    let got = rx
        .wait_for("file.processed", Duration::from_secs(20), |g| {
            count(g, "file.processed") == 1
        })
        .await;
    assert_eq!(
        of_type(&got, "file.processed")[0].json["data"]["id"],
        file["id"]
    );

    let (status, list) = s.get("/v1/webhooks").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");
    let (status, deleted) = s.delete(&format!("/v1/webhooks/{hook}")).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["deleted"], true);
    let (status, _) = s.get(&format!("/v1/webhooks/{hook}")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn endpoints_are_refused_by_the_field_at_fault() {
    // The defaults: https only, public addresses only.
    let s = TestServer::start().await;
    let refused = |body: Value, param: &'static str, says: &'static str| {
        let s = &s;
        async move {
            let (status, err) = s.post_json("/v1/webhooks", &body).await;
            assert_eq!(status, 400, "{body}: {err}");
            assert_eq!(err["error"]["param"], param, "{body}: {err}");
            let message = err["error"]["message"].as_str().expect("message");
            assert!(message.contains(says), "{body}: {message}");
        }
    };
    let events = json!([SUCCEEDED]);
    refused(
        json!({"url": "http://example.com/h", "events": events}),
        "url",
        "https",
    )
    .await;
    for url in [
        "https://127.0.0.1/h",
        "https://localhost:8443/h",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/h",
        "https://10.0.0.7/h",
    ] {
        refused(
            json!({"url": url, "events": events}),
            "url",
            "webhook_allow_private_targets",
        )
        .await;
    }
    refused(
        json!({"url": "https://no-such-host.invalid/h", "events": events}),
        "url",
        "does not resolve",
    )
    .await;
    refused(
        json!({"url": "not a url", "events": events}),
        "url",
        "absolute",
    )
    .await;
    refused(
        json!({"url": "https://93.184.216.34/h", "events": []}),
        "events",
        "at least one",
    )
    .await;
    refused(
        json!({"url": "https://93.184.216.34/h", "events": [SUCCEEDED, "job.done"]}),
        "events[1]",
        "unknown event type",
    )
    .await;
    refused(
        json!({"url": "https://93.184.216.34/h", "events": events, "description": "d".repeat(513)}),
        "description",
        "512",
    )
    .await;
    let (status, err) = s
        .post_json(
            "/v1/webhooks",
            &json!({"url": "https://93.184.216.34/h", "events": events, "secret": "mine"}),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown field `secret`")),
        "{err}"
    );

    // A public address is accepted; its update is checked the same way.
    let hook = create_webhook(&s, "https://93.184.216.34/h", &[SUCCEEDED]).await;
    let id = hook["id"].as_str().expect("id");
    let (status, err) = s
        .post_json(
            &format!("/v1/webhooks/{id}"),
            &json!({"url": "https://127.0.0.1/"}),
        )
        .await;
    assert_eq!(
        (status, &err["error"]["param"]),
        (400, &json!("url")),
        "{err}"
    );
    let (status, err) = s
        .post_json(&format!("/v1/webhooks/{id}"), &json!({"events": ["nope"]}))
        .await;
    assert_eq!(
        (status, &err["error"]["param"]),
        (400, &json!("events[0]")),
        "{err}"
    );
    for path in [
        "/v1/webhooks/wh-00000000000000000000000000000000".to_owned(),
        "/v1/webhooks/nonsense".to_owned(),
        format!("/v1/webhooks/{id}/deliveries/whdel-00000000000000000000000000000000/redeliver"),
    ] {
        let (status, err) = if path.ends_with("redeliver") {
            s.post_json(&path, &json!({})).await
        } else {
            s.get(&path).await
        };
        assert_eq!(status, 404, "{path}: {err}");
    }
}

#[tokio::test]
async fn a_process_killed_while_an_attempt_is_in_flight_delivers_after_a_restart() {
    // Attempts time out after 4 s, so a claim's lease is 18 s (2 × 4 + 10).
    let env: Vec<(&str, &str)> = ENV
        .iter()
        .copied()
        .chain([("HONE_WEBHOOK_TIMEOUT_MS", "4000")])
        .collect();
    let s = TestServer::start_with(&env).await;
    let rx = Receiver::start().await;
    rx.answer(SUCCEEDED, &[Answer::Hang]);
    let hook = create_webhook(&s, &rx.url, &[SUCCEEDED]).await;
    let hook_id = hook["id"].as_str().expect("id").to_owned();
    let file = upload(&s).await;
    let job = s.train(&job_request(&file), Duration::from_secs(300)).await;

    // The job has succeeded and its event is on the wire, unanswered: kill -9 now.
    rx.wait_for("the first attempt", Duration::from_secs(20), |g| {
        g.len() == 1
    })
    .await;
    let log = deliveries(&s, &hook_id).await;
    assert_eq!(log[0]["status"], "pending", "{log:#?}");
    let s = s.kill_and_restart("all", &env).await;

    // The restarted process takes the delivery over when the dead one's lease ends.
    let got = rx
        .wait_for(
            "the attempt after the restart",
            Duration::from_secs(60),
            |g| g.len() == 2,
        )
        .await;
    assert_eq!(got[0].headers["webhook-id"], got[1].headers["webhook-id"]);
    assert_eq!(got[1].json["data"]["id"], job["id"]);
    assert!(verify(hook["secret"].as_str().expect("secret"), &got[1..]).await[0].is_ok());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = deliveries(&s, &hook_id).await;
        if log[0]["status"] == "succeeded" {
            // The killed attempt left no result; the second is the one logged.
            let attempts = log[0]["attempts"].as_array().expect("attempts");
            assert_eq!(attempts.len(), 1, "{log:#?}");
            assert_eq!(
                (&attempts[0]["attempt"], &attempts[0]["status_code"]),
                (&json!(2), &json!(200))
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{log:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
