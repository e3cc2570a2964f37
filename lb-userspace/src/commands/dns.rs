//! `lb dns`: the records the running agent serves, read from its metrics listener's
//! `/dns/records` (the agent's zone lives in its memory; the listener is how it is read).

use std::{io::Write, net::SocketAddr, time::Duration};

use anyhow::{bail, Context as _, Result};

use crate::{
    agent::lock,
    cli::{exit, DnsArgs},
    dns::RecordsReply,
    status,
};

pub fn show(args: &DnsArgs) -> Result<u8> {
    let pin_dir = &args.read.pins.pin_dir;
    if lock::holder(pin_dir).with_context(|| format!("reading the lock of {}", pin_dir.display()))?.is_none() {
        eprintln!("lb: no agent is running for {} (lb run --dns-listen serves DNS)", pin_dir.display());
        return Ok(exit::NOT_RUNNING);
    }
    let agent = status::read(pin_dir).with_context(|| format!("reading the agent's status for {}", pin_dir.display()))?;
    let Some(dns) = &agent.dns else {
        bail!("the agent for {} serves no DNS (start it with --dns-listen)", pin_dir.display());
    };
    if let Some(zone) = &args.zone_file {
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        if zone != dns.domain && zone != dns.vip_domain {
            eprintln!("lb: error: --zone-file {zone}: the agent serves the zones {} and {}", dns.domain, dns.vip_domain);
            return Ok(exit::USAGE);
        }
    }
    let Some(listen) = agent.metrics_listen.as_deref() else {
        bail!("lb dns reads the agent's metrics listener, and this agent runs with --metrics-listen off");
    };
    let listen: SocketAddr = listen.parse().with_context(|| format!("the agent's metrics listener {listen:?}"))?;
    let query = match (&args.name, &args.zone_file) {
        (Some(name), _) => vec![("name", name.as_str())],
        (None, Some(zone)) => vec![("zone", zone.as_str())],
        (None, None) => Vec::new(),
    };
    let reply = fetch(listen, &query)?;
    let out = &mut std::io::stdout().lock();
    if args.read.json {
        serde_json::to_writer_pretty(&mut *out, &reply)?;
        writeln!(out)?;
    } else if args.zone_file.is_some() {
        print_zone_file(&reply, out)?;
    } else {
        print_table(&reply, out)?;
    }
    match (reply.standing.as_str(), &args.name) {
        ("nxdomain", Some(name)) => eprintln!("lb: {name}: no such name in {} (NXDOMAIN)", reply.zone.as_deref().unwrap_or("the zone")),
        ("outside", Some(name)) => eprintln!("lb: {name} is in neither zone the agent serves (it answers REFUSED, or forwards)"),
        _ => return Ok(0),
    }
    Ok(1)
}

/// GET `/dns/records` from the listener (an unspecified address is reached on loopback).
fn fetch(listen: SocketAddr, query: &[(&str, &str)]) -> Result<RecordsReply> {
    let mut at = listen;
    if at.ip().is_unspecified() {
        at.set_ip(if at.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let url = format!("http://{at}/dns/records");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).no_proxy().build()?;
        let response = client.get(&url).query(query).send().await.with_context(|| format!("asking the agent at {url}"))?;
        let status = response.status();
        let body = response.text().await.with_context(|| format!("reading {url}"))?;
        if !status.is_success() {
            let why = serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| Some(v["error"].as_str()?.to_owned()));
            bail!("{}", why.unwrap_or_else(|| format!("{url} answered {status}: {}", body.trim())));
        }
        serde_json::from_str(&body).with_context(|| format!("{url} answered something other than its records"))
    })
}

fn print_table(reply: &RecordsReply, out: &mut impl Write) -> Result<()> {
    let width = reply.records.iter().map(|r| r.name.len()).max().unwrap_or(0).clamp(4, 64);
    writeln!(out, "{:<width$} {:<5} {:>5} DATA", "NAME", "TYPE", "TTL")?;
    for r in &reply.records {
        writeln!(out, "{:<width$} {:<5} {:>5} {}", r.name, r.rtype, r.ttl, r.data)?;
    }
    Ok(())
}

/// RFC 1035 §5 master file: absolute names, SOA first (the listing's order).
fn print_zone_file(reply: &RecordsReply, out: &mut impl Write) -> Result<()> {
    writeln!(out, "; zone {}, serial {}, as lb's agent serves it", reply.zone.as_deref().unwrap_or_default(), reply.serial)?;
    for r in &reply.records {
        writeln!(out, "{} {} IN {} {}", r.name, r.ttl, r.rtype, r.data)?;
    }
    Ok(())
}
