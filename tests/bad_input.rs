//! Bad input gets clear, specific errors and changes nothing.

mod common;

use anyhow::Result;
use common::{JWT_SECRET, builder, chorus_bin, token, wait_for};
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

async fn post(
    cluster: &common::TestCluster,
    path: &str,
    body: &str,
    bearer: Option<&str>,
) -> Result<(u16, Value)> {
    let mut request = cluster
        .client
        .post(format!("{}{path}", cluster.url(1)))
        .body(body.to_string());
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_clear_errors_and_change_nothing() -> Result<()> {
    let cluster = builder().start().await?;
    let admin = cluster.token.clone();
    cluster
        .publish(1, "bad.input", json!("the only message"), None)
        .await?;
    let publish = "/api/v1/channels/bad.input/publish";
    let big = format!("{{\"data\": \"{}\"}}", "x".repeat(70 * 1024));
    let cases: Vec<(&str, String, Option<String>, u16, &str)> = vec![
        (
            "invalid channel",
            r#"{"data": 1}"#.into(),
            Some(admin.clone()),
            400,
            "invalid_channel",
        ),
        (
            "payload over 64 KiB",
            big,
            Some(admin.clone()),
            413,
            "payload_too_large",
        ),
        (
            "malformed JSON",
            r#"{"data": "#.into(),
            Some(admin.clone()),
            400,
            "bad_request",
        ),
        (
            "missing data",
            r#"{"type": "x"}"#.into(),
            Some(admin.clone()),
            400,
            "bad_request",
        ),
        ("no token", r#"{"data": 1}"#.into(), None, 401, "unauthorized"),
        (
            "bad token",
            r#"{"data": 1}"#.into(),
            Some("not-a-jwt".into()),
            401,
            "unauthorized",
        ),
        (
            "forged token",
            r#"{"data": 1}"#.into(),
            Some(forged()),
            401,
            "unauthorized",
        ),
        (
            "role without permission",
            r#"{"data": 1}"#.into(),
            Some(token("eve", &["nobody"])),
            403,
            "forbidden",
        ),
    ];
    for (what, body, bearer, status, code) in cases {
        let path = if what == "invalid channel" {
            "/api/v1/channels/bad..name/publish"
        } else {
            publish
        };
        let (got_status, got) = post(&cluster, path, &body, bearer.as_deref()).await?;
        assert_eq!(got_status, status, "{what}: {got}");
        assert_eq!(got["code"], json!(code), "{what}: {got}");
        assert!(
            got["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {got}"
        );
    }
    let response = cluster
        .client
        .get(format!(
            "{}/api/v1/channels/bad.input/history?since=abc",
            cluster.url(2)
        ))
        .bearer_auth(&admin)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 400);
    let history = cluster.history(3, "bad.input").await?;
    assert_eq!(
        history.len(),
        1,
        "bad requests must not change history: {history:?}"
    );
    assert_eq!(history[0]["data"], json!("the only message"));
    Ok(())
}

fn forged() -> String {
    let claims = json!({"sub": "mallory", "exp": 4_000_000_000u64, "roles": ["admin"]});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-0123456789"),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_refuses_another_shard_count_or_another_clusters_data() -> Result<()> {
    let mut a = builder().start().await?;
    a.publish(1, "keep.me", json!(1), None).await?;
    // Wait until node 3 has recorded the cluster id (shard 0 applied).
    wait_for("node 3 knows the cluster id", Duration::from_secs(10), || async {
        a.status(3).await.ok().filter(|s| s["cluster_id"].is_string())
    })
    .await?;
    a.stop(3)?;

    a.shards = 8;
    a.start_node(3)?;
    let (status, log) = a.wait_exit(3, Duration::from_secs(20))?;
    assert!(!status.success());
    assert!(
        log.contains("created for 12 shards but the configuration says 8"),
        "{log}"
    );
    a.shards = 12;

    // Cluster B's node 3 started on cluster A's node-3 data directory.
    let mut b = builder().start().await?;
    for id in [1, 2] {
        wait_for("cluster B's id recorded", Duration::from_secs(10), || async {
            b.status(id).await.ok().filter(|s| s["cluster_id"].is_string())
        })
        .await?;
    }
    b.stop(3)?;
    b.nodes.get_mut(&3).unwrap().data_dir = a.node(3).data_dir.clone();
    b.start_node(3)?;
    let (status, log) = b.wait_exit(3, Duration::from_secs(30))?;
    assert!(!status.success());
    assert!(
        log.contains("refusing to start") && log.contains("belongs to cluster"),
        "{log}"
    );

    // A still has its data and its node 3 rejoins fine.
    a.start_node(3)?;
    a.wait_ready(3, Duration::from_secs(20)).await?;
    assert_eq!(a.history(3, "keep.me").await?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_cluster_secret_is_refused_in_both_logs() -> Result<()> {
    let mut cluster = builder().start().await?;
    cluster.stop(3)?;
    let fresh = cluster.temp_dir().join("fresh-node3");
    let node = cluster.nodes.get_mut(&3).unwrap();
    node.data_dir = fresh;
    node.cluster_secret = "the-wrong-secret".into();
    cluster.start_node(3)?;
    wait_for(
        "refusals logged on both sides",
        Duration::from_secs(60),
        || async {
            let peer = cluster.log(1) + &cluster.log(2);
            let own = cluster.log(3);
            (peer.contains("refused a node-to-node call")
                && peer.contains("wrong cluster secret")
                && own.contains("peer refused this node's cluster credentials"))
            .then_some(())
        },
    )
    .await?;
    assert!(
        !cluster.is_ready(3).await,
        "a node with the wrong secret must not become ready"
    );
    // The others keep serving.
    cluster.publish(1, "still.fine", json!(1), None).await?;
    Ok(())
}

#[test]
fn invalid_configuration_is_refused_naming_the_field() {
    let run = |args: &[&str]| {
        let out = Command::new(chorus_bin())
            .arg("node")
            .args(args)
            .env("CHORUS_CLUSTER_SECRET", "cluster-secret")
            .env("CHORUS_JWT_SECRET", JWT_SECRET)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let cases: [(&str, &str, &[&str], &str); 3] = [
        (
            "4",
            "1=127.0.0.1:1",
            &[],
            "`peers` does not list this node's id 4",
        ),
        ("1", "1=nowhere", &[], "`peers`: node 1's address \"nowhere\""),
        (
            "1",
            "1=127.0.0.1:1",
            &["--shards", "0"],
            "`shards` must be between 1 and 1024",
        ),
    ];
    for (id, peers, extra, expected) in cases {
        let mut args = vec![
            "--id",
            id,
            "--data-dir",
            data,
            "--raft",
            "127.0.0.1:1",
            "--peers",
            peers,
        ];
        args.extend_from_slice(extra);
        let err = run(&args);
        assert!(err.contains(expected), "{err}");
    }
    let err = run(&["--id", "1", "--raft", "127.0.0.1:1", "--peers", "1=127.0.0.1:1"]);
    assert!(err.contains("`data_dir` is required"), "{err}");
    let file = dir.path().join("small-segments.toml");
    std::fs::write(&file, "[storage]\nsegment_bytes = 100\n").unwrap();
    let err = run(&[
        "--config",
        file.to_str().unwrap(),
        "--id",
        "1",
        "--data-dir",
        data,
        "--raft",
        "127.0.0.1:1",
        "--peers",
        "1=127.0.0.1:1",
    ]);
    assert!(err.contains("`storage.segment_bytes` must be at least"), "{err}");
}

/// A data directory of the earlier storage layout (the Raft log in sled) is refused with what
/// to do, and nothing is written into it.
#[test]
fn a_data_directory_of_the_old_layout_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("sled")).unwrap();
    std::fs::write(dir.path().join("sled/db"), b"old").unwrap();
    let out = Command::new(chorus_bin())
        .args([
            "node",
            "--id",
            "1",
            "--raft",
            "127.0.0.1:1",
            "--peers",
            "1=127.0.0.1:1",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("CHORUS_CLUSTER_SECRET", "cluster-secret")
        .env("CHORUS_JWT_SECRET", JWT_SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("earlier Chorus release"), "{err}");
    assert!(err.contains("cluster remove") && err.contains("--join"), "{err}");
    assert!(!dir.path().join("log").exists() && !dir.path().join("node.json").exists());
}
