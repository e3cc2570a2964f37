//! The agent (`lb`): loads and attaches the kernel programs, owns every BPF map write, and
//! reads the pinned maps back for the CLI.

pub mod agent;
pub mod announce;
pub mod cli;
pub mod commands;
pub mod control;
pub mod dataplane;
pub mod desired;
pub mod dns;
pub mod http;
pub mod inspect;
pub mod node;
pub mod sources;
pub mod status;

/// An error and its causes on one line, outermost first (`reading x: No such file …`): what
/// anyhow's `{:#}` prints, for errors logged or reported without anyhow.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("reading {0}")]
    struct Reading(&'static str, #[source] std::io::Error);

    #[test]
    fn every_cause_is_printed_once() {
        let err = Reading("/x", std::io::Error::from_raw_os_error(2));
        assert_eq!(super::error_chain(&err), "reading /x: No such file or directory (os error 2)");
    }
}
