//! Running `lb` as a real process, inside a network namespace, with a unique pin directory.

use std::{
    collections::BTreeMap,
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

    /// Every pinned link by pin name (`tc_ingress@veth0`, `connect4@cgroup`, …): (link id,
    /// program id), read with bpftool.
    pub fn links(&self) -> BTreeMap<String, (u64, u64)> {
        std::fs::read_dir(self.path.join("links"))
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                (path.file_name().unwrap().to_string_lossy().into_owned(), link_ids(&path))
            })
            .collect()
    }
}

/// (link id, id of the program it runs) of the link pinned at `pin`, read with bpftool.
fn link_ids(pin: &Path) -> (u64, u64) {
    let show = Command::new("bpftool").args(["-j", "link", "show", "pinned"]).arg(pin).output().unwrap();
    let link: serde_json::Value =
        serde_json::from_slice(&show.stdout).unwrap_or_else(|e| panic!("bpftool on {}: {e}", pin.display()));
    (link["id"].as_u64().unwrap(), link["prog_id"].as_u64().unwrap())
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.path.exists() {
            let _ = Command::new(lb_bin()).args(["down", "--force", "--pin-dir"]).arg(&self.path).output();
            let _ = std::fs::remove_dir_all(&self.path);
        }
        // An agent that never pinned anything (a refused start) may still have reported.
        for file in [lb::status::path_for(&self.path), lb::status::vips_path_for(&self.path)] {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// A directory with a unique name under the temp directory, removed with its contents on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&path).expect("creating a directory under the temp directory");
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
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

/// A unique cgroup v2 directory for one test's socket hooks (hooks on the root cgroup would
/// reach every process on the machine, other tests included). Removed on drop.
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    pub fn new() -> Result<Self> {
        let root = lb::node::preflight::cgroup2_root()?;
        let path = root.join(unique_name("lbt-cg"));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn arg(&self) -> String {
        self.path.display().to_string()
    }

    /// A command that runs inside this cgroup (it joins before exec).
    pub fn command(&self, mut cmd: Command) -> Command {
        use std::os::unix::process::CommandExt as _;
        let procs = std::ffi::CString::new(self.path.join("cgroup.procs").into_os_string().into_encoded_bytes())
            .expect("cgroup path without NUL");
        // SAFETY: after fork only raw syscalls run (no allocation, no locks): open, write, close.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Processes may take a moment to leave after exiting.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// The lines of a child's output, read on a thread of their own.
fn lines_of(output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// A running `lb run`, entered into the namespace's network only (nsenter --net), so its pins
/// land in the host bpffs. Dropping it sends SIGTERM and waits.
pub struct Agent {
    child: Child,
    stderr: mpsc::Receiver<String>,
    /// The cgroup made for this agent when the caller gave none.
    _cgroup: Option<TestCgroup>,
}

impl Agent {
    /// Starts `lb run ARGS` in `ns` and waits until it prints `ready`. Without `--cgroup` in
    /// ARGS, the socket hooks go to a fresh test cgroup.
    pub fn start(ns: &Netns, args: &[&str]) -> Result<Self> {
        let cgroup = if args.contains(&"--cgroup") { None } else { Some(TestCgroup::new()?) };
        let mut command = ns.command(lb_bin().to_str().unwrap());
        command.arg("run").args(args);
        if let Some(cg) = &cgroup {
            command.args(["--cgroup", &cg.arg()]);
        }
        let mut child = command
            .env("LB_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting lb run")?;
        let line_rx = lines_of(child.stdout.take().unwrap());
        let err_rx = lines_of(child.stderr.take().unwrap());
        let mut agent = Self { child, stderr: err_rx, _cgroup: cgroup };
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

    /// The agent's process id (nsenter execs `lb` in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a log line containing `needle` and returns it. Lines read here are no longer
    /// part of what `stop_and_collect` returns.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.stderr.recv_timeout(left).with_context(|| format!("the agent never logged {needle:?}"))?;
            if line.contains(needle) {
                return Ok(line);
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

    /// Kills the agent (SIGKILL: no cleanup of any kind) and reaps it.
    pub fn kill(mut self) -> Result<std::process::ExitStatus> {
        self.child.kill()?;
        Ok(self.child.wait()?)
    }

    /// The agent's resident set now and at its peak (VmRSS, VmHWM), in KiB.
    pub fn rss_kib(&self) -> Result<(u64, u64)> {
        rss_kib(self.pid())
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

/// A child process killed (and reaped) when dropped, unless it already exited: a test that
/// fails an assertion leaves no agent behind.
pub struct Running(pub std::process::Child);

impl Running {
    /// The agent's resident set now and at its peak (VmRSS, VmHWM), in KiB.
    pub fn rss_kib(&self) -> Result<(u64, u64)> {
        rss_kib(self.0.id())
    }
}

/// CPU time (user + system) of process `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')').context("no comm")?.1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name} in /proc status"))?;
        Ok(line.split_whitespace().nth(1).context("malformed /proc status")?.parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
