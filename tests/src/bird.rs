//! A BIRD 2 daemon for one test: its configuration, control socket and pid file in a directory
//! of its own (removed with it), run in the foreground as a child that is killed on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{agent::TempDir, netns::Netns};

pub struct Bird {
    dir: TempDir,
    child: Option<Child>,
}

impl Bird {
    /// A directory for a BIRD whose `bird.conf` includes `routes.conf` (what the agent writes:
    /// [`Bird::routes_file`]); not started yet.
    pub fn prepare() -> Self {
        Self::with_config("192.0.2.1", |routes| format!("include \"{}\";\n", routes.display()))
    }

    /// A BIRD with router id `router_id` whose `bird.conf` goes on with `body` (given the
    /// routes file's path). Its routes file starts out announcing nothing.
    pub fn with_config(router_id: &str, body: impl FnOnce(&Path) -> String) -> Self {
        let dir = TempDir::new("lb-bird-");
        let routes = dir.path().join("routes.conf");
        let conf = format!("router id {router_id};\nprotocol device {{}}\n{}", body(&routes));
        std::fs::write(dir.path().join("bird.conf"), conf).expect("writing bird.conf");
        let empty = "protocol static lb_vips4 { ipv4; }\nprotocol static lb_vips6 { ipv6; }\n";
        std::fs::write(&routes, empty).expect("writing the routes file");
        Self { dir, child: None }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("bird.ctl")
    }

    pub fn routes_file(&self) -> PathBuf {
        self.dir.path().join("routes.conf")
    }

    /// Starts BIRD (in this test's namespace) and waits for its socket.
    pub fn start(&mut self) -> Result<()> {
        self.start_in(None)
    }

    /// Starts BIRD in `ns` (else this test's namespace) and waits for its socket.
    pub fn start_in(&mut self, ns: Option<&Netns>) -> Result<()> {
        let dir = self.dir.path();
        let mut command = match ns {
            Some(ns) => ns.command("bird"),
            None => Command::new("bird"),
        };
        let child = command
            .args(["-f", "-c"])
            .arg(dir.join("bird.conf"))
            .arg("-s")
            .arg(self.socket())
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bird (cargo xtask setup installs bird2)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.socket().exists() {
            if Instant::now() > deadline {
                bail!("bird did not open {} within 5 s", self.socket().display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The prefixes BIRD has from the agent's static protocols (`birdc show route`).
    pub fn routes(&self) -> Result<Vec<String>> {
        let out = Command::new("birdc").arg("-s").arg(self.socket()).args(["show", "route"]).output().context("running birdc")?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.lines().filter(|l| l.contains("lb_vips")).filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect())
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
