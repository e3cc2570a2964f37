//! `cargo xtask install|uninstall [--root DIR] [--binary PATH]`: `lb`, its systemd unit, a
//! commented default configuration (never overwritten), shell completions and the README, under
//! DIR (default `/`). Uninstall removes what install added, and the configuration only while it
//! is still the default (an edited one is kept and named).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

const UNIT: &str = include_str!("../../packaging/lb.service");
const DEFAULT_CONFIG: &str = include_str!("../../packaging/lb.toml");
const README: &str = include_str!("../../README.md");

/// Where things go, relative to the root.
const BINARY: &str = "usr/local/bin/lb";
const UNIT_PATH: &str = "etc/systemd/system/lb.service";
const CONFIG: &str = "etc/lb/lb.toml";
const BASH_COMPLETION: &str = "usr/local/share/bash-completion/completions/lb";
const DOC: &str = "usr/local/share/doc/lb/README.md";

pub struct Options {
    pub root: PathBuf,
    /// An `lb` to install instead of building one.
    pub binary: Option<PathBuf>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut options = Self { root: PathBuf::from("/"), binary: None };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--root" => options.root = PathBuf::from(value()?),
                "--binary" => options.binary = Some(PathBuf::from(value()?)),
                other => bail!("unknown argument {other:?} (expected --root DIR, --binary PATH)"),
            }
        }
        Ok(options)
    }
}

/// Installs `binary` and the files around it under `root`.
pub fn install(root: &Path, binary: &Path) -> Result<()> {
    let target = root.join(BINARY);
    write(&target, &fs::read(binary).with_context(|| format!("reading {}", binary.display()))?, 0o755)?;
    write(&root.join(UNIT_PATH), UNIT.as_bytes(), 0o644)?;
    let config = root.join(CONFIG);
    if config.exists() {
        println!("xtask: kept {} (an existing configuration is never overwritten)", config.display());
    } else {
        write(&config, DEFAULT_CONFIG.as_bytes(), 0o600)?;
    }
    let completions = Command::new(&target).args(["completions", "bash"]).output().context("running the installed lb")?;
    if !completions.status.success() {
        bail!("{} completions bash failed: {}", target.display(), String::from_utf8_lossy(&completions.stderr));
    }
    write(&root.join(BASH_COMPLETION), &completions.stdout, 0o644)?;
    write(&root.join(DOC), README.as_bytes(), 0o644)?;
    println!("xtask: installed lb under {}", root.display());
    if root == Path::new("/") {
        println!("xtask: edit /etc/lb/lb.toml, check it with `lb run --config /etc/lb/lb.toml --check`, then `systemctl daemon-reload && systemctl enable --now lb`");
    }
    Ok(())
}

/// Removes what `install` added under `root`.
pub fn uninstall(root: &Path) -> Result<()> {
    for path in [BINARY, UNIT_PATH, BASH_COMPLETION, DOC] {
        remove(&root.join(path))?;
    }
    let config = root.join(CONFIG);
    match fs::read_to_string(&config) {
        Ok(text) if text == DEFAULT_CONFIG => remove(&config)?,
        Ok(_) => println!("xtask: kept {} (edited since install)", config.display()),
        Err(_) => {}
    }
    for dir in ["etc/lb", "usr/local/share/doc/lb"] {
        // Only when empty: anything else in them is not ours.
        let _ = fs::remove_dir(root.join(dir));
    }
    println!("xtask: removed lb from {}", root.display());
    Ok(())
}

fn write(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path.parent().expect("install paths have a parent");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Through a temporary file and a rename: a running `lb` is replaced, not written into.
    let tmp = path.with_extension("xtask-new");
    fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path).with_context(|| format!("installing {}", path.display()))
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}
