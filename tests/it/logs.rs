//! What the broker logs: structured events for each decision, per-rule header and body logging,
//! and never a secret — configured tokens, credential headers and URL userinfo are scrubbed.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wgbroker::testkit::client::{self, Request, RunOptions};
use wgbroker::testkit::scm::MockScm;

use crate::harness::Tunnel;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once) a JSON subscriber capturing every event of the process.
fn capture() -> Capture {
    static CAP: OnceLock<Capture> = OnceLock::new();
    CAP.get_or_init(|| {
        let cap = Capture::default();
        let writer = cap.clone();
        let sub = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(sub).expect("first subscriber");
        cap
    })
    .clone()
}

const TOKEN: &str = "glpat-LOGTEST-0123456789abcdef";
const HEADER_SECRET: &str = "Bearer jira-LOGTEST-secret-value";

#[test]
fn decisions_are_logged_and_secrets_never_are() {
    let cap = capture();
    let scm = MockScm::start("unused").expect("mock");
    let a = scm.addr();
    let mut t = Tunnel::start(&format!(
        r#"
[[scm]]
type = "gitlab"
base_url = "http://{a}/api/v4"
token = "{TOKEN}"

[[allow]]
url = "http://{a}/upload"
methods = ["POST"]
set_request_headers = {{ Authorization = "{HEADER_SECRET}" }}
log_request_headers = true
log_response_headers = true
log_request_body = true
log_response_body = true
"#
    ));
    let reqs = vec![
        vec![Request::get(&format!(
            "/proxy/http://{a}/api/v4/projects/42"
        ))],
        vec![
            Request::new(
                "POST",
                &format!("/proxy/http://user:pa55word-LOGTEST@{a}/upload"),
            )
            .header("Authorization", "Bearer vendor-LOGTEST-credential")
            .header("X-Echo", TOKEN)
            .body(format!("payload mentioning {TOKEN} and more").into_bytes()),
        ],
        vec![Request::new(
            "DELETE",
            &format!("/proxy/http://{a}/api/v4/projects/42?private_token={TOKEN}"),
        )],
    ];
    let res = client::run(
        &mut t.gateway,
        reqs,
        RunOptions {
            port: 80,
            timeout: Duration::from_secs(15),
            keep_bodies: true,
        },
    );
    assert_eq!(
        res[0][0].response.as_ref().expect("response").status,
        404,
        "mock has no GitLab routes"
    );
    assert_eq!(res[1][0].response.as_ref().expect("response").status, 200);
    assert_eq!(res[2][0].response.as_ref().expect("response").status, 403);
    // The upstream did get the injected GitLab token.
    assert!(
        scm.seen()
            .iter()
            .any(|s| s.header("private-token") == Some(TOKEN))
    );
    drop(t);

    let text = String::from_utf8_lossy(&cap.0.lock().expect("lock")).into_owned();
    for event in [
        "proxy.request",
        "proxy.response",
        "allowlist.reject",
        "proxy.request_headers",
        "proxy.response_headers",
        "proxy.request_body",
        "proxy.response_body",
    ] {
        assert!(
            text.contains(&format!("\"event\":\"{event}\"")),
            "no {event} in logs"
        );
    }
    assert!(
        text.contains("payload mentioning <redacted> and more"),
        "body logged, secret scrubbed"
    );
    for secret in [
        TOKEN,
        "jira-LOGTEST-secret-value",
        "pa55word-LOGTEST",
        "vendor-LOGTEST-credential",
        "dXNlcjpwYTU1d29yZC1MT0dURVNU",
    ] {
        assert!(!text.contains(secret), "{secret} leaked into the logs");
    }
}

/// A secret that straddles `[log] body_limit` must not leave its prefix in the sample: the body is
/// scrubbed before it is cut, and the logged sample still respects the cap.
#[test]
fn body_samples_are_scrubbed_before_the_cap() {
    const CUT_TOKEN: &str = "glpat-CUTTEST-abcdefghijklmnopqrstuvwxyz";
    const LIMIT: usize = 64;
    let cap = capture();
    let scm = MockScm::start("unused").expect("mock");
    let a = scm.addr();
    let mut t = Tunnel::start(&format!(
        r#"
[log]
body_limit = {LIMIT}

[[scm]]
type = "gitlab"
base_url = "http://{a}/api/v4"
token = "{CUT_TOKEN}"

[[allow]]
url = "http://{a}/upload"
methods = ["POST"]
log_request_body = true
"#
    ));
    // The token starts 20 bytes before the cap and ends well after it.
    let body = format!(
        "{}{CUT_TOKEN} and the rest of a long body",
        "p".repeat(LIMIT - 20)
    );
    let res = client::run(
        &mut t.gateway,
        vec![vec![
            Request::new("POST", &format!("/proxy/http://{a}/upload")).body(body.into_bytes()),
        ]],
        RunOptions {
            port: 80,
            timeout: Duration::from_secs(15),
            keep_bodies: true,
        },
    );
    assert_eq!(res[0][0].response.as_ref().expect("response").status, 200);
    drop(t);

    let text = String::from_utf8_lossy(&cap.0.lock().expect("lock")).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("\"event\":\"proxy.request_body\"") && l.contains("pppp"))
        .expect("the request body sample is logged");
    // Not even the start of the token survives the cut ("glpat-CUT" is 9 bytes of it).
    assert!(!line.contains("glpat-CUT"), "token prefix leaked: {line}");
    let v: serde_json::Value = serde_json::from_str(line).expect("json line");
    let logged = v["fields"]["body"].as_str().expect("body field");
    assert!(logged.len() <= LIMIT, "sample over the cap: {logged:?}");
    assert!(logged.starts_with(&"p".repeat(LIMIT - 20)), "{logged:?}");
}
