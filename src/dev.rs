//! `chorus dev`: a local 3-node cluster as child processes, for trying Chorus out.

use crate::cli::{DevArgs, mint};
use anyhow::{Context, Result, bail};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEV_CLUSTER_SECRET: &str = "chorus-dev-cluster-secret";
const DEV_JWT_SECRET: &str = "chorus-dev-jwt-secret-change-me";

/// Makes a child process receive SIGTERM when this process dies, even by SIGKILL.
pub trait DieWithParent {
    /// Sets the parent-death signal of the child to SIGTERM.
    fn die_with_parent(&mut self) -> &mut Self;
}

impl DieWithParent for Command {
    fn die_with_parent(&mut self) -> &mut Self {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches only the child being created.
        unsafe {
            self.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        }
    }
}

struct Children(Vec<(u64, Child)>);

impl Children {
    fn stop(&mut self) {
        for (_, child) in &mut self.0 {
            // SAFETY: kill(2) with a pid we spawned and a valid signal number.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        for (id, child) in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                    _ => {
                        eprintln!("node {id} did not stop in time; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        self.0.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts three nodes, waits until they are ready, prints how to connect, runs until Ctrl-C.
pub async fn run(args: DevArgs) -> Result<()> {
    let exe = std::env::current_exe().context("locating the chorus executable")?;
    let cluster_secret = args
        .cluster_secret
        .unwrap_or_else(|| DEV_CLUSTER_SECRET.to_string());
    let jwt_secret = args.jwt_secret.unwrap_or_else(|| DEV_JWT_SECRET.to_string());
    let port = |offset: u16, n: u64| args.base_port + offset + (n as u16 - 1);
    let peers: Vec<String> = (1..=3)
        .map(|n| format!("{n}=127.0.0.1:{}", port(100, n)))
        .collect();
    let peers = peers.join(",");
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let mut children = Children(Vec::new());
    for n in 1..=3u64 {
        let dir = args.data_dir.join(format!("node{n}"));
        let log_path = args.data_dir.join(format!("node{n}.log"));
        let log =
            std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new(&exe)
            .arg("node")
            .args(["--id", &n.to_string()])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--http", &format!("127.0.0.1:{}", port(0, n))])
            .args(["--raft", &format!("127.0.0.1:{}", port(100, n))])
            .args(["--quic", &format!("127.0.0.1:{}", port(200, n))])
            .args(["--peers", &peers])
            .env("CHORUS_CLUSTER_SECRET", &cluster_secret)
            .env("CHORUS_JWT_SECRET", &jwt_secret)
            .env_remove("CHORUS_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .die_with_parent()
            .spawn()
            .with_context(|| format!("starting node {n}"))?;
        children.0.push((n, child));
    }
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 1..=3u64 {
        let url = format!("http://127.0.0.1:{}/ready", port(0, n));
        loop {
            if let Some((_, child)) = children.0.iter_mut().find(|(id, _)| *id == n)
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "node {n} exited ({status}); see {}",
                    args.data_dir.join(format!("node{n}.log")).display()
                );
            }
            if let Ok(r) = client.get(&url).timeout(Duration::from_secs(1)).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "node {n} was not ready within 60 s; see {}",
                    args.data_dir.join(format!("node{n}.log")).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let token = mint(
        &jwt_secret,
        DEV_USER,
        &["admin".to_string()],
        Duration::from_secs(24 * 3600),
        None,
    )?;
    println!(
        "Chorus dev cluster is ready: 3 nodes, data under {}\n",
        args.data_dir.display()
    );
    for n in 1..=3u64 {
        println!(
            "  node {n}: http://127.0.0.1:{}  (raft 127.0.0.1:{}, quic 127.0.0.1:{}, log {})",
            port(0, n),
            port(100, n),
            port(200, n),
            args.data_dir.join(format!("node{n}.log")).display()
        );
    }
    println!("\nAdmin token (24 h, user {DEV_USER}):\n  export CHORUS_TOKEN={token}\n");
    // The binary as it was run (`make run` does not put it on the PATH), so that every line
    // below can be pasted as it is.
    let chorus = this_binary();
    println!("Try:");
    println!(
        "  curl -s -H \"Authorization: Bearer $CHORUS_TOKEN\" -d '{{\"data\":{{\"text\":\"hello\"}}}}' http://127.0.0.1:{}/api/v1/channels/chat.lobby/publish",
        port(0, 1)
    );
    println!(
        "  curl -s -H \"Authorization: Bearer $CHORUS_TOKEN\" http://127.0.0.1:{}/api/v1/channels/chat.lobby/history",
        port(0, 2)
    );
    println!(
        "  {chorus} cluster status --node http://127.0.0.1:{}   (with CHORUS_TOKEN set)",
        port(0, 3)
    );
    let trust: String = (1..=3u64)
        .map(|n| {
            format!(
                " --ca {}",
                args.data_dir.join(format!("node{n}/tls/cert.pem")).display()
            )
        })
        .collect();
    println!("\nClients (QUIC, with the Rust SDK underneath; certificates generated per node):");
    println!(
        "  {chorus} client subscribe 'chat.>' --node 127.0.0.1:{}{trust}",
        port(200, 1)
    );
    println!(
        "  {chorus} client publish chat.lobby '{{\"text\":\"hi\"}}' --node 127.0.0.1:{}{trust}",
        port(200, 2)
    );
    println!(
        "  {chorus} client session-create doc.plan --policy reject --node 127.0.0.1:{}{trust}",
        port(200, 3)
    );
    println!(
        "  {chorus} client presence {DEV_USER} --node 127.0.0.1:{}{trust}   (also: typing, session-op, read, unread, roster)",
        port(200, 1)
    );
    println!(
        "  WebSocket: ws://127.0.0.1:{}/ws (protocol: docs/protocol.md)",
        port(0, 1)
    );
    println!("\nCtrl-C stops the cluster.");
    crate::node::shutdown_signal().await;
    println!("\nstopping...");
    children.stop();
    println!("stopped.");
    Ok(())
}

/// The subject of the admin token `chorus dev` prints.
const DEV_USER: &str = "dev";

/// How to run this binary again from the current directory: relative when it lies below it
/// (`target/debug/chorus`, `./chorus`: never a bare name, which the shell would look up on
/// the PATH), else its full path.
fn this_binary() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "chorus".to_string();
    };
    let relative = std::env::current_dir()
        .ok()
        .and_then(|dir| exe.strip_prefix(dir).ok().map(std::path::Path::to_path_buf));
    match relative {
        Some(path) if path.parent().is_some_and(|p| p.as_os_str().is_empty()) => {
            format!("./{}", path.display())
        }
        Some(path) => path.display().to_string(),
        None => exe.display().to_string(),
    }
}
