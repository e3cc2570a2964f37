//! VIPs announced through BIRD (`--bird-socket`, `--bird-routes`): several balancer nodes
//! announce the VIPs they serve to the routers, which spread flows over them with ECMP. A VIP is
//! announced while this node programs it with at least one active backend; the agent writes
//! the routes file (`routes`) and asks BIRD to re-read its configuration through the control
//! socket (`bird`). BIRD being down or refusing is reported (`lb status`, metrics) and retried
//! every housekeeping tick; the data path never waits on it.

pub mod bird;
pub mod routes;

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
};

use tracing::{info, warn};

use crate::{
    desired::{Desired, ServiceAddr, ServiceId},
    status::BgpStatus,
};

/// Where the announcer writes and whom it tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BirdConfig {
    pub socket: PathBuf,
    pub routes: PathBuf,
    /// Withdraw every VIP when the agent stops (`--withdraw-on-stop`).
    pub withdraw_on_stop: bool,
}

pub struct Announcer {
    config: BirdConfig,
    /// The VIPs to announce, as last computed.
    wanted: BTreeSet<IpAddr>,
    /// Why the data path cannot serve them now (its check failed): nothing is announced then.
    data_path_down: Option<String>,
    /// What BIRD was last told successfully (None: nothing yet, or the last attempt failed).
    told: Option<BTreeSet<IpAddr>>,
    status: BgpStatus,
}

/// The VIPs a node serving `desired` announces: those of a programmed service (not among
/// `unfit`) with an active backend.
pub fn announced(desired: &Desired, unfit: &BTreeSet<ServiceId>) -> BTreeSet<IpAddr> {
    let served = desired.values().filter(|s| !unfit.contains(&s.id) && s.backends.iter().any(|b| b.weight > 0));
    let vips = served.filter_map(|s| match s.id.addr {
        ServiceAddr::Vip(ip) => Some(ip),
        ServiceAddr::NodePort { .. } => None,
    });
    vips.collect()
}

impl Announcer {
    pub fn new(config: BirdConfig) -> Self {
        let status = BgpStatus { socket: config.socket.display().to_string(), routes: config.routes.display().to_string(), ..BgpStatus::default() };
        Self { config, wanted: BTreeSet::new(), data_path_down: None, told: None, status }
    }

    pub fn status(&self) -> &BgpStatus {
        &self.status
    }

    /// Announces exactly `vips` (while the data path serves); nothing to do when BIRD already
    /// has them.
    pub fn sync(&mut self, vips: BTreeSet<IpAddr>) {
        self.wanted = vips;
        self.push();
    }

    /// The data path's own check: while it fails (`Err`: why), every VIP is withdrawn; once it
    /// passes again they are announced again.
    pub fn data_path(&mut self, check: Result<(), String>) {
        let down = check.err();
        if down != self.data_path_down {
            match &down {
                Some(why) => warn!("the data path cannot serve ({why}): withdrawing every VIP from BIRD"),
                None => info!("the data path serves again: announcing its VIPs"),
            }
        }
        self.data_path_down = down;
        self.status.data_path_error = self.data_path_down.clone();
        self.push();
    }

    /// Tells BIRD what should be announced now, unless it has it already.
    fn push(&mut self) {
        let target = if self.data_path_down.is_some() { BTreeSet::new() } else { self.wanted.clone() };
        if self.told.as_ref() == Some(&target) {
            return;
        }
        match tell(&self.config.routes, &self.config.socket, &target) {
            Ok(answer) => {
                info!(vips = target.len(), "BIRD: {answer}");
                self.told = Some(target);
                self.status.state = "ok".into();
                self.status.last_error = None;
            }
            Err(why) => {
                if self.status.last_error.as_ref() != Some(&why) {
                    warn!("announcing VIPs through BIRD (retried every tick; the data path is unaffected): {why}");
                }
                self.told = None;
                self.status.state = "failing".into();
                self.status.last_error = Some(why);
                self.status.failures += 1;
            }
        }
        self.status.announced = self.told.iter().flatten().map(ToString::to_string).collect();
    }

    /// The agent stops: every VIP is withdrawn, unless `--withdraw-on-stop false`.
    pub fn stop(&mut self) {
        if self.config.withdraw_on_stop {
            self.sync(BTreeSet::new());
        }
    }
}

/// Withdraws every VIP an agent announced through the BIRD at `socket` with `routes` (`lb
/// down`, for an agent that kept them at its stop).
pub fn withdraw(socket: &Path, routes: &Path) -> Result<String, String> {
    tell(routes, socket, &BTreeSet::new())
}

/// Writes the routes file for `vips` (replaced whole: BIRD never reads half a file) and asks
/// BIRD to reconfigure.
fn tell(routes: &Path, socket: &Path, vips: &BTreeSet<IpAddr>) -> Result<String, String> {
    let temporary = routes.with_extension("lb-new");
    let write = std::fs::write(&temporary, routes::render(vips)).and_then(|()| std::fs::rename(&temporary, routes));
    write.map_err(|e| format!("writing {}: {e}", routes.display()))?;
    bird::configure(socket).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::services_file;

    #[test]
    fn vips_with_an_active_backend_are_announced_and_service_ports_never() {
        let desired = services_file::parse(
            r#"{"services":[
              {"name":"web","address":"10.0.0.1","port":80,"backends":[{"address":"10.1.0.5","port":1}]},
              {"name":"web-udp","address":"10.0.0.1","port":53,"protocol":"udp","backends":[]},
              {"name":"draining","address":"10.0.0.2","port":80,"backends":[{"address":"10.1.0.5","port":1,"weight":0}]},
              {"name":"empty","address":"10.0.0.3","port":80,"backends":[]},
              {"name":"unfit","address":"10.0.0.4","port":80,"backends":[{"address":"10.1.0.5","port":1}]},
              {"name":"port","port":10000,"backends":[{"address":"10.1.0.5","port":1}]}]}"#,
            "t.json",
        )
        .unwrap();
        let unfit: BTreeSet<ServiceId> = desired.values().filter(|s| s.name == "unfit").map(|s| s.id).collect();
        assert_eq!(announced(&desired, &unfit), BTreeSet::from(["10.0.0.1".parse().unwrap()]));
    }

    #[test]
    fn a_bird_that_is_not_there_is_reported_and_the_file_is_still_written() {
        let dir = std::env::temp_dir().join(format!("lb-announce-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = BirdConfig { socket: dir.join("no-bird.ctl"), routes: dir.join("lb.conf"), withdraw_on_stop: true };
        let mut announcer = Announcer::new(config);
        announcer.sync(BTreeSet::from(["10.0.0.1".parse().unwrap()]));
        let status = announcer.status().clone();
        assert_eq!((status.state.as_str(), status.failures), ("failing", 1));
        assert!(status.last_error.as_deref().is_some_and(|e| e.contains("is BIRD running")), "{status:?}");
        assert!(status.announced.is_empty());
        assert!(std::fs::read_to_string(dir.join("lb.conf")).unwrap().contains("route 10.0.0.1/32"));
        announcer.data_path(Ok(()));
        assert_eq!(announcer.status().failures, 2, "retried");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
