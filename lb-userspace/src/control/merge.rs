//! How the sources' services merge into what is programmed, and which services the NAT port
//! range keeps out. Pure; host-tested through the agent's tests on the fake dataplane.

use std::borrow::Cow;

use crate::desired::{Desired, Service, ServiceAddr, ServiceId};

/// The services file's services plus Marathon's; Marathon's definition wins a clash (it is the
/// cluster's source of truth, the file a local complement). Returns the clashing ids too. With
/// one source (the usual case) nothing is copied.
pub fn merge<'a>(static_services: &'a Desired, marathon: Option<&'a Desired>) -> (Cow<'a, Desired>, Vec<ServiceId>) {
    let marathon = match marathon {
        None => return (Cow::Borrowed(static_services), Vec::new()),
        Some(m) if static_services.is_empty() => return (Cow::Borrowed(m), Vec::new()),
        Some(m) => m,
    };
    let mut merged = static_services.clone();
    let mut clashes = Vec::new();
    for (id, service) in marathon {
        if merged.insert(*id, service.clone()).is_some() {
            clashes.push(*id);
        }
    }
    (Cow::Owned(merged), clashes)
}

/// Service ports inside the NAT port range would be taken for replies of full-NAT flows: they
/// are left out (returned separately, to be reported by name); every other service applies.
/// Nothing is copied when none is in the range.
pub fn exclude_nat_ports<'a>(desired: Cow<'a, Desired>, (min, max): (u16, u16)) -> (Cow<'a, Desired>, Vec<Service>) {
    let excluded: Vec<Service> = desired.iter().filter(|(id, _)| in_nat_range(id, min, max)).map(|(_, s)| s.clone()).collect();
    if excluded.is_empty() {
        return (desired, excluded);
    }
    let kept = desired.iter().filter(|(id, _)| !in_nat_range(id, min, max)).map(|(id, s)| (*id, s.clone())).collect();
    (Cow::Owned(kept), excluded)
}

fn in_nat_range(id: &ServiceId, min: u16, max: u16) -> bool {
    matches!(id.addr, ServiceAddr::NodePort { .. }) && (min..=max).contains(&id.port)
}
