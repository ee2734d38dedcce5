//! Allocation of buffers whose size comes from a file.
//!
//! The rule every reader of outside data follows: a size a header declares (dimensions,
//! shapes, counts, data lengths) is checked against the bytes or lines actually present
//! before anything is allocated from it; a size that only follows from the data (a dense
//! matrix of nodes x features, one-hot widths) is computed with checked arithmetic and
//! allocated fallibly here, so an impossible or too large size ends in an error naming what
//! was being read, never in an overflow, a panic or an aborting allocation.

/// A zero-filled buffer of `dims.iter().product()` elements, allocated fallibly. `what` names
/// the buffer in the error (the caller adds the file). Errors when the product or the byte
/// size overflows, when it exceeds the memory available ([`check_fits`]) or when the
/// allocation fails (a memory limit such as `ulimit -v`).
pub fn try_zeros<T: Clone + Default>(dims: &[usize], what: &str) -> Result<Vec<T>, String> {
    let too_big = || format!("{what}: {dims:?} is too large to allocate");
    let len = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(too_big)?;
    let bytes = len.checked_mul(std::mem::size_of::<T>()).filter(|&b| b <= isize::MAX as usize).ok_or_else(too_big)?;
    check_fits(bytes, what)?;
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| format!("{what}: {dims:?} needs {bytes} bytes, which cannot be allocated"))?;
    v.resize(len, T::default());
    Ok(v)
}

/// The memory the system says a process could still get: on Linux `MemAvailable` plus
/// `SwapFree` from `/proc/meminfo`; `None` where that is unknown.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|k| k * 1024)
    };
    Some(field("MemAvailable:")? + field("SwapFree:").unwrap_or(0))
}

/// Refuses a buffer of `bytes` that the system could not hold (see [`available_memory`]):
/// Linux overcommits, so such an allocation would succeed and the process be killed when
/// the buffer is filled. `what` names the buffer in the error.
pub fn check_fits(bytes: usize, what: &str) -> Result<(), String> {
    match available_memory() {
        Some(avail) if bytes as u64 > avail => {
            Err(format!("{what}: needs {:.1} GiB, more than the {:.1} GiB of memory available", bytes as f64 / GIB, avail as f64 / GIB))
        }
        _ => Ok(()),
    }
}

const GIB: f64 = (1u64 << 30) as f64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_that_overflow_or_cannot_be_allocated_are_errors() {
        assert_eq!(try_zeros::<f32>(&[2, 3], "x").unwrap(), vec![0.0; 6]);
        assert_eq!(try_zeros::<f32>(&[], "x").unwrap().len(), 1);
        assert!(try_zeros::<u8>(&[0, usize::MAX], "x").unwrap().is_empty());
        let e = try_zeros::<f32>(&[1 << 40, 1 << 30], "features").unwrap_err();
        assert!(e.contains("features") && e.contains("too large"), "{e}");
        // Fits in usize, not in the address space: the allocator refuses, we report it.
        let e = try_zeros::<f32>(&[1 << 61], "features").unwrap_err();
        assert!(e.contains("features"), "{e}");
        let e = try_zeros::<u8>(&[1 << 62], "labels").unwrap_err();
        assert!(e.contains("labels") && (e.contains("cannot be allocated") || e.contains("available")), "{e}");
        #[cfg(target_os = "linux")]
        assert!(available_memory().is_some(), "Linux has /proc/meminfo");
        if let Some(avail) = available_memory() {
            // kB scaled to bytes: any machine that runs this has more than 256 MiB free.
            assert!(avail > 256 << 20, "{avail}");
            let need = avail as usize + (1 << 30);
            let e = check_fits(need, "matrix").unwrap_err();
            assert!(e.contains("matrix") && e.contains(&format!("needs {:.1} GiB", need as f64 / (1u64 << 30) as f64)), "{e}");
            check_fits(256 << 20, "matrix").unwrap();
        }
    }
}
