//! The raw bpf(2) calls aya 0.14 does not offer (link updates in `link.rs`, batched array reads).

use std::{io, os::fd::BorrowedFd};

/// bpf(2) command (include/uapi/linux/bpf.h, enum bpf_cmd).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Elements per BPF_MAP_LOOKUP_BATCH call.
const BATCH: u32 = 4096;

/// One bpf(2) call with `attr` as its attribute block. Returns the syscall's result.
pub(super) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, exclusively borrowed repr(C) prefix of `union bpf_attr` for
    // `cmd`, and the size passed is exactly its size, so the kernel reads and writes only it.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as u32) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `union bpf_attr` for the BPF_MAP_*_BATCH commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every element of an array map of `entries` elements, read with BPF_MAP_LOOKUP_BATCH: one
/// syscall per 4096 elements instead of one per element (65,536 backends read one by one took
/// most of a metrics scrape). For a per-CPU array `copies` is the number of possible CPUs and
/// each element comes as that many consecutive values; else 1. `V`'s size must be the map's
/// value size, for a per-CPU map a multiple of 8 (the kernel's per-CPU stride).
pub(super) fn read_array<V: aya::Pod + Default>(map: BorrowedFd<'_>, entries: u32, copies: usize) -> io::Result<Vec<V>> {
    assert!(copies == 1 || std::mem::size_of::<V>().is_multiple_of(8), "per-CPU values are 8-byte strided");
    Ok(lookup_batch::<u32, V>(map, entries as usize, copies)?.1)
}

/// Up to `limit` entries of a hash map (LRU included), read in batches as [`read_array`]. `K`
/// and `V` must be the map's key and value, whose sizes are the kernel's strides here.
pub(super) fn read_hash<K: aya::Pod + Default, V: aya::Pod + Default>(map: BorrowedFd<'_>, limit: usize) -> io::Result<Vec<(K, V)>> {
    let (keys, values) = lookup_batch::<K, V>(map, limit, 1)?;
    Ok(keys.into_iter().zip(values).collect())
}

/// Up to `limit` (key, `copies` values) elements of a map, BATCH per call; the batch cursor is
/// a u32 for arrays (an index) and hash maps (a bucket).
fn lookup_batch<K: aya::Pod + Default, V: aya::Pod + Default>(map: BorrowedFd<'_>, limit: usize, copies: usize) -> io::Result<(Vec<K>, Vec<V>)> {
    let (mut all_keys, mut all_values) = (Vec::new(), Vec::new());
    for_each_batch::<K, V>(map, copies, |keys, values| {
        all_keys.extend_from_slice(keys);
        all_values.extend_from_slice(values);
        all_keys.len() < limit
    })?;
    all_keys.truncate(limit);
    all_values.truncate(limit.saturating_mul(copies));
    Ok((all_keys, all_values))
}

/// Every element of a map in batches of BATCH (keys, and `copies` values per key as in
/// [`read_array`]), handed to `each` one batch at a time (so a whole table is never held at
/// once), until `each` returns false.
pub(super) fn for_each_batch<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: BorrowedFd<'_>,
    copies: usize,
    mut each: impl FnMut(&[K], &[V]) -> bool,
) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let (mut position, mut next) = (0u32, 0u32);
    let mut first = true;
    // Always a whole batch: a hash map refuses (ENOSPC) a count smaller than the bucket it is
    // at; callers cut any surplus.
    let mut keys = vec![K::default(); BATCH as usize];
    let mut values = vec![V::default(); BATCH as usize * copies];
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &position as *const u32 as u64 },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // The kernel writes at most `count` keys and `count` × `copies` values into the buffers
        // the attribute points at, both sized for that; ENOENT means it reached the end.
        let done = match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(_) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        let n = attr.count as usize;
        if !each(&keys[..n], &values[..n * copies]) || done || n == 0 {
            return Ok(());
        }
        position = next;
        first = false;
    }
}

/// The `entries` elements of a BPF_F_MMAPABLE array map, copied out of a read-only mapping
/// that lasts only for the copy (so reading does not grow the process's memory).
pub(super) fn read_mapped<V: aya::Pod + Default>(map: BorrowedFd<'_>, entries: u32) -> io::Result<Vec<V>> {
    use std::os::fd::AsRawFd as _;
    let len = entries as usize * std::mem::size_of::<V>();
    if len == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: a new read-only shared mapping (null hint: no existing memory is replaced) of an
    // mmapable array's fd from offset 0, `len` bytes, which the array holds (`entries` elements
    // of V's size: the map's value size, a multiple of 8, so its stride); failure is MAP_FAILED.
    let base = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, map.as_raw_fd(), 0) };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let mut out = vec![V::default(); entries as usize];
    // SAFETY: `base` maps `len` readable bytes, page-aligned (so aligned for V); `out` is this
    // process's heap memory of exactly `len` bytes, disjoint from the mapping. Every bit pattern
    // is a valid V (aya::Pod).
    unsafe { std::ptr::copy_nonoverlapping(base.cast::<u8>(), out.as_mut_ptr().cast::<u8>(), len) };
    // SAFETY: exactly what was mapped above; nothing refers into it any more.
    unsafe { libc::munmap(base, len) };
    Ok(out)
}
