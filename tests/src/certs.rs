//! Certificates for the HTTP path's tests and benchmark, made with the openssl command.

use std::{path::Path, process::Command};

use anyhow::{ensure, Result};

/// A self-signed ECDSA P-256 certificate for `name` (CN and SAN): `<dir>/<name>.pem` holds the
/// certificate and its key (what `--ssl-certs` and HAProxy's `crt` read), `<dir>/<name>.crt` the
/// certificate alone (a client's trust anchor).
pub fn self_signed(dir: &Path, name: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let (pem, crt, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}"), "-addext", &format!("subjectAltName=DNS:{name}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()?;
    ensure!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(pem, [std::fs::read(&crt)?, std::fs::read(&key)?].concat())?;
    std::fs::remove_file(key)?;
    Ok(())
}
