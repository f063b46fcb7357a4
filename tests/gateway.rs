//! The HTTP gateway as a caller sees it, against a federation of real processes: a call
//! without the platform's token (or with a wrong one) is refused and locks nothing; bad
//! input is a 4xx with a code and locks nothing; a good call delegates and settles.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::federation::Processes;
use sage_federation::gateway::{GatewayAddress, address_path};

/// A `sagefed gateway` process, killed when dropped.
struct GatewayProcess {
    child: Child,
    address: GatewayAddress,
    token: String,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway(p: &Processes, platform: &str) -> GatewayProcess {
    let config = &p.configs[platform];
    let address_file = address_path(config);
    let _ = std::fs::remove_file(&address_file);
    let log = std::fs::File::create(p.nats.path().join(format!("gateway-{platform}.log"))).expect("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sagefed"))
        .args(["gateway", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn sagefed gateway");
    let deadline = Instant::now() + Duration::from_secs(30);
    let address: GatewayAddress = loop {
        if let Some(address) = std::fs::read_to_string(&address_file)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
        {
            break address;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("sagefed gateway exited with {status}; see {}", p.nats.path().display());
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not write {}",
            address_file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let token = std::fs::read_to_string(&address.token_file)
        .expect("token file")
        .trim()
        .to_owned();
    GatewayProcess { child, address, token }
}

/// One HTTP/1.1 request on a fresh connection; the status and the JSON body.
fn http(url: &str, method: &str, path: &str, authorization: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let host = url.strip_prefix("http://").expect("http url");
    let mut stream = TcpStream::connect(host).expect("connect to the gateway");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(authorization) = authorization {
        request += &format!("Authorization: {authorization}\r\n");
    }
    let body = body.unwrap_or("");
    if method == "POST" {
        request += &format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    }
    request += "\r\n";
    request += body;
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status: u16 = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let (_, body) = response.split_once("\r\n\r\n").expect("headers end");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Accounts and locks as JSON, to compare before and after.
async fn ledger_state(p: &Processes) -> (Value, Value) {
    let snapshot = p.snapshot().await;
    (
        serde_json::to_value(&snapshot.accounts).expect("json"),
        serde_json::to_value(&snapshot.locks).expect("json"),
    )
}

fn code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

fn planning_task() -> Value {
    json!({"task": {
        "target_platform": "Legion",
        "task_type": "consciousness.sage",
        "operation": "planning",
        "atp_budget": 10.0,
        "parameters": {"width": 8, "height": 8, "start": [0, 0], "goal": [7, 7], "obstacle_density": 0.1, "seed": 1}
    }})
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_token_nothing_is_locked_and_with_it_the_task_settles() {
    let p = Processes::start().await;
    let gateway = start_gateway(&p, "Thor");
    let url = &gateway.address.url;
    #[cfg(unix)]
    assert_eq!(mode(&gateway.address.token_file), 0o600, "the token is private");
    assert_eq!(gateway.token.len(), 64);
    let before = ledger_state(&p).await;
    let body = planning_task().to_string();
    let delegate = "/api/v1/consciousness/delegate";
    let wrong = format!("Bearer {}", "0".repeat(64));
    let truncated = format!("Bearer {}", &gateway.token[..63]);
    let no_scheme = gateway.token.clone();
    for (authorization, expected) in [
        (None, "missing_token"),
        (Some(no_scheme.as_str()), "missing_token"),
        (Some(wrong.as_str()), "bad_token"),
        (Some(truncated.as_str()), "bad_token"),
    ] {
        let (status, reply) = http(url, "POST", delegate, authorization, Some(&body));
        assert_eq!(status, 401, "{authorization:?}: {reply}");
        assert_eq!(code(&reply), expected, "{reply}");
        // Every endpoint, not only delegate.
        let (status, _) = http(url, "POST", "/api/v1/consciousness/cancel/t-1", authorization, None);
        assert_eq!(status, 401);
        let (status, _) = http(url, "GET", "/api/v1/openapi.json", authorization, None);
        assert_eq!(status, 401);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ledger_state(&p).await, before, "a refused call moved ATP");

    // The same request with the token delegates, is paid, and carries the signed proof.
    let bearer = format!("Bearer {}", gateway.token);
    let (status, reply) = http(url, "POST", delegate, Some(&bearer), Some(&body));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["settlement"], "committed", "{reply}");
    assert_eq!(reply["from"], "Thor");
    assert_eq!(reply["to"], "Legion");
    assert!(reply["atp_consumed"].as_f64().is_some_and(|a| a > 0.0), "{reply}");
    assert_eq!(reply["proof"]["task_id"], reply["task_id"]);
    assert_eq!(
        reply["proof"]["executor_lct"],
        "lct:web4:agent:dp@Legion#consciousness.sage"
    );
    assert!(reply["signature"].as_str().is_some_and(|s| !s.is_empty()), "{reply}");
    assert_ne!(ledger_state(&p).await, before);
    p.assert_audit_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_a_4xx_with_a_code_and_locks_nothing() {
    let p = Processes::start().await;
    let gateway = start_gateway(&p, "Thor");
    let url = &gateway.address.url;
    let bearer = format!("Bearer {}", gateway.token);
    let delegate = "/api/v1/consciousness/delegate";
    let before = ledger_state(&p).await;
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut body = planning_task();
        edit(&mut body);
        body.to_string()
    };
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("not JSON", "{\"task\": ".to_owned(), 400, "malformed_body"),
        (
            "NaN budget (Python's json.dumps writes it)",
            planning_task().to_string().replace("10.0", "NaN"),
            400,
            "malformed_body",
        ),
        (
            "budget as text",
            with(&|b| b["task"]["atp_budget"] = json!("NaN")),
            422,
            "malformed_body",
        ),
        (
            "negative budget",
            with(&|b| b["task"]["atp_budget"] = json!(-1.0)),
            400,
            "invalid_budget",
        ),
        (
            "zero budget",
            with(&|b| b["task"]["atp_budget"] = json!(0.0)),
            400,
            "invalid_budget",
        ),
        (
            "huge budget",
            with(&|b| b["task"]["atp_budget"] = json!(1e300)),
            400,
            "invalid_budget",
        ),
        (
            "unknown operation",
            with(&|b| b["task"]["operation"] = json!("planing")),
            400,
            "unknown_operation",
        ),
        (
            "unknown field",
            with(&|b| b["task"]["budget"] = json!(1)),
            422,
            "malformed_body",
        ),
        (
            "timeout 0",
            with(&|b| b["task"]["timeout_seconds"] = json!(0)),
            400,
            "invalid_timeout",
        ),
        (
            "unknown task type",
            with(&|b| b["task"]["task_type"] = json!("dreaming")),
            400,
            "unknown_task_type",
        ),
        (
            "someone else's identity",
            with(&|b| b["lct_identity"] = json!("lct:web4:agent:dp@Legion#consciousness.sage")),
            403,
            "not_your_lct",
        ),
        (
            "a caller's signature",
            with(&|b| b["signature"] = json!("AAAA")),
            400,
            "signature_not_accepted",
        ),
        (
            "bad task id",
            with(&|b| b["task"]["task_id"] = json!("t 1/../x")),
            400,
            "invalid_task_id",
        ),
        (
            "target LCT of another task type",
            with(&|b| b["task"]["target_lct"] = json!("lct:web4:agent:dp@Legion#consciousness")),
            400,
            "invalid_lct",
        ),
        (
            "unregistered target",
            with(&|b| b["task"]["target_platform"] = json!("Nowhere")),
            409,
            "no_platform",
        ),
        (
            "oversized parameters",
            with(&|b| b["task"]["parameters"] = json!({"blob": "x".repeat(300 * 1024)})),
            413,
            "",
        ),
    ];
    for (what, body, expected_status, expected_code) in cases {
        let (status, reply) = http(url, "POST", delegate, Some(&bearer), Some(&body));
        assert_eq!(status, expected_status, "{what}: {reply}");
        if !expected_code.is_empty() {
            assert_eq!(code(&reply), expected_code, "{what}: {reply}");
            assert!(
                reply["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: {reply}"
            );
        }
    }
    for (path, expected) in [
        ("/api/v1/consciousness/status/not%20an%20id", "invalid_target"),
        ("/api/v1/consciousness/status/lct:web4:agent:nobody", "invalid_lct"),
        ("/api/v1/nothing-here", "not_found"),
    ] {
        let (status, reply) = http(url, "GET", path, Some(&bearer), None);
        assert!((400..500).contains(&status), "{path}: {status} {reply}");
        assert_eq!(code(&reply), expected, "{path}: {reply}");
    }
    let (status, reply) = http(url, "POST", "/api/v1/consciousness/cancel/t%20x", Some(&bearer), None);
    assert_eq!((status, code(&reply)), (400, "invalid_task_id"), "{reply}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ledger_state(&p).await, before, "bad input moved ATP");

    // Every path the OpenAPI document lists is served.
    let (status, document) = http(url, "GET", "/api/v1/openapi.json", Some(&bearer), None);
    assert_eq!(status, 200);
    let paths = document["paths"].as_object().expect("paths");
    assert_eq!(paths.len(), sage_federation::gateway::openapi::PATHS.len());
    // `#` starts a URL fragment: an LCT in a path is percent-encoded.
    let lct = "lct:web4:agent:dp@Thor%23consciousness";
    let (status, reply) = http(
        url,
        "GET",
        &format!("/api/v1/consciousness/status/{lct}"),
        Some(&bearer),
        None,
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["active"], true, "{reply}");
    assert_eq!(reply["tasks_running"], 0, "{reply}");
    let (status, reply) = http(url, "GET", "/api/v1/whoami", Some(&bearer), None);
    assert_eq!((status, reply["platform"].as_str()), (200, Some("Thor")), "{reply}");
    p.assert_audit_clean();
}
