//! Subscribe to a channel, publish to it, read the events back, page its history.
//!
//! ```text
//! CHORUS_TOKEN=<jwt> CHORUS_CA=data/node1/tls/cert.pem,data/node2/tls/cert.pem \
//!   cargo run -p chorus-client --example chat -- 127.0.0.1:7201 127.0.0.1:7202
//! ```
//! Trust comes from `CHORUS_CA` (PEM files, comma-separated) or `CHORUS_FINGERPRINTS`
//! (SHA-256 fingerprints, comma-separated), as `chorus node` logs them at start.
//! The channel is `CHORUS_CHANNEL` (default `chat.example`). Prints one JSON line per event.

use chorus_client::{Client, PublishOptions, SubscribeOptions};
use futures::StreamExt;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints: Vec<String> = std::env::args().skip(1).collect();
    let token = std::env::var("CHORUS_TOKEN")?;
    let channel = std::env::var("CHORUS_CHANNEL").unwrap_or_else(|_| "chat.example".into());
    let split = |name: &str| -> Vec<String> {
        std::env::var(name)
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };

    let mut builder = Client::builder().endpoints(endpoints).token(token);
    for ca in split("CHORUS_CA") {
        builder = builder.trust_certificate_pem_file(ca);
    }
    for fingerprint in split("CHORUS_FINGERPRINTS") {
        builder = builder.trust_fingerprint(&fingerprint);
    }
    let client = builder.connect().await?;
    println!("{{\"connected_to\": {}}}", client.node_id().unwrap_or(0));

    // Live events from now on (pass `since` to recover from a known position).
    let mut events = client.subscribe(&channel, SubscribeOptions::default()).await?;
    let mut last = 0;
    for i in 1..=3 {
        let ack = client
            .publish_with(
                &channel,
                format!("{{\"text\": \"hello {i}\"}}"),
                PublishOptions {
                    event_type: Some("message".into()),
                    idempotency_key: Some(format!("example-{}-{i}", std::process::id())),
                },
            )
            .await?;
        last = ack.position.offset;
    }
    while let Some(event) = tokio::time::timeout(Duration::from_secs(10), events.next()).await? {
        println!(
            "{{\"event\": {}, \"type\": {:?}, \"data\": {}}}",
            event.offset,
            event.event_type.as_deref().unwrap_or(""),
            event.data
        );
        if event.offset == last {
            break;
        }
    }

    // History pages: up to 100 events after an offset.
    let page = client.history(&channel, last.saturating_sub(3), 100).await?;
    println!(
        "{{\"history\": {:?}}}",
        page.events.iter().map(|e| e.offset).collect::<Vec<_>>()
    );
    client.close();
    Ok(())
}
