//! One agent per pin directory: an exclusive POSIX record lock on a file under /run/lb/locks,
//! taken before any kernel change and held for the agent's life (the kernel drops it when the
//! process dies, however it dies). Other commands ask the kernel who holds it (F_GETLK names
//! the holder's pid) without taking it, so `lb status` never gets in a starting agent's way.

use std::{
    fs::{File, OpenOptions},
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Where lock files live.
pub const LOCK_DIR: &str = "/run/lb/locks";

#[derive(Debug, Error)]
pub enum LockError {
    #[error("another agent (pid {pid}) is running with --pin-dir {pin_dir}: stop it first (or use another --pin-dir)")]
    Held { pid: i32, pin_dir: PathBuf },
    #[error("lock file {path}")]
    Io { path: PathBuf, source: io::Error },
}

/// The held lock of one pin directory; released when dropped or when the process exits.
#[derive(Debug)]
pub struct PinDirLock {
    _file: File,
}

/// The lock file of `pin_dir`: one per directory, whichever way the path is spelled.
pub fn path_for(pin_dir: &Path) -> PathBuf {
    Path::new(LOCK_DIR).join(format!("{}.lock", crate::status::pin_dir_key(pin_dir)))
}

impl PinDirLock {
    /// Takes the lock of `pin_dir`, or says which process has it.
    pub fn acquire(pin_dir: &Path) -> Result<Self, LockError> {
        let path = path_for(pin_dir);
        let io_err = |source| LockError::Io { path: path.clone(), source };
        std::fs::create_dir_all(LOCK_DIR).map_err(io_err)?;
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io_err)?;
        let mut request = flock(libc::F_WRLCK);
        // SAFETY: F_SETLK reads the flock struct we own, on a descriptor we own.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &mut request) } == 0 {
            return Ok(Self { _file: file });
        }
        let err = io::Error::last_os_error();
        if matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) {
            let pid = holder_of(&file).map_err(io_err)?.unwrap_or(-1);
            return Err(LockError::Held { pid, pin_dir: pin_dir.to_owned() });
        }
        Err(io_err(err))
    }
}

/// The pid of the agent holding `pin_dir`'s lock, if one is running.
pub fn holder(pin_dir: &Path) -> io::Result<Option<i32>> {
    let file = match File::open(path_for(pin_dir)) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    holder_of(&file)
}

fn holder_of(file: &File) -> io::Result<Option<i32>> {
    let mut query = flock(libc::F_WRLCK);
    // SAFETY: F_GETLK fills the flock struct we own; the descriptor is ours. It takes no lock,
    // and as this process holds none on the file, closing `file` releases nothing.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut query) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((query.l_type != libc::F_UNLCK as libc::c_short).then_some(query.l_pid))
}

/// A whole-file lock request of `kind`.
fn flock(kind: libc::c_int) -> libc::flock {
    // SAFETY: flock is plain data; all zeroes means "from offset 0, whole file".
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock
}

/// Asks the agent `pid` to stop (SIGTERM) and waits until it has released `pin_dir`'s lock.
pub fn stop_holder(pin_dir: &Path, pid: i32, timeout: std::time::Duration) -> io::Result<bool> {
    // SAFETY: kill has no memory preconditions; pid came from the lock's holder.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err);
        }
    }
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if holder(pin_dir)?.is_none() {
            return Ok(true);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(false)
}
