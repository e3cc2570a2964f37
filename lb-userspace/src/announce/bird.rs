//! BIRD's control socket (the one `birdc` uses), for the one command the announcer needs:
//! `configure`, which makes BIRD re-read its configuration (and the routes file it includes).
//! The protocol (BIRD's `doc/reply_codes`): the server greets with `0001 BIRD … ready.`; each
//! reply line is a four-digit code followed by `-` (more lines follow) or a space (the last
//! line), or a leading space (a continuation); 0xxx is success, 8xxx a run-time and 9xxx a
//! parse-time error.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

/// How long one exchange may take: the agent's loop waits for it.
const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BirdError {
    #[error("connecting to BIRD's control socket {socket}: {why} (is BIRD running with -s {socket}?)")]
    Connect { socket: String, why: String },
    #[error("BIRD's control socket {socket}: {why}")]
    Exchange { socket: String, why: String },
    #[error("BIRD refused the configuration: {0}")]
    Refused(String),
}

/// Asks the BIRD behind `socket` to reconfigure; Ok: what it answered (`Reconfigured`, or
/// `Reconfiguration in progress`).
pub fn configure(socket: &Path) -> Result<String, BirdError> {
    let shown = socket.display().to_string();
    let connect = |why: std::io::Error| BirdError::Connect { socket: shown.clone(), why: why.to_string() };
    let exchange = |why: std::io::Error| BirdError::Exchange { socket: shown.clone(), why: why.to_string() };
    let stream = UnixStream::connect(socket).map_err(connect)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(exchange)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(exchange)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(exchange)?);
    let greeting = reply(&mut reader).map_err(exchange)?;
    if greeting.code != 1 {
        return Err(BirdError::Exchange { socket: shown, why: format!("not BIRD's greeting: {}", greeting.text) });
    }
    (&stream).write_all(b"configure\n").map_err(exchange)?;
    let answer = reply(&mut reader).map_err(exchange)?;
    if answer.code >= 8000 {
        return Err(BirdError::Refused(answer.text));
    }
    Ok(answer.text)
}

/// One whole reply: the code of its last line, and its lines' text joined.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    code: u32,
    text: String,
}

fn reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "BIRD closed the connection mid-reply"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        match parse_line(line) {
            Some((code, last, text)) => {
                lines.push(text.to_owned());
                if last {
                    return Ok(Reply { code, text: lines.join("; ") });
                }
            }
            // A continuation (leading space) or a spontaneous line: part of the text.
            None => lines.push(line.trim().to_owned()),
        }
    }
}

/// `NNNN-text` / `NNNN text` → (code, whether it is the last line, text).
fn parse_line(line: &str) -> Option<(u32, bool, &str)> {
    let code = line.get(..4).filter(|c| c.bytes().all(|b| b.is_ascii_digit()))?.parse().ok()?;
    match line.as_bytes().get(4) {
        Some(b' ') | None => Some((code, true, line.get(5..).unwrap_or(""))),
        Some(b'-') => Some((code, false, &line[5..])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_end_at_a_line_whose_code_is_followed_by_a_space() {
        let mut text: &[u8] = b"0002-Reading configuration from /etc/bird.conf\n 1000 more\n0003 Reconfigured\nnext";
        assert_eq!(reply(&mut text).unwrap(), Reply { code: 3, text: "Reading configuration from /etc/bird.conf; 1000 more; Reconfigured".into() });
        let mut error: &[u8] = b"8002 /etc/bird/lb.conf:3:9 syntax error\n";
        assert_eq!(reply(&mut error).unwrap().code, 8002);
        let mut cut: &[u8] = b"0002-Reading";
        assert!(reply(&mut cut).is_err());
    }
}
