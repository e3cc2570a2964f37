//! The bpf_link operations a restart needs and aya 0.14 does not offer for a link opened from its
//! pin: which program a link runs, and replacing that program in place (BPF_LINK_UPDATE). The
//! kernel swaps the program of an XDP, TCX or cgroup link atomically: the hook is never empty,
//! so no packet or connect() goes unbalanced while a new agent takes over.

use super::sys::bpf;
use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

/// bpf(2) commands (include/uapi/linux/bpf.h, enum bpf_cmd).
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `union bpf_attr` for BPF_OBJ_GET.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `union bpf_attr` for BPF_LINK_UPDATE.
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `union bpf_attr` for BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
struct ProgGetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// The head of `struct bpf_link_info`: the kernel copies only as much as it is given. `target`
/// is the start of the per-type union: `cgroup.cgroup_id` (u64) for cgroup links, `xdp.ifindex`
/// / `tcx.ifindex` (u32, first) for XDP and TCX links.
#[repr(C)]
#[derive(Default)]
struct LinkInfoHead {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    target: [u8; 8],
}

/// What a link is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkTarget {
    /// A cgroup v2 directory, by id (its inode number).
    Cgroup(u64),
    /// A network interface, by index (in the caller's network namespace).
    Interface(u32),
}

/// A new file descriptor number from the kernel, owned from here on.
fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor to this process and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// A link opened from its pin.
pub struct PinnedLinkFd(OwnedFd);

impl PinnedLinkFd {
    pub fn open(path: &Path) -> io::Result<Self> {
        use std::os::unix::ffi::OsStrExt as _;
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut attr = ObjGetAttr { pathname: c_path.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
        Ok(Self(owned(bpf(BPF_OBJ_GET, &mut attr)?)))
    }

    /// The id of the program the link runs now.
    pub fn program_id(&self) -> io::Result<u32> {
        Ok(self.info()?.prog_id)
    }

    /// Whether the link is attached to `target` (a cgroup link to that cgroup, an XDP/TCX link
    /// to that interface).
    pub fn is_attached_to(&self, target: LinkTarget) -> io::Result<bool> {
        let info = self.info()?;
        Ok(match target {
            LinkTarget::Cgroup(id) => u64::from_ne_bytes(info.target) == id,
            LinkTarget::Interface(ifindex) => {
                let [a, b, c, d, ..] = info.target;
                u32::from_ne_bytes([a, b, c, d]) == ifindex
            }
        })
    }

    fn info(&self) -> io::Result<LinkInfoHead> {
        let mut head = LinkInfoHead::default();
        let mut attr = InfoAttr {
            bpf_fd: self.0.as_raw_fd() as u32,
            info_len: std::mem::size_of::<LinkInfoHead>() as u32,
            info: &mut head as *mut LinkInfoHead as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        Ok(head)
    }

    /// Makes the link run `program` instead of its current program, atomically.
    pub fn replace_program(&self, program: BorrowedFd<'_>) -> io::Result<()> {
        let mut attr = LinkUpdateAttr {
            link_fd: self.0.as_raw_fd() as u32,
            new_prog_fd: program.as_raw_fd() as u32,
            flags: 0,
            old_prog_fd: 0,
        };
        bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
    }
}

/// A loaded program by id: keeps it alive (e.g. to put it back on a link).
pub struct ProgramById(OwnedFd);

impl ProgramById {
    pub fn open(id: u32) -> io::Result<Self> {
        let mut attr = ProgGetFdAttr { prog_id: id, next_id: 0, open_flags: 0 };
        Ok(Self(owned(bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?)))
    }
}

impl AsFd for ProgramById {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
