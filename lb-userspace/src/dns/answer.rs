//! One query in, one reply out, from the [`Zone`]. The wire format is hickory-proto's; what is
//! decided here is what an authoritative Mesos-DNS server answers: NXDOMAIN with the SOA for
//! names the zone does not hold, NOERROR/no data with the SOA for a name without the type
//! asked, the targets' addresses beside SRV answers, EDNS(0) echoed, and UDP answers cut to
//! what the client said it can take (TC set when answers were left out).

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        rdata::{A, AAAA, NS, SOA, SRV},
        DNSClass, Name, RData, Record, RecordType,
    },
};

use super::zone::{Data, Found, Lookup, Zone, ZoneId, SOA_TIMERS, SRV_PRIORITY, SRV_WEIGHT};

/// The UDP payload this server offers in EDNS(0): the size DNS Flag Day 2020 settled on, which
/// no path fragments.
pub const EDNS_PAYLOAD: u16 = 1232;
/// A client without EDNS(0) takes 512 bytes over UDP (RFC 1035 §4.2.1).
const CLASSIC_UDP: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What became of a query.
#[derive(Debug)]
pub enum Handled {
    /// Send this.
    Reply(Reply),
    /// The name is outside the zones: the REFUSED reply (the caller may forward instead).
    Outside(Reply),
    /// Not a query one answers (a response, or too broken to have an id): counted, dropped.
    Dropped,
}

#[derive(Debug)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub rcode: ResponseCode,
    /// None when the query could not be read.
    pub qtype: Option<RecordType>,
    pub truncated: bool,
}

/// Answers `query`; `spread` rotates the records (one value per query: rudimentary spreading
/// over an app's tasks, as Mesos-DNS's shuffle).
pub fn answer(zone: &Zone, query: &[u8], transport: Transport, spread: usize) -> Handled {
    let request = match Message::from_vec(query) {
        Ok(request) => request,
        Err(_) => return malformed(query),
    };
    if request.metadata.message_type != MessageType::Query {
        return Handled::Dropped;
    }
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    let client_edns = request.edns.as_ref();
    if client_edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        reply.set_edns(edns);
    }
    let limit = match transport {
        Transport::Tcp => u16::MAX as usize,
        Transport::Udp => client_edns.map_or(CLASSIC_UDP, |e| (e.max_payload() as usize).clamp(CLASSIC_UDP, EDNS_PAYLOAD as usize)),
    };
    let [question] = request.queries.as_slice() else {
        reply.add_queries(request.queries.iter().cloned());
        return finish(reply, ResponseCode::FormErr, None, limit);
    };
    let qtype = question.query_type();
    reply.add_query(question.clone());
    if request.metadata.op_code != OpCode::Query {
        return finish(reply, ResponseCode::NotImp, Some(qtype), limit);
    }
    if client_edns.is_some_and(|e| e.version() != 0) {
        // BADVERS is 16: its high bits go in the OPT record.
        if let Some(edns) = reply.edns.as_mut() {
            edns.set_rcode_high(1);
        }
        return finish(reply, ResponseCode::NoError, Some(qtype), limit);
    }
    let name = question.name().to_lowercase().to_ascii();
    let name = name.trim_end_matches('.');
    let lookup = if question.query_class() == DNSClass::IN { zone.lookup(name) } else { Lookup::Outside };
    match lookup {
        Lookup::Outside => {
            let refused = finish(reply, ResponseCode::Refused, Some(qtype), limit);
            let Handled::Reply(refused) = refused else { unreachable!("finish always replies") };
            Handled::Outside(refused)
        }
        Lookup::NoName(zone_id) => {
            reply.metadata.authoritative = true;
            reply.add_authorities(soa(zone, zone_id));
            finish(reply, ResponseCode::NXDomain, Some(qtype), limit)
        }
        Lookup::Name(zone_id, found) => {
            reply.metadata.authoritative = true;
            fill(&mut reply, zone, question, found, spread);
            if reply.answers.is_empty() {
                reply.add_authorities(soa(zone, zone_id));
            }
            finish(reply, ResponseCode::NoError, Some(qtype), limit)
        }
    }
}

/// The records of `found` the question asks for, rotated by `spread`, with SRV targets'
/// addresses as additional records.
fn fill(reply: &mut Message, zone: &Zone, question: &Query, found: Found, spread: usize) {
    let qtype = question.query_type();
    let ttl = zone.names().ttl;
    let owner = question.name();
    let mut answers: Vec<Record> = Vec::new();
    let mut targets: Vec<String> = Vec::new();
    for data in found.into_data(zone.names(), zone.serial()) {
        let rtype = record_type(&data);
        if qtype != rtype && qtype != RecordType::ANY {
            continue;
        }
        if let Data::Srv { target, .. } = &data {
            if !targets.contains(target) {
                targets.push(target.clone());
            }
        }
        answers.extend(record(owner, ttl, data));
    }
    if !answers.is_empty() {
        let at = spread % answers.len();
        answers.rotate_left(at);
    }
    reply.add_answers(answers);
    for target in targets {
        let Lookup::Name(_, target_found) = zone.lookup(&target) else { continue };
        let Ok(name) = Name::from_ascii(format!("{target}.")) else { continue };
        reply.add_additionals(target_found.addrs.into_iter().filter_map(|ip| record(&name, ttl, Data::addr(ip))));
    }
}

