//! What the benchmark binaries share: background processes, commands, the machine's CPU time,
//! nginx backends, wrk's latency units, medians and ranges.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{ensure, Context as _, Result};

use crate::netns::Netns;

/// The port the nginx backends listen on.
pub const NGINX_PORT: u16 = 8080;

/// A background process, stopped on drop.
pub struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

pub fn spawn(mut cmd: Command) -> Result<Proc> {
    Ok(Proc(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().with_context(|| format!("starting {cmd:?}"))?))
}

pub fn output(mut cmd: Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Busy CPU time of the whole machine so far, in seconds (from /proc/stat).
pub fn busy_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let fields: Vec<f64> = stat.lines().next().context("empty /proc/stat")?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: f64 = fields.iter().take(8).sum();
    let idle = fields[3] + fields[4];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((total - idle) / hz)
}

/// A wrk latency (`812.00us`, `1.20ms`, `2s`) in milliseconds.
pub fn ms(text: &str) -> f64 {
    let (num, unit) = text.split_at(text.find(|c: char| c.is_alphabetic()).unwrap_or(text.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

/// nginx with one worker on `ip`:NGINX_PORT in `ns`, answering every request with `name`, but
/// serving the files of `dir`/files under /files/.
pub fn nginx(ns: &Netns, ip: &str, name: &str, dir: &Path) -> Result<Proc> {
    let conf = dir.join(format!("nginx-{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1; daemon off; pid {dir}/nginx-{name}.pid; error_log stderr;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; keepalive_requests 1000000;\n\
               server {{ listen {ip}:{NGINX_PORT} reuseport; location / {{ return 200 \"{name}\\n\"; }}\n\
                 location /files/ {{ alias {dir}/files/; }} }} }}\n",
            dir = dir.display()
        ),
    )?;
    let mut cmd = ns.command("nginx");
    cmd.args(["-c", conf.to_str().unwrap(), "-e", "stderr"]);
    spawn(cmd)
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn range(v: &[f64]) -> (f64, f64) {
    v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}


/// What a wrk run measured.
pub struct Wrk {
    pub requests_per_second: f64,
    /// Requests completed.
    pub requests: f64,
    pub p99_ms: f64,
    /// The machine's busy CPU seconds per request during the run.
    pub cpu_per_request: f64,
}

/// Runs `wrk` (a command with its arguments, `--latency` included) and reads its figures;
/// non-2xx answers or socket errors fail the run unless `errors_allowed` (Connection: close
/// runs count connections the server closed first as errors).
pub fn wrk(cmd: Command, errors_allowed: bool) -> Result<Wrk> {
    let before = busy_cpu_seconds()?;
    let text = output(cmd)?;
    let cpu = busy_cpu_seconds()? - before;
    let rps: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let requests: f64 = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim().to_string()))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no request count in wrk output:\n{text}"))?;
    let errors = text.lines().any(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    ensure!(!errors || errors_allowed, "wrk saw errors:\n{text}");
    let p99_ms = text.lines().find_map(|l| l.trim().strip_prefix("99%")).map(|v| ms(v.trim())).unwrap_or(f64::NAN);
    Ok(Wrk { requests_per_second: rps, requests, p99_ms, cpu_per_request: cpu / requests.max(1.0) })
}

/// Gives thread `pid` at most `share` of one CPU from now on, as if it had a machine that much
/// slower to itself: SCHED_DEADLINE with that runtime every 10 ms (`chrt -d`). For threads that
/// end with the benchmark's namespaces: on Linux 6.18 a thread switched back to SCHED_OTHER
/// keeps its deadline bandwidth reserved (after ten switches on 2 CPUs no thread could get any,
/// until the scheduler domains were rebuilt), while one that exits returns it. Not CFS bandwidth
/// control: since 6.18 a throttled task stops only on its way back to user space, which a
/// kernel thread never takes (a NAPI thread in a cgroup with a 0.2 quota used 0.4 CPU, the
/// cgroup counting 21 throttled periods of 22 and 0 ns throttled).
pub fn cap_cpu(pid: u32, share: f64) -> Result<()> {
    const PERIOD_NS: f64 = 10e6;
    let runtime = ((share * PERIOD_NS) as u64).to_string();
    let period = (PERIOD_NS as u64).to_string();
    let mut chrt = Command::new("chrt");
    chrt.args(["-d", "--sched-runtime", &runtime, "--sched-deadline", &period, "--sched-period", &period, "-p", "0", &pid.to_string()]);
    output(chrt).with_context(|| format!("capping thread {pid} at {share} of a CPU"))?;
    Ok(())
}
