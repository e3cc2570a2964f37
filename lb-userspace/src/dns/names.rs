//! Names as Mesos-DNS makes them (records/labels, records/generator.go) and as dcos-net names
//! named VIPs (dcos_l4lb_lashup_vip_listener: `<vip>.<framework>.l4lb.thisdcos.directory`).
//! Pure: the record model and `lb dns` build every name through these.

/// One DNS label the way Mesos-DNS's RFC 1123 rule makes it (its default, `EnforceRFC952`
/// off): lowercase; `-`, `.` and `_` become `-`; every other character outside [a-z0-9] is
/// dropped; leading and trailing `-` trimmed; at most 63 characters.
pub fn label(text: &str) -> String {
    let mapped: String = text
        .chars()
        .filter_map(|c| match c {
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            'a'..='z' | '0'..='9' => Some(c),
            '-' | '.' | '_' => Some('-'),
            _ => None,
        })
        .collect();
    let trimmed = mapped.trim_start_matches('-');
    let cut = &trimmed[..trimmed.len().min(63)];
    cut.trim_end_matches('-').to_owned()
}

/// A dotted name made valid label by label (Mesos-DNS's `DomainFrag`): empty labels dropped.
pub fn domain_frag(text: &str) -> String {
    text.split('.').map(label).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(".")
}

/// The Mesos task name Marathon gives an app's tasks: the id's path reversed, dot-joined
/// (`/group/app` → `app.group`).
pub fn task_name(app_id: &str) -> String {
    let reversed: Vec<&str> = app_id.split('/').filter(|p| !p.is_empty()).rev().collect();
    reversed.join(".")
}

/// An app's label: its task name made one label, as Mesos-DNS does (`app.group` → `app-group`).
pub fn app_label(app_id: &str) -> String {
    label(&task_name(app_id))
}

/// The per-task part Mesos-DNS puts in a task's canonical name: the first 5 characters of the
/// z-base-32 encoding of SHA-1(task id) (generator.go `hashString`).
pub fn task_hash(task_id: &str) -> String {
    const ZBASE32: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, task_id.as_bytes());
    let head = u32::from_be_bytes(digest.as_ref()[..4].try_into().expect("SHA-1 has 20 bytes"));
    (0..5).map(|i| ZBASE32[(head >> (27 - 5 * i)) as usize & 31] as char).collect()
}

/// The last `-`-separated field of a Mesos agent id, lowercase (generator.go `slaveIDTail`):
/// `…-S3` → `s3`.
pub fn slave_tail(slave_id: &str) -> String {
    slave_id.rsplit('-').next().unwrap_or_default().to_ascii_lowercase()
}

/// A named VIP's label (dcos-net: the VIP name as one `DomainFrag`, so `/myapp` → `myapp`,
/// `/group/app` → `groupapp`, slashes being no label character).
pub fn vip_label(name: &str) -> String {
    domain_frag(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_mesos_dns_rfc1123_rule() {
        // Cases from mesos-dns records/labels/labels_test.go's RFC1123 table.
        assert_eq!(label("4abc123"), "4abc123");
        assert_eq!(label("-abc123"), "abc123");
        assert_eq!(label("abc123-"), "abc123");
        assert_eq!(label("abc-123"), "abc-123");
        assert_eq!(label("a.b_c"), "a-b-c");
        assert_eq!(label("ABC$%"), "abc");
        assert_eq!(label(&"a".repeat(70)), "a".repeat(63));
        // Cut at 63, then trailing dashes trimmed.
        assert_eq!(label(&format!("{}-b", "a".repeat(62))), "a".repeat(62));
        assert_eq!(label("---"), "");
    }

    #[test]
    fn app_ids_become_marathon_task_names() {
        assert_eq!(app_label("/web"), "web");
        assert_eq!(app_label("/group/app"), "app-group");
        assert_eq!(app_label("/prod/Shop/API_v2"), "api-v2-shop-prod");
        assert_eq!(domain_frag("marathon.prod"), "marathon.prod");
        assert_eq!(vip_label("/myapp"), "myapp");
        assert_eq!(vip_label("/group/app"), "groupapp");
    }

    #[test]
    fn task_hashes_and_slave_tails_match_mesos_dns() {
        // generator_test.go's TestHashString.
        assert_eq!(task_hash("test"), "iffe9");
        assert_eq!(task_hash(""), "5eh48");
        assert_eq!(slave_tail("20150806-231414-16777343-5050-17025-S3"), "s3");
    }
}
