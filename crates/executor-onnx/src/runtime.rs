//! Finding and loading the ONNX Runtime shared library, once per process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

use crate::DeviceRequest;

const LIB_NAME: &str = "libonnxruntime.so";

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found; looked at: {searched}. Run scripts/fetch-onnxruntime.sh \
         or set ORT_DYLIB_PATH to libonnxruntime.so"
    )]
    NotFound { searched: String },
    #[error("failed to load ONNX Runtime from {path}: {message}")]
    Load { path: PathBuf, message: String },
}

static ENV: OnceLock<Result<(PathBuf, Environment), RuntimeError>> = OnceLock::new();

/// Where the library will be (or was) loaded from: an explicit path, then
/// `ORT_DYLIB_PATH`, then beside the executable, then `.cache/onnxruntime/lib`
/// in the working directory or any parent (the repo's fetch script puts it there);
/// for `--device openvino`, `.cache/onnxruntime-openvino/lib` instead.
pub fn library_path(
    explicit: Option<&Path>,
    device: DeviceRequest,
) -> Result<PathBuf, RuntimeError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(LIB_NAME));
        candidates.push(dir.join("../lib").join(LIB_NAME));
    }
    let cache = match device {
        DeviceRequest::OpenVino => ".cache/onnxruntime-openvino/lib",
        _ => ".cache/onnxruntime/lib",
    };
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            candidates.push(dir.join(cache).join(LIB_NAME));
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| RuntimeError::NotFound {
            searched: std::iter::once("$ORT_DYLIB_PATH".to_string())
                .chain(candidates.iter().map(|p| p.display().to_string()))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Loads the library on first use; later calls return the first outcome.
pub(crate) fn ensure_loaded(
    explicit: Option<&Path>,
    device: DeviceRequest,
) -> Result<&'static Path, RuntimeError> {
    let loaded = ENV.get_or_init(|| {
        let path = library_path(explicit, device)?;
        if !path.is_file() {
            return Err(RuntimeError::NotFound {
                searched: path.display().to_string(),
            });
        }
        let load_err = |message: String| RuntimeError::Load {
            path: path.clone(),
            message,
        };
        let env = ort::init_from(&path)
            .map_err(|e| load_err(e.to_string()))?
            .with_name("anyaccel")
            .build()
            .map_err(|e| load_err(e.to_string()))?;
        tracing::info!(library = %path.display(), "loaded ONNX Runtime");
        Ok((path, env))
    });
    match loaded {
        Ok((path, _)) => Ok(path),
        Err(e) => Err(e.clone()),
    }
}

pub(crate) fn environment() -> Option<&'static Environment> {
    ENV.get().and_then(|r| r.as_ref().ok()).map(|(_, env)| env)
}
