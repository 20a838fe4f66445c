//! The CUDA libraries ONNX Runtime's CUDA provider links against (cudart,
//! cuBLAS, cuFFT, cuRAND, cuDNN, of the CUDA major it was built for), found
//! where the system loader looks or where the `nvidia-*` Python wheels put
//! them, and loaded before the provider so its own loading finds them.
//! What cannot be found is named, with where it was looked for.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// The shared libraries an ELF file names as `DT_NEEDED`, from its dynamic
/// section: which CUDA major a provider wants is read, not assumed.
pub(crate) fn needed(elf: &[u8]) -> Result<Vec<String>, String> {
    let bad = |what: &str| Err(format!("not a 64-bit little-endian ELF: {what}"));
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return bad("header");
    }
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    let (Some(shoff), Some(shentsize), Some(shnum)) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c))
    else {
        return bad("section table");
    };
    let table_end = usize::try_from(shoff)
        .ok()
        .and_then(|o| o.checked_add(usize::from(shnum) * usize::from(shentsize)));
    if table_end.is_none_or(|end| end > elf.len()) {
        return bad("section table past the end of the file");
    }
    let section = |i: usize| -> Option<(u32, u32, usize, usize)> {
        let at = usize::try_from(shoff).ok()? + i * usize::from(shentsize);
        Some((
            u32_at(at + 4)?,                         // sh_type
            u32_at(at + 40)?,                        // sh_link
            usize::try_from(u64_at(at + 24)?).ok()?, // sh_offset
            usize::try_from(u64_at(at + 32)?).ok()?, // sh_size
        ))
    };
    const SHT_DYNAMIC: u32 = 6;
    const DT_NEEDED: u64 = 1;
    let Some((_, link, offset, size)) = (0..usize::from(shnum))
        .filter_map(section)
        .find(|s| s.0 == SHT_DYNAMIC)
    else {
        return Ok(Vec::new()); // statically linked
    };
    let Some((_, _, strtab, strsize)) = section(link as usize) else {
        return bad("dynamic string table");
    };
    let mut names = Vec::new();
    for entry in (offset..offset + size).step_by(16) {
        let (Some(tag), Some(value)) = (u64_at(entry), u64_at(entry + 8)) else {
            return bad("dynamic section");
        };
        if tag == 0 {
            break;
        }
        if tag != DT_NEEDED {
            continue;
        }
        let start = strtab + usize::try_from(value).map_err(|_| "offset".to_string())?;
        let end = strtab + strsize;
        let Some(s) = elf.get(start..end.min(elf.len())) else {
            return bad("library name");
        };
        let name = s.split(|&b| b == 0).next().unwrap_or_default();
        names.push(String::from_utf8_lossy(name).into_owned());
    }
    Ok(names)
}

/// Where CUDA libraries live besides the loader's own path: the `nvidia-*`
/// wheels' `nvidia/<package>/lib` folders of the active or repo-local
/// Python environment and the user's and system's site-packages, and the
/// toolkit's usual folders.
pub(crate) fn search_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(v) = std::env::var_os(var) {
            roots.push(PathBuf::from(v).join("lib"));
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(PathBuf::from(home).join(".local/lib"));
    }
    roots.extend([".venv/lib", "/usr/local/lib", "/usr/lib"].map(PathBuf::from));
    let mut dirs = Vec::new();
    for root in roots {
        let Ok(pythons) = std::fs::read_dir(&root) else {
            continue;
        };
        for py in pythons.flatten() {
            if !py.file_name().to_string_lossy().starts_with("python3") {
                continue;
            }
            for packages in ["site-packages", "dist-packages"] {
                let Ok(nvidia) = std::fs::read_dir(py.path().join(packages).join("nvidia")) else {
                    continue;
                };
                let mut found: Vec<PathBuf> = nvidia
                    .flatten()
                    .map(|p| p.path().join("lib"))
                    .filter(|p| p.is_dir())
                    .collect();
                found.sort();
                dirs.extend(found);
            }
        }
    }
    dirs.extend(
        [
            "/usr/local/cuda/lib64",
            "/usr/local/cuda/targets/x86_64-linux/lib",
        ]
        .map(PathBuf::from),
    );
    dirs
}

