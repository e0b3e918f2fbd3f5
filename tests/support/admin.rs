//! The admin and health endpoints as probes and scrapers see them: a plain HTTP/1.1 GET, a
//! sample out of a Prometheus scrape, and polling with a deadline.
#![allow(dead_code)] // each test file uses its own subset of these helpers

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Longest any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(50);

/// Waits until `check` gives `Some`, polling; fails the test after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// An HTTP answer: status code and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// `GET path` over a fresh connection, as a probe or scraper does.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<Answer> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(DEADLINE, exchange).await??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    Ok(Answer {
        status,
        body: body.to_string(),
    })
}

/// The value of the sample `series` (name and labels, exactly as exposed) in a scrape.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Waits until the scrape of `admin` shows `series` at `value`.
pub async fn metric_reaches(admin: SocketAddr, series: &str, value: f64) {
    eventually(&format!("{series} to reach {value}"), || async {
        let scrape = get(admin, "/stats/prometheus").await.ok()?.body;
        (sample(&scrape, series) == Some(value)).then_some(())
    })
    .await
}

/// How many finished connections the proxy at `admin` counted with `action` and `reason`, on
/// any port and in any mode.
pub async fn connections_counted(admin: SocketAddr, action: &str, reason: &str) -> f64 {
    let scrape = get(admin, "/stats/prometheus")
        .await
        .expect("scrape /stats/prometheus")
        .body;
    let labels = format!("action=\"{action}\",reason=\"{reason}\"");
    scrape
        .lines()
        .filter(|line| line.starts_with("peerguard_connections_total{") && line.contains(&labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the proxy at `admin` has counted a connection with `action` and `reason`:
/// what the test drove is what the proxy says happened.
pub async fn counted(admin: SocketAddr, action: &str, reason: &str) {
    eventually(&format!("a connection counted as {action}/{reason}"), || async {
        (connections_counted(admin, action, reason).await >= 1.0).then_some(())
    })
    .await
}
