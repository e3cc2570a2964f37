//! Running `lb` as a real process, inside a network namespace, with a unique pin directory.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::{netns::Netns, unique_name};

/// The `lb` binary under test: `$LB_BIN` (set by `cargo xtask test`), else the debug build.
pub fn lb_bin() -> PathBuf {
    std::env::var_os("LB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/lb"))
}

/// A unique directory under /sys/fs/bpf. On drop, `lb down` detaches what the agent attached
/// and whatever is left is removed.
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    pub fn new() -> Self {
        Self { path: Path::new("/sys/fs/bpf").join(unique_name("lbt")) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn arg(&self) -> String {
        self.path.display().to_string()
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.path.exists() {
            let _ = Command::new(lb_bin()).args(["down", "--pin-dir"]).arg(&self.path).output();
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A file with a unique name under the temp directory, removed on drop.
pub struct TempFile {
    path: PathBuf,
}

impl TempFile {
    pub fn new(contents: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(unique_name("lb-services-") + ".json");
        std::fs::write(&path, contents)?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn arg(&self) -> String {
        self.path.display().to_string()
    }

    /// Replaces the contents atomically (write + rename), as an operator's tooling would.
    pub fn replace(&self, contents: &str) -> Result<()> {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, contents)?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Polls `lb services --json` until `pred` holds (at most 10 s).
pub fn wait_for_services(pins: &PinDir, pred: impl Fn(&serde_json::Value) -> bool) -> Result<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = lb_ok(None, &["services", "--json", "--pin-dir", &pins.arg()])?;
        let json: serde_json::Value = serde_json::from_str(&out)?;
        if pred(&json) {
            return Ok(json);
        }
        if std::time::Instant::now() > deadline {
            bail!("services never reached the expected state; last:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `lb ARGS` run to completion inside `ns` (or the test's own namespace).
pub fn lb(ns: Option<&Netns>, args: &[&str]) -> Result<Output> {
    let bin = lb_bin();
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = ns.command(bin.to_str().unwrap());
            c.args(args);
            c
        }
        None => {
            let mut c = Command::new(&bin);
            c.args(args);
            c
        }
    };
    cmd.output().with_context(|| format!("running {} {}", bin.display(), args.join(" ")))
}

/// Like [`lb`], failing unless it exits 0; returns stdout.
pub fn lb_ok(ns: Option<&Netns>, args: &[&str]) -> Result<String> {
    let out = lb(ns, args)?;
    if !out.status.success() {
        bail!("lb {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A running `lb run`, entered into the namespace's network only (nsenter --net), so its pins
/// land in the host bpffs. Dropping it sends SIGTERM and waits.
pub struct Agent {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Agent {
    /// Starts `lb run ARGS` in `ns` and waits until it prints `ready`.
    pub fn start(ns: &Netns, args: &[&str]) -> Result<Self> {
        let mut child = ns
            .command(lb_bin().to_str().unwrap())
            .arg("run")
            .args(args)
            .env("LB_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting lb run")?;
        let (line_tx, line_rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = line_tx.send(line);
            }
        });
        let (err_tx, err_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        let mut agent = Self { child, stderr: err_rx };
        loop {
            match line_rx.recv_timeout(Duration::from_secs(20)) {
                Ok(line) if line == "ready" => return Ok(agent),
                Ok(_) => continue,
                Err(_) => {
                    let log = agent.stop_and_collect();
                    bail!("lb run did not become ready:\n{log}");
                }
            }
        }
    }

    /// Stops the agent (SIGTERM) and returns its log.
    pub fn stop_and_collect(&mut self) -> String {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// Asks the agent to reload its services file (SIGHUP).
    pub fn sighup(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }

    /// Stops the agent (SIGTERM) and returns its exit status.
    pub fn stop(mut self) -> Result<std::process::ExitStatus> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        Ok(self.child.wait()?)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.stop_and_collect();
        }
    }
}
