//! A local client for the socket-hook tests, run inside a test cgroup:
//! `lb-probe tcp|udp ADDR:PORT COUNT` makes COUNT connections (or datagram exchanges) to the
//! service, checks that the socket reports the service address as its peer (getpeername for
//! TCP, the datagram source for UDP), and prints how many reached each backend, as JSON.

use std::{
    collections::BTreeMap,
    io::Read,
    net::{SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    time::Duration,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(addr), Some(count)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: lb-probe tcp|udp ADDR:PORT COUNT");
        return ExitCode::from(2);
    };
    let (Ok(addr), Ok(count)) = (addr.parse::<SocketAddr>(), count.parse::<usize>()) else {
        eprintln!("lb-probe: bad address or count");
        return ExitCode::from(2);
    };
    let result = match mode.as_str() {
        "tcp" => tcp(addr, count),
        "udp" => udp(addr, count),
        _ => Err(format!("unknown mode {mode}")),
    };
    match result {
        Ok(per_backend) => {
            println!("{}", serde_json::to_string(&per_backend).unwrap());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("lb-probe: {err}");
            ExitCode::FAILURE
        }
    }
}

fn tcp(addr: SocketAddr, count: usize) -> Result<BTreeMap<String, usize>, String> {
    let mut per_backend = BTreeMap::new();
    for i in 0..count {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| format!("connect {i}: {e}"))?;
        let peer = stream.peer_addr().map_err(|e| e.to_string())?;
        if peer != addr {
            return Err(format!("getpeername says {peer}, the application connected to {addr}"));
        }
        stream.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
        let mut name = Vec::new();
        let mut byte = [0u8; 1];
        while stream.read(&mut byte).map_err(|e| format!("greeting {i}: {e}"))? == 1 && byte[0] != b'\n' {
            name.push(byte[0]);
        }
        *per_backend.entry(String::from_utf8_lossy(&name).into_owned()).or_insert(0) += 1;
    }
    Ok(per_backend)
}

fn udp(addr: SocketAddr, count: usize) -> Result<BTreeMap<String, usize>, String> {
    let mut per_backend = BTreeMap::new();
    let bind = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    for i in 0..count {
        // A socket per exchange: the hooks pick a backend per socket.
        let sock = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
        sock.send_to(format!("q{i}").as_bytes(), addr).map_err(|e| format!("send {i}: {e}"))?;
        let mut buf = [0u8; 512];
        let (n, from) = sock.recv_from(&mut buf).map_err(|e| format!("answer {i}: {e}"))?;
        if from != addr {
            return Err(format!("answer came from {from}, the application sent to {addr}"));
        }
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let name = text.split_once(':').map(|(n, _)| n.to_string()).unwrap_or(text);
        *per_backend.entry(name).or_insert(0) += 1;
    }
    Ok(per_backend)
}