/// The first `dir/name` that exists.
pub(crate) fn find(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn dlopen(what: &str) -> bool {
    let Ok(c) = CString::new(what) else {
        return false;
    };
    // SAFETY: dlopen with a NUL-terminated path; the handle is kept open for
    // the life of the process on purpose (the provider needs the library).
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    !handle.is_null()
}

/// Loads every library `provider` needs, from the loader's path or from
/// `dirs`, dependencies first (rounds until nothing more loads). Returns
/// the names nothing could load.
pub(crate) fn preload(provider: &Path, dirs: &[PathBuf]) -> Result<(), Vec<String>> {
    let bytes =
        std::fs::read(provider).map_err(|e| vec![format!("{}: {e}", provider.display())])?;
    let mut left = needed(&bytes).map_err(|e| vec![format!("{}: {e}", provider.display())])?;
    // ONNX Runtime itself is loaded already; the rest the loader finds or not.
    left.retain(|n| !n.starts_with("libonnxruntime"));
    loop {
        let before = left.len();
        left.retain(|name| {
            let loaded =
                dlopen(name) || find(name, dirs).is_some_and(|p| dlopen(&p.to_string_lossy()));
            !loaded
        });
        if left.is_empty() {
            return Ok(());
        }
        if left.len() == before {
            return Err(left);
        }
    }
}

/// Why the provider's libraries are missing, for `--device cuda`'s error.
pub(crate) fn missing_message(missing: &[String], dirs: &[PathBuf]) -> String {
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    format!(
        "ONNX Runtime's CUDA provider needs {} and neither the system loader (LD_LIBRARY_PATH, \
         ldconfig) nor the nvidia-* wheel and CUDA folders have them (searched: {}); install \
         the CUDA runtime, cuBLAS, cuFFT, cuRAND and cuDNN of that CUDA major (the nvidia-* \
         Python wheels or the toolkit), or add their folder to LD_LIBRARY_PATH",
        missing.join(", "),
        if searched.is_empty() {
            "nothing".into()
        } else {
            searched.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_s_needed_libraries_are_read_from_its_dynamic_section() {
        let me = std::fs::read("/proc/self/exe").expect("the test binary");
        let libs = needed(&me).expect("an ELF");
        assert!(libs.iter().any(|l| l.starts_with("libc.so")), "{libs:?}");
        assert!(
            needed(b"not an elf at all, just some bytes, long enough to pass the length check")
                .is_err()
        );
        let mut cut = me.clone();
        cut.truncate(200);
        assert!(
            needed(&cut).is_err(),
            "a truncated file is an error, not a panic"
        );
    }

    #[test]
    fn what_the_loader_finds_is_loaded_and_what_nothing_finds_is_named() {
        // The test binary's own needs (libc, libm, ...) are on the loader's path.
        assert_eq!(preload(Path::new("/proc/self/exe"), &[]), Ok(()));
        let dir = std::env::temp_dir().join(format!("anyaccel-cuda-{}", std::process::id()));
        let lib = dir.join("nvidia/cudnn/lib");
        std::fs::create_dir_all(&lib).expect("dir");
        std::fs::write(lib.join("libcudnn.so.9"), b"x").expect("file");
        let dirs = vec![dir.join("nvidia/cublas/lib"), lib.clone()];
        assert_eq!(
            find("libcudnn.so.9", &dirs),
            Some(lib.join("libcudnn.so.9"))
        );
        assert_eq!(find("libcudart.so.13", &dirs), None);
        let msg = missing_message(&["libcudart.so.13".into()], &dirs);
        assert!(
            msg.contains("libcudart.so.13") && msg.contains("nvidia/cudnn/lib"),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
