//! Writing rendered objects: one YAML stream, or a folder with one file per
//! object and a kustomization.yaml.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::DeployError;
use crate::render::RenderedObject;

/// First line of the kustomization.yaml we write; marks a folder as ours so
/// a re-render may replace its files.
const MARKER: &str =
    "# Rendered by `anyaccel deploy render`; edit the cluster config, not these files.";

/// All objects as one multi-document YAML stream.
pub fn to_yaml_stream(objects: &[RenderedObject]) -> String {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&o.to_yaml());
    }
    out
}

pub fn write_yaml<W: Write>(objects: &[RenderedObject], mut w: W) -> Result<(), DeployError> {
    w.write_all(to_yaml_stream(objects).as_bytes())
        .and_then(|()| w.flush())
        .map_err(|source| DeployError::Write {
            path: PathBuf::from("<stdout>"),
            source,
        })
}

/// `NN-kind-name.yaml`: the index keeps `kubectl apply -f DIR` (which reads
/// files in name order) in the render order.
pub fn file_name(index: usize, o: &RenderedObject) -> String {
    let mut name = format!("{index:02}-{}-{}", o.kind().to_ascii_lowercase(), o.name());
    if o.namespace().is_some_and(|ns| ns == "kube-system") {
        name.push_str("-kube-system");
    }
    name.push_str(".yaml");
    name
}

/// Writes one file per object plus kustomization.yaml into `dir`, creating
/// it if needed. A folder we rendered before is cleaned of its old files
/// first (so removed pools do not linger); any other non-empty folder is
/// left alone and refused.
pub fn write_dir(objects: &[RenderedObject], dir: &Path) -> Result<Vec<PathBuf>, DeployError> {
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DeployError::Write { path, source }
    };
    if dir.exists() {
        let kustomization = dir.join("kustomization.yaml");
        let ours = std::fs::read_to_string(&kustomization)
            .map(|t| t.starts_with(MARKER))
            .unwrap_or(false);
        let entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(werr(dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        if !entries.is_empty() && !ours {
            return Err(DeployError::OutDir {
                path: dir.to_path_buf(),
                reason: "it is not empty and was not rendered by anyaccel (no kustomization.yaml of ours)".into(),
            });
        }
        for e in entries {
            let fname = e.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let rendered = fname == "kustomization.yaml"
                || (fname.ends_with(".yaml")
                    && fname.len() > 3
                    && fname.as_bytes()[..2].iter().all(u8::is_ascii_digit)
                    && fname.as_bytes()[2] == b'-');
            if rendered && e.is_file() {
                std::fs::remove_file(&e).map_err(werr(&e))?;
            }
        }
    } else {
        std::fs::create_dir_all(dir).map_err(werr(dir))?;
    }

    let mut written = Vec::new();
    let mut resources = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        let name = file_name(i, o);
        let path = dir.join(&name);
        std::fs::write(&path, o.to_yaml()).map_err(werr(&path))?;
        resources.push(name);
        written.push(path);
    }
    let mut k = format!(
        "{MARKER}\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n"
    );
    for r in &resources {
        k.push_str("  - ");
        k.push_str(r);
        k.push('\n');
    }
    let path = dir.join("kustomization.yaml");
    std::fs::write(&path, k).map_err(werr(&path))?;
    written.push(path);
    Ok(written)
}
