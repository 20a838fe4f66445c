//! What `render` writes: a YAML stream that parses back to the same
//! objects, and a folder of files with a kustomization.yaml.

mod support;

use std::path::PathBuf;

use anyaccel_deploy::{DeployError, RenderArgs, run, to_yaml_stream, write_dir};
use serde_json::Value;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anyaccel-deploy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn yaml_stream_parses_back_to_the_rendered_objects() {
    for path in support::example_configs() {
        let objs = support::render_example(&path);
        let stream = to_yaml_stream(&objs);
        let docs: Vec<Value> = serde_norway::Deserializer::from_str(&stream)
            .map(|d| serde::Deserialize::deserialize(d).expect("document"))
            .collect();
        assert_eq!(docs.len(), objs.len());
        for (doc, o) in docs.iter().zip(&objs) {
            assert_eq!(doc, o.value(), "{} changed through YAML", o.id());
        }
    }
}

#[test]
fn no_string_is_left_for_yaml_1_1_to_reinterpret() {
    // kubectl reads YAML 1.1: every scalar a string in JSON must be quoted
    // or plainly unambiguous in the text.
    let stream = to_yaml_stream(&support::seed());
    for line in stream.lines() {
        if let Some((_, v)) = line.split_once(": ") {
            let v = v.trim();
            let lower = v.to_ascii_lowercase();
            assert!(
                !["yes", "no", "on", "off", "y", "n"].contains(&lower.as_str()),
                "unquoted YAML 1.1 boolean: {line}"
            );
        }
    }
}

#[test]
fn out_dir_gets_one_file_per_object_and_a_kustomization() {
    let dir = temp_dir("out");
    let objs = support::seed();
    let written = write_dir(&objs, &dir).expect("write");
    assert_eq!(written.len(), objs.len() + 1);
    let k = std::fs::read_to_string(dir.join("kustomization.yaml")).expect("kustomization");
    let kv: Value = serde_norway::from_str(&k).expect("yaml");
    assert_eq!(kv["kind"], "Kustomization");
    let resources = kv["resources"].as_array().expect("resources");
    assert_eq!(resources.len(), objs.len());
    // Files sort in apply order: the Namespace first.
    let mut names: Vec<String> = resources
        .iter()
        .map(|r| r.as_str().unwrap_or("").to_string())
        .collect();
    let listed = names.clone();
    names.sort();
    assert_eq!(names, listed);
    assert!(names[0].contains("namespace"));
    for (name, o) in names.iter().zip(&objs) {
        let v: Value =
            serde_norway::from_str(&std::fs::read_to_string(dir.join(name)).expect("file"))
                .expect("yaml");
        assert_eq!(&v, o.value());
    }

    // Re-rendering a smaller fleet into the same folder leaves no stale file.
    let cpu = support::cpu();
    write_dir(&cpu, &dir).expect("rewrite");
    let count = std::fs::read_dir(&dir).expect("dir").count();
    assert_eq!(count, cpu.len() + 1);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn a_foreign_folder_is_not_overwritten() {
    let dir = temp_dir("foreign");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("notes.txt"), "mine").expect("write");
    let e = write_dir(&support::seed(), &dir).expect_err("refused");
    assert!(matches!(e, DeployError::OutDir { .. }), "{e}");
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).expect("kept"),
        "mine"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn run_renders_a_config_file_into_a_folder() {
    let dir = temp_dir("run");
    let args = RenderArgs {
        config: support::repo_root().join("deploy/examples/cpu-prometheus.toml"),
        plan: None,
        out: Some(dir.clone()),
    };
    run(&args).expect("run");
    assert!(dir.join("kustomization.yaml").exists());
    std::fs::remove_dir_all(&dir).expect("cleanup");

    // A bad config writes nothing.
    let bad = temp_dir("bad-config");
    std::fs::create_dir_all(&bad).expect("mkdir");
    let cfg = bad.join("cluster.toml");
    std::fs::write(&cfg, "[cluster]\nname = \"x\"\n").expect("write");
    let out = bad.join("out");
    let e = run(&RenderArgs {
        config: cfg,
        plan: None,
        out: Some(out.clone()),
    })
    .expect_err("invalid");
    assert!(!e.problems().is_empty());
    assert!(!out.exists());
    std::fs::remove_dir_all(&bad).expect("cleanup");
}

#[test]
fn rendering_is_deterministic() {
    let a = to_yaml_stream(&support::seed());
    let b = to_yaml_stream(&support::seed());
    assert_eq!(a, b);
}
