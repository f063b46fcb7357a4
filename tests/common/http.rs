//! A plain HTTP/1.1 GET for the tests (loopback only), and Prometheus text parsing: enough to
//! scrape `/metrics` and read the dashboard's JSON without a client library.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest a test request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The first URL announced in `text` after `marker` (`"metrics on "`, `"dashboard on "`).
pub fn announced_url(text: &str, marker: &str) -> Option<String> {
    let at = text.find(marker)? + marker.len();
    let url = text[at..].split_whitespace().next()?;
    Some(url.to_owned())
}

/// GETs `url` (`http://127.0.0.1:PORT/path`); returns the status code and the body.
pub async fn get(url: &str) -> (u16, String) {
    request("GET", url, &[]).await
}

/// Sends `method` to `url` with extra `headers` (`"name: value"`) and no body; returns the
/// status code and the body.
pub async fn request(method: &str, url: &str, headers: &[&str]) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    assert!(host.starts_with("127.0.0.1:"), "tests talk to loopback only: {url}");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
        let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
        // A `Host` among `headers` replaces the URL's.
        let default_host = if headers.iter().any(|h| h.to_ascii_lowercase().starts_with("host:")) {
            String::new()
        } else {
            format!("Host: {host}\r\n")
        };
        let request =
            format!("{method} {path} HTTP/1.1\r\n{default_host}Connection: close\r\nContent-Length: 0\r\n{extra}\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        String::from_utf8(response).expect("a UTF-8 response")
    };
    let response = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .expect("the request timed out");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response with headers");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding: chunked"),
        "this helper reads whole bodies only:\n{head}"
    );
    (status, body.to_owned())
}

/// The value of the sample `series` (`name` or `name{label="v",...}`, labels as the exporter
/// prints them) in Prometheus text, or 0 when it is absent (a counter not yet incremented).
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            Some(value.trim().parse().expect("a number"))
        })
        .unwrap_or(0.0)
}
