//! `make run` (`chorus dev`) works as it says: the lines it prints run as printed.

mod common;

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Below the kernel's ephemeral ports and above the blocks of `common::free_port`, so that no
/// other test's node takes one of the nine ports of the dev cluster.
const BASE_PORT: &str = "32100";

/// Stops `chorus dev` (and with it its three nodes) as Ctrl-C does, also when a check fails.
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

/// Found by a new user: the commands `make run` printed called `chorus`, which is not on the
/// PATH, and `chorus client presence admin` asked for a user the printed token is not.
#[test]
fn the_lines_chorus_dev_prints_run_as_printed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut dev = Dev(Command::new(common::chorus_bin())
        .args(["dev", "--base-port", BASE_PORT, "--data-dir"])
        .arg(&data)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?);
    let stdout = dev.0.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(90))
            .with_context(|| format!("chorus dev printed only:\n{}", printed.join("\n")))?;
        let done = line.contains("Ctrl-C stops the cluster");
        printed.push(line);
        if done {
            break;
        }
    }
    let token = printed
        .iter()
        .find_map(|l| l.trim().strip_prefix("export CHORUS_TOKEN="))
        .context("no token printed")?;
    for command in ["client publish chat.lobby", "client presence"] {
        let line = printed
            .iter()
            .find(|l| l.contains(command))
            .with_context(|| format!("no `{command}` line in:\n{}", printed.join("\n")))?;
        // What follows the command in parentheses is a remark for the reader.
        let line = line.split("   (").next().unwrap_or(line).trim();
        let output = Command::new("sh")
            .args(["-c", line])
            .env("CHORUS_TOKEN", token)
            .current_dir(dir.path())
            .output()?;
        if !output.status.success() {
            bail!(
                "`{line}` failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    drop(dev);
    Ok(())
}
