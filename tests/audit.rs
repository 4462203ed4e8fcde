//! The audit log: refused credentials over HTTP and WebSocket, and admin actions, as JSON
//! lines in `<data_dir>/audit.log`.

mod common;

use anyhow::Result;
use chorus_proto::client::{client_frame, server_frame};
use common::builder;
use common::wire::WsClient;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_and_admin_actions_are_audited_as_json_lines() -> Result<()> {
    let cluster = builder().nodes(1).start().await?;
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.c2lnbmF0dXJl";
    let refused = cluster
        .publish_raw(1, "audit.test", r#"{"data": 1}"#, forged)
        .await;
    assert!(refused.is_err());
    let mut ws = WsClient::connect(cluster.node(1), false).await?;
    ws.send(1, client_frame::Kind::Connect(common::wire::connect(forged)))
        .await?;
    let answer = ws.recv(Duration::from_secs(10)).await?.and_then(|f| f.kind);
    assert!(
        matches!(answer, Some(server_frame::Kind::Disconnect(_))),
        "{answer:?}"
    );
    // A connected user without the permission: the publish is refused and audited with who.
    let mut nobody = WsClient::connect(cluster.node(1), false).await?;
    nobody.handshake(&common::token("mallory", &["nobody"])).await?;
    nobody
        .send(
            2,
            client_frame::Kind::Publish(chorus_proto::client::Publish {
                channel: "audit.secret".into(),
                data: "1".into(),
                ..Default::default()
            }),
        )
        .await?;
    let refusal = nobody
        .recv_until(Duration::from_secs(10), |f| (f.id == 2).then(|| f.kind.clone()))
        .await?;
    assert!(
        matches!(refusal, Some(server_frame::Kind::Error(_))),
        "{refusal:?}"
    );
    let (status, _) = cluster
        .call(1, "POST", "/api/v1/revocations", Some(json!({"user": "eve"})))
        .await?;
    assert_eq!(status, 200);

    let path = cluster.node(1).data_dir.join("audit.log");
    let lines: Vec<Value> = common::wait_for("four audit lines", Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (lines.len() >= 4).then_some(lines)
    })
    .await?;
    let find = |event: &str, face: Option<&str>| {
        lines
            .iter()
            .find(|l| l["event"] == event && face.is_none_or(|f| l["face"] == f))
            .cloned()
            .unwrap_or_else(|| panic!("no {event} {face:?} line in {lines:?}"))
    };
    let http = find("refused", Some("http"));
    assert_eq!(http["code"], "unauthorized");
    assert_eq!(http["target"], "POST /api/v1/channels/audit.test/publish");
    assert_eq!(http["remote"], "127.0.0.1");
    let ws = lines
        .iter()
        .find(|l| l["face"] == "websocket" && l["target"] == "connect")
        .expect("the refused connect");
    assert_eq!(ws["code"], "unauthorized");
    let forbidden = lines
        .iter()
        .find(|l| l["face"] == "websocket" && l["code"] == "forbidden")
        .expect("the forbidden publish");
    assert_eq!(forbidden["user"], "mallory");
    assert_eq!(forbidden["target"], "audit.secret");
    let admin = find("admin", None);
    assert_eq!(admin["action"], "revoke");
    assert_eq!(admin["user"], "tester");
    assert_eq!(admin["detail"]["user"], "eve");
    assert!(
        lines
            .iter()
            .all(|l| l["at_node"] == 1 && l["ts_ms"].as_u64().is_some())
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
    Ok(())
}
