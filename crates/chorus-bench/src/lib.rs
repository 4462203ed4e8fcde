//! Load benchmarks against a running cluster: `chorus bench <scenario>` (or the `chorus-bench`
//! binary). A client of the cluster like any other: it goes through the SDK and the HTTP API.
//!
//! Every scenario prints a human summary and, last, one JSON line with its figures, which
//! `scripts/bench.sh` collects into the table of docs/benchmarks.md.

mod e2e;
mod features;
mod http_publish;
mod load;

use anyhow::{Context, Result, bail};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The scenarios.
#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// Publishers through the SDK with a window in flight each: acked msgs/s, ack latency.
    Publish(load::PublishArgs),
    /// Concurrent publishes over the HTTP API: acked msgs/s and ack latency percentiles.
    PublishHttp(http_publish::PublishBenchArgs),
    /// Publish-to-delivery latency through the SDK, a subscriber on every node, fixed rate.
    E2e(e2e::E2eBenchArgs),
    /// One channel, many subscribers over the nodes: deliveries per second and latency.
    Fanout(e2e::FanoutBenchArgs),
    /// Idle authenticated QUIC connections to one node: its resident memory per connection.
    Connections(load::ConnectionsArgs),
    /// SIGKILL the leader of the written shard under load: time until writes resume, losses.
    Failover(load::FailoverArgs),
    /// Typing indicator latency: one typist, subscribers on every node.
    Typing(features::TypingBenchArgs),
    /// Collaborative-session operations: throughput and latency.
    Session(features::SessionBenchArgs),
}

/// Runs one scenario.
pub async fn run(scenario: Scenario) -> Result<()> {
    match scenario {
        Scenario::Publish(args) => load::publish(args).await,
        Scenario::PublishHttp(args) => http_publish::publish(args).await,
        Scenario::E2e(args) => e2e::run(args).await,
        Scenario::Fanout(args) => e2e::fanout(args).await,
        Scenario::Connections(args) => load::connections(args).await,
        Scenario::Failover(args) => load::failover(args).await,
        Scenario::Typing(args) => features::typing(args).await,
        Scenario::Session(args) => features::session(args).await,
    }
}

/// A run's length: a number with `s`, `m` or `h` (`10s`, `1m`); a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number
        .parse()
        .with_context(|| format!("--duration {text:?}: expected e.g. 10s, 1m"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        other => bail!("--duration {text:?}: unknown unit {other:?} (use s, m or h)"),
    };
    if secs == 0 {
        bail!("--duration must be positive");
    }
    Ok(Duration::from_secs(secs))
}

/// The given token, or an admin token minted with the JWT secret (HS256, the claims of
/// docs/protocol.md) that outlives the run.
pub fn bench_token(token: Option<&str>, jwt_secret: Option<&str>, duration: Duration) -> Result<String> {
    match (token, jwt_secret) {
        (Some(token), _) => Ok(token.to_string()),
        (None, Some(secret)) => {
            let exp = SystemTime::now().duration_since(UNIX_EPOCH)? + duration * 2 + Duration::from_secs(60);
            let claims = serde_json::json!({ "sub": "bench", "exp": exp.as_secs(), "roles": ["admin"] });
            Ok(jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )?)
        }
        (None, None) => bail!("give --token (CHORUS_TOKEN) or CHORUS_JWT_SECRET"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
