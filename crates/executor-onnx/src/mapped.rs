//! Letting go of memory-mapped model files once OpenVINO no longer reads them.
//!
//! OpenVINO maps a model's external weights file and, on the first run, packs
//! the weights into its own buffers (bf16 where it computes in bf16). From then
//! on the mapped fp32 pages are never read again, yet they stay in the process's
//! resident set: 3.3 GB for SD 1.5's UNet, which put the whole process above
//! diffusers' peak (docs/benchmarks.md). Dropping them changes no data: they are
//! clean, read-only copies of the file, and a later access would fault them
//! back in from it.

use std::path::Path;

/// Drops the resident pages of every read-only mapping of a file under `dir`;
/// returns the bytes of address space released. A no-op outside Linux.
pub(crate) fn release(dir: &Path) -> u64 {
    #[cfg(target_os = "linux")]
    {
        let Ok(dir) = dir.canonicalize() else {
            return 0;
        };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return 0;
        };
        maps.lines()
            .filter_map(read_only_file_mapping)
            .filter(|(_, _, path)| Path::new(path).starts_with(&dir))
            .map(|(start, end, _)| {
                // SAFETY: a read-only, private file mapping holds only clean
                // pages; MADV_DONTNEED unmaps them and the next access re-reads
                // the file, so no one observes a change.
                let ok = unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
                } == 0;
                if ok { (end - start) as u64 } else { 0 }
            })
            .sum()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        0
    }
}

/// Runs `work` while a second thread keeps releasing `dir`'s mapped files, so
/// pages that `work` has finished reading do not pile up.
pub(crate) fn releasing_while<T>(dir: &Path, work: impl FnOnce() -> T) -> T {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                release(dir);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        let out = work();
        done.store(true, Ordering::Relaxed);
        out
    })
}

/// `(start, end, path)` of a `/proc/self/maps` line that maps a file
/// read-only and private (`r--p`); `None` for anything else.
fn read_only_file_mapping(line: &str) -> Option<(usize, usize, &str)> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    if fields.next()? != "r--p" {
        return None;
    }
    let path = fields.nth(3)?;
    if !path.starts_with('/') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    Some((
        usize::from_str_radix(start, 16).ok()?,
        usize::from_str_radix(end, 16).ok()?,
        path,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_private_file_mappings_are_taken() {
        let line = "7f00a000-7f00c000 r--p 00000000 fe:01 1234   /m/unet/model.onnx_data";
        assert_eq!(
            read_only_file_mapping(line),
            Some((0x7f00a000, 0x7f00c000, "/m/unet/model.onnx_data"))
        );
        for other in [
            "7f00a000-7f00c000 rw-p 00000000 fe:01 1234   /m/unet/model.onnx_data",
            "7f00a000-7f00c000 r-xp 00000000 fe:01 1234   /usr/lib/libopenvino.so",
            "7f00a000-7f00c000 r--s 00000000 fe:01 1234   /m/unet/model.onnx_data",
            "7f00a000-7f00c000 r--p 00000000 00:00 0      [vvar]",
            "7f00a000-7f00c000 r--p 00000000 00:00 0",
        ] {
            assert_eq!(read_only_file_mapping(other), None, "{other}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_mapped_file_leaves_the_resident_set_and_reads_back_the_same() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("anyaccel-mapped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("weights.bin");
        let len = 8 << 20;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a fresh read-only private mapping of a file this test owns.
        let ptr = unsafe {
            use std::os::fd::AsRawFd;
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        // SAFETY: the mapping is `len` bytes long and lives until munmap below.
        let mapped = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
        assert_eq!(mapped, &data[..]);
        let rss = || -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let kb = status
                .lines()
                .find_map(|l| l.strip_prefix("RssFile:"))
                .unwrap()
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap();
            kb * 1024
        };
        let before = rss();
        let released = release(&dir);
        let after = rss();
        assert!(released >= len as u64, "released {released}");
        assert!(
            before - after >= (len as u64) * 3 / 4,
            "RssFile {before} -> {after}"
        );
        assert_eq!(mapped, &data[..], "the contents read back unchanged");
        // SAFETY: unmapping what this test mapped; `mapped` is not used after.
        unsafe { libc::munmap(ptr, len) };
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
