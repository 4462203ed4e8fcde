//! A mounted lazyfs (../shared/tools/lazyfs): a filesystem that drops every write not
//! fsynced when told to `crash`, for power-loss tests.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn lazyfs_script() -> PathBuf {
    std::env::var_os("CHORUS_LAZYFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/lazyfs/lazyfs.py"))
}

/// A mounted lazyfs; unmounted when dropped.
pub struct LazyFs {
    process: Child,
    pub mount: PathBuf,
    control: PathBuf,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl LazyFs {
    pub fn mount() -> Result<LazyFs> {
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

    pub fn command(&self, cmd: &str) -> Result<String> {
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

/// Whether FUSE exists here; says why not when it does not.
pub fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    eprintln!("SKIPPED: /dev/fuse is missing on this machine, so lazyfs cannot mount");
    false
}
