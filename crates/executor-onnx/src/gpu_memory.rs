//! A GPU's memory, read through NVML (`libnvidia-ml.so.1`, which the NVIDIA
//! driver installs), so it works without any CUDA toolkit and whichever
//! process holds the memory. Read on demand: `/info` and each metrics scrape.

use std::ffi::{c_int, c_uint, c_ulonglong, c_void};
use std::sync::OnceLock;

/// Bytes on one GPU, as the driver counts them (every process's allocations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GpuMemory {
    pub total: u64,
    pub used: u64,
}

#[repr(C)]
#[derive(Default)]
struct NvmlMemory {
    total: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

type Init = unsafe extern "C" fn() -> c_int;
type HandleByIndex = unsafe extern "C" fn(c_uint, *mut *mut c_void) -> c_int;
type MemoryInfo = unsafe extern "C" fn(*mut c_void, *mut NvmlMemory) -> c_int;

struct Nvml {
    handle_by_index: HandleByIndex,
    memory_info: MemoryInfo,
}

/// NVML, loaded and initialised once; `None` where there is no NVIDIA driver.
fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| {
        // SAFETY: dlopen/dlsym with NUL-terminated names; the library stays
        // loaded for the life of the process (the handle is never closed), and
        // each symbol is cast to the signature NVML's header declares for it.
        unsafe {
            let lib = libc::dlopen(c"libnvidia-ml.so.1".as_ptr(), libc::RTLD_NOW);
            if lib.is_null() {
                return None;
            }
            let init = libc::dlsym(lib, c"nvmlInit_v2".as_ptr());
            let by_index = libc::dlsym(lib, c"nvmlDeviceGetHandleByIndex_v2".as_ptr());
            let memory = libc::dlsym(lib, c"nvmlDeviceGetMemoryInfo".as_ptr());
            if init.is_null() || by_index.is_null() || memory.is_null() {
                return None;
            }
            let init: Init = std::mem::transmute::<*mut c_void, Init>(init);
            if init() != 0 {
                tracing::debug!("NVML did not initialise; GPU memory is not reported");
                return None;
            }
            Some(Nvml {
                handle_by_index: std::mem::transmute::<*mut c_void, HandleByIndex>(by_index),
                memory_info: std::mem::transmute::<*mut c_void, MemoryInfo>(memory),
            })
        }
    })
    .as_ref()
}

/// GPU `index`'s memory, or `None` without a driver or such a GPU.
pub(crate) fn read(index: u32) -> Option<GpuMemory> {
    let nvml = nvml()?;
    let mut device: *mut c_void = std::ptr::null_mut();
    let mut memory = NvmlMemory::default();
    // SAFETY: NVML writes a device handle and a memory struct through the
    // pointers, which point at live locals of the declared types.
    unsafe {
        if (nvml.handle_by_index)(index, &mut device) != 0
            || (nvml.memory_info)(device, &mut memory) != 0
        {
            return None;
        }
    }
    Some(GpuMemory {
        total: memory.total,
        used: memory.used,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_a_driver_there_is_no_reading_and_no_error() {
        let driver = std::path::Path::new("/proc/driver/nvidia/gpus").exists();
        match super::read(0) {
            Some(m) => assert!(driver && m.total > 0 && m.used <= m.total, "{m:?}"),
            None => assert!(!driver, "a driver is present but NVML gave no reading"),
        }
        assert_eq!(super::read(u32::MAX), None, "no GPU has that index");
    }
}