fn record_type(data: &Data) -> RecordType {
    match data {
        Data::A(_) => RecordType::A,
        Data::Aaaa(_) => RecordType::AAAA,
        Data::Srv { .. } => RecordType::SRV,
        Data::Soa { .. } => RecordType::SOA,
        Data::Ns(_) => RecordType::NS,
    }
}

/// `data` on the wire (None for a name hickory refuses: the model makes only valid ones).
fn record(owner: &Name, ttl: u32, data: Data) -> Option<Record> {
    let name = |n: &str| Name::from_ascii(format!("{n}.")).ok();
    let rdata = match data {
        Data::A(ip) => RData::A(A(ip)),
        Data::Aaaa(ip) => RData::AAAA(AAAA(ip)),
        Data::Srv { port, target } => RData::SRV(SRV::new(SRV_PRIORITY, SRV_WEIGHT, port, name(&target)?)),
        Data::Soa { mname, rname, serial, minimum } => {
            let [refresh, retry, expire] = SOA_TIMERS;
            RData::SOA(SOA::new(name(&mname)?, name(&rname)?, serial, refresh, retry, expire, minimum))
        }
        Data::Ns(ns) => RData::NS(NS(name(&ns)?)),
    };
    Some(Record::from_rdata(owner.clone(), ttl, rdata))
}

/// The zone's SOA, for the authority section of a negative answer.
fn soa(zone: &Zone, zone_id: ZoneId) -> Option<Record> {
    let names = zone.names();
    let apex = Name::from_ascii(format!("{}.", names.apex(zone_id))).ok()?;
    record(&apex, names.ttl, names.soa(zone.serial()))
}

/// Encodes `reply` within `limit` bytes: additional records go first, then answers from the
/// end, TC set once an answer is left out. How many answers fit is found by bisection (an
/// encoding per try: 7 for a 100-task app, not the 70 of leaving them out one by one).
fn finish(mut reply: Message, rcode: ResponseCode, qtype: Option<RecordType>, limit: usize) -> Handled {
    reply.metadata.response_code = rcode;
    let done = |bytes: Vec<u8>, truncated: bool| Handled::Reply(Reply { bytes, rcode, qtype, truncated });
    let Ok(bytes) = reply.to_vec() else { return Handled::Dropped };
    if bytes.len() <= limit {
        return done(bytes, false);
    }
    reply.additionals.clear();
    let Ok(bytes) = reply.to_vec() else { return Handled::Dropped };
    if bytes.len() <= limit {
        return done(bytes, false);
    }
    reply.metadata.truncation = true;
    let answers = std::mem::take(&mut reply.answers);
    let Ok(mut fitting) = reply.to_vec() else { return Handled::Dropped };
    if fitting.len() > limit {
        reply.authorities.clear();
        fitting = match reply.to_vec() {
            Ok(bytes) if bytes.len() <= limit => bytes,
            _ => return Handled::Dropped,
        };
    }
    // The most answers that fit: `fitting` encodes `kept` of them; all of them do not fit.
    let (mut kept, mut too_many) = (0, answers.len());
    while too_many - kept > 1 {
        let mid = kept + (too_many - kept) / 2;
        reply.answers = answers[..mid].to_vec();
        match reply.to_vec() {
            Ok(bytes) if bytes.len() <= limit => (kept, fitting) = (mid, bytes),
            Ok(_) => too_many = mid,
            Err(_) => return Handled::Dropped,
        }
    }
    done(fitting, true)
}

/// SERVFAIL for `query` (its id and question): no upstream answered it.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.response_code = ResponseCode::ServFail;
    reply.add_queries(request.queries);
    reply.to_vec().ok()
}

/// A query that does not decode: FORMERR with its id when there is a query header to answer
/// (RFC 1035 §4.1.1), nothing otherwise.
fn malformed(query: &[u8]) -> Handled {
    let Some(header) = query.get(..4) else { return Handled::Dropped };
    let is_response = header[2] & 0x80 != 0;
    if is_response {
        return Handled::Dropped;
    }
    let id = u16::from_be_bytes([header[0], header[1]]);
    let mut reply = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
    reply.metadata.message_type = MessageType::Response;
    match reply.to_vec() {
        Ok(bytes) => Handled::Reply(Reply { bytes, rcode: ResponseCode::FormErr, qtype: None, truncated: false }),
        Err(_) => Handled::Dropped,
    }
}

#[cfg(test)]
mod tests;
