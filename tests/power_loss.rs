//! Power loss of the whole cluster: the three data directories live on one lazyfs mount
//! (../shared/tools/lazyfs), which drops every write that was not fsynced when told to
//! `crash`. Every acknowledged message must survive.

mod common;

use anyhow::{Context, Result, bail};
use common::{builder, wait_for};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn lazyfs_script() -> PathBuf {
    std::env::var_os("CHORUS_LAZYFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/lazyfs/lazyfs.py"))
}

/// A mounted lazyfs; unmounted when dropped.
struct LazyFs {
    process: Child,
    mount: PathBuf,
    control: PathBuf,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl LazyFs {
    fn mount() -> Result<LazyFs> {
        let script = lazyfs_script();
        if !script.exists() {
            bail!("lazyfs not found at {} (set CHORUS_LAZYFS)", script.display());
        }
        let fusermount = Command::new("fusermount3").arg("--version").output();
        if !fusermount.is_ok_and(|o| o.status.success()) {
            bail!("fusermount3 is missing: install Debian's fuse3 (.ci/run does)");
        }
        let mfusepy = Command::new("python3").args(["-c", "import mfusepy"]).status()?;
        if !mfusepy.success() {
            bail!("the Python package mfusepy is missing: pip install mfusepy==3.1.1 (.ci/run does)");
        }
        let backing = tempfile::tempdir()?;
        let mount = tempfile::tempdir()?;
        let control = mount.path().with_extension("sock");
        let log = std::fs::File::create(backing.path().with_extension("lazyfs.log"))?;
        let process = Command::new("python3")
            .arg(&script)
            .arg("--backing")
            .arg(backing.path())
            .arg("--mount")
            .arg(mount.path())
            .arg("--control")
            .arg(&control)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting lazyfs")?;
        let fs = LazyFs {
            process,
            mount: mount.path().to_path_buf(),
            control,
            _dirs: (backing, mount),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while fs.command("ping").is_err() {
            if std::time::Instant::now() > deadline {
                bail!("lazyfs did not come up");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(fs)
    }

    fn command(&self, cmd: &str) -> Result<String> {
        let out = Command::new("python3")
            .arg(lazyfs_script())
            .arg("--control")
            .arg(&self.control)
            .args(["--cmd", cmd])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() || !text.starts_with("ok") {
            bail!("lazyfs {cmd}: {text}{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(text)
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg(&self.mount).status();
        let _ = self.process.wait();
    }
}

/// Message `i`: small, but every fourth one close to the 64 KiB limit (large values take
/// other paths in sled).
fn payload(i: u64) -> serde_json::Value {
    if i.is_multiple_of(4) {
        json!({"i": i, "pad": "x".repeat(60 * 1024)})
    } else {
        json!({"i": i})
    }
}

/// Publishes 120 messages, cuts the power of all three nodes, restarts them, and returns
/// the acknowledged messages that are missing afterwards.
async fn lost_after_power_loss(unsafe_skip_fsync: bool) -> Result<Vec<String>> {
    let lazyfs = LazyFs::mount()?;
    // Frequent snapshots (and log purges), so snapshot files are part of what must survive.
    let mut b = builder()
        .data_root(&lazyfs.mount)
        .config("[raft_timing]\nsnapshot_every_entries = 10\nlogs_kept_after_snapshot = 2\n");
    if unsafe_skip_fsync {
        b = b.env(chorus_store::node_store::UNSAFE_SKIP_FSYNC_ENV, "1");
    }
    let mut cluster = b.start().await?;
    let mut acked = Vec::new();
    for i in 0..120u64 {
        let channel = format!("power.{}", i % 6);
        let reply = cluster.publish(1 + i % 3, &channel, payload(i), None).await?;
        acked.push((channel, reply["offset"].as_u64().unwrap(), i));
    }
    for id in [1, 2, 3] {
        cluster.kill(id);
    }
    let crash = lazyfs.command("crash")?;
    eprintln!("lazyfs: {}", crash.trim());
    for id in [1, 2, 3] {
        cluster.start_node(id)?;
    }
    let ready_within = Duration::from_secs(if unsafe_skip_fsync { 20 } else { 60 });
    cluster.wait_all_ready(ready_within).await?;
    let mut lost = Vec::new();
    for id in [1, 2, 3] {
        for channel in (0..6).map(|c| format!("power.{c}")) {
            let history = cluster.history(id, &channel).await?;
            for (_, offset, i) in acked.iter().filter(|(c, _, _)| *c == channel) {
                match history.get(*offset as usize - 1) {
                    Some(message) if message["data"] == payload(*i) => {}
                    other => lost.push(format!("node {id} {channel}@{offset}: found {other:?}")),
                }
            }
        }
    }
    if lost.is_empty() {
        // The cluster serves again, continuing the offsets.
        let reply = wait_for("a publish after power loss", Duration::from_secs(20), || async {
            cluster
                .publish(2, "power.0", json!("after"), Some("after-crash"))
                .await
                .ok()
        })
        .await?;
        assert_eq!(reply["offset"].as_u64(), Some(21));
    }
    drop(cluster);
    drop(lazyfs);
    Ok(lost)
}

fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    eprintln!("SKIPPED: /dev/fuse is missing on this machine, so lazyfs cannot mount");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_loss_of_all_nodes_keeps_every_acknowledged_message() -> Result<()> {
    if !fuse_available() {
        return Ok(());
    }
    let lost = lost_after_power_loss(false).await?;
    assert!(
        lost.is_empty(),
        "acknowledged messages lost in a power loss:\n{}",
        lost.join("\n")
    );
    Ok(())
}

/// The negative control: with the fsync switched off, the same power loss loses
/// acknowledged messages, so the test above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_loss_without_fsync_loses_acknowledged_messages() -> Result<()> {
    if !fuse_available() {
        return Ok(());
    }
    let lost = lost_after_power_loss(true).await;
    // Either history lost acknowledged messages, or the nodes could not even serve it.
    match lost {
        Ok(lost) => {
            eprintln!(
                "without fsync, {} acknowledged reads were lost or wrong, e.g. {:?}",
                lost.len(),
                lost.first()
            );
            assert!(
                !lost.is_empty(),
                "without fsync a power loss should lose acknowledged messages"
            );
        }
        Err(e) => eprintln!("without fsync the cluster did not recover: {e:#}"),
    }
    Ok(())
}
