//! `cargo xtask install|uninstall` into a throw-away root: the files land where the unit expects
//! them, the unit passes `systemd-analyze verify`, the default configuration is valid TOML of
//! real flags and survives a reinstall once edited, and uninstall leaves nothing of ours.

use std::{
    path::Path,
    process::{Command, Output},
};

use lb_tests::agent::{lb_bin, TempDir};

/// The xtask binary `cargo xtask` built (it runs the tests).
fn xtask(args: &[&str]) -> Output {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/xtask");
    assert!(xtask.exists(), "{} missing: run the tests with `cargo xtask test`", xtask.display());
    let out = Command::new(xtask).args(args).output().unwrap();
    assert!(out.status.success(), "xtask {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn files_under(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    files.sort();
    files
}

#[test]
fn install_verify_reinstall_and_uninstall_into_a_root() {
    let root = TempDir::new("lb-root-");
    let dir = root.path().to_str().unwrap();
    let binary = lb_bin();
    xtask(&["install", "--root", dir, "--binary", binary.to_str().unwrap()]);
    assert_eq!(
        files_under(root.path()),
        [
            "etc/lb/lb.toml",
            "etc/systemd/system/lb.service",
            "usr/local/bin/lb",
            "usr/local/share/bash-completion/completions/lb",
            "usr/local/share/doc/lb/README.md",
        ]
    );

    // systemd-analyze needs what the unit names inside the root (the units it depends on, the
    // ExecReload command); it exits 0 even on warnings, so its output must be empty too.
    let units = root.path().join("usr/lib/systemd");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::create_dir_all(root.path().join("bin")).unwrap();
    let copied = Command::new("cp").arg("-r").arg("/lib/systemd/system").arg(&units).status().unwrap();
    assert!(copied.success());
    std::fs::copy("/bin/kill", root.path().join("bin/kill")).unwrap();
    let verify = Command::new("systemd-analyze").args(["verify", &format!("--root={dir}"), "/etc/systemd/system/lb.service"]).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
    assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    std::fs::remove_dir_all(root.path().join("usr/lib")).unwrap();
    std::fs::remove_dir_all(root.path().join("bin")).unwrap();

    // The default configuration: every key it mentions is a real flag with a valid value (the
    // commented lines uncommented), and as installed it only lacks a source.
    let installed_lb = root.path().join("usr/local/bin/lb");
    let config = root.path().join("etc/lb/lb.toml");
    let check = |path: &Path| Command::new(&installed_lb).arg("run").arg("--config").arg(path).arg("--check").output().unwrap();
    let as_installed = check(&config);
    assert_eq!(as_installed.status.code(), Some(64), "{as_installed:?}");
    assert!(String::from_utf8_lossy(&as_installed.stderr).contains("nothing to balance"), "{as_installed:?}");
    let text = std::fs::read_to_string(&config).unwrap();
    let uncommented: String = text
        .lines()
        .filter_map(|l| l.strip_prefix('#').filter(|rest| rest.contains(" = ") && !rest.starts_with(' ')))
        // Keys naming this machine's interfaces and addresses stay out.
        .filter(|l| !["iface", "node-ip", "pin-dir", "expose "].iter().any(|k| l.starts_with(k)))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(uncommented.lines().count() >= 10, "{uncommented}");
    let full = root.path().join("full.toml");
    std::fs::write(&full, &uncommented).unwrap();
    let valid = check(&full);
    let stderr = String::from_utf8_lossy(&valid.stderr);
    // Only the services file is missing on this machine; every key and value parsed.
    assert!(stderr.contains("/etc/lb/services.json") && !stderr.contains("lb.toml") && !stderr.contains("full.toml:"), "{stderr}");

    // A reinstall keeps an edited configuration; uninstall removes everything else and keeps it.
    std::fs::write(&config, format!("{text}\nmax-flows = 5000\n")).unwrap();
    xtask(&["install", "--root", dir, "--binary", binary.to_str().unwrap()]);
    assert!(std::fs::read_to_string(&config).unwrap().ends_with("max-flows = 5000\n"));
    std::fs::remove_file(&full).unwrap();
    xtask(&["uninstall", "--root", dir]);
    assert_eq!(files_under(root.path()), ["etc/lb/lb.toml"]);
    // The default one, unedited, goes too.
    std::fs::write(&config, &text).unwrap();
    xtask(&["uninstall", "--root", dir]);
    assert_eq!(files_under(root.path()), Vec::<String>::new());
}
