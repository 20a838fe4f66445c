//! The memory preflight on real model folders: refusals carry both numbers
//! and what would fit.

mod common;

use anyaccel_pipeline::Model;
use anyaccel_pipeline::memory::{MemoryBudget, weights_bytes};

const MIB: u64 = 1 << 20;

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn a_model_past_this_machine_is_refused_with_what_fits() {
    // tiny-sd15 plus a 64 GiB sparse weight file (no disk used): a model
    // bigger than any machine this runs on.
    let dir = std::env::temp_dir().join(format!("anyaccel-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&common::fixtures().join("models/tiny-sd15"), &dir);
    let model = Model::load_dir("huge", &dir).unwrap();
    // Added after loading, which hashes every weight byte (64 GiB of zeros take a while).
    let big = std::fs::File::create(dir.join("unet/model.onnx_data")).unwrap();
    big.set_len(64 << 30).unwrap();
    let weights = weights_bytes(&dir, &model.components());
    assert!(weights >= 64 << 30, "{weights}");
    let host = anyaccel_pipeline::memory::host_available().expect("/proc/meminfo");
    assert!(host.0 < weights, "this machine has more than 64 GiB free");
    let e = MemoryBudget::preflight(&model.info, &model.components(), &[(512, 512)], 4, host)
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("huge needs 64."), "{msg}");
    assert!(msg.contains("64.0 GiB of weights"), "{msg}");
    assert!(msg.contains("but the device has"), "{msg}");
    assert!(msg.contains("the weights alone do not fit"), "{msg}");
    // Half of 64 GiB does not fit this machine either; a quarter may.
    assert!(msg.contains("fp16"), "{msg}");
    assert_eq!(e.available, host.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn activations_decide_batch_and_size_advice() {
    let model = Model::load_dir("tiny", &common::fixtures().join("models/tiny-sd15")).unwrap();
    let (info, comps) = (&model.info, model.components());
    let weights = weights_bytes(&info.root, &comps);
    assert!(weights > MIB && weights < 4 * MIB, "{weights}");
    let any =
        MemoryBudget::preflight(info, &comps, &[(64, 64)], 1, (u64::MAX / 2, "test")).unwrap();
    let need = |n| weights + any.activations(info, 256, 256, n, true);
    let (one, eight) = (need(1), need(8));
    assert!(eight > one, "{one} {eight}");
    // Room for one but not eight: one passes, eight are refused with a batch that fits.
    let room = (one + eight) / 2;
    let b = MemoryBudget::preflight(info, &comps, &[(256, 256)], 1, (room, "test")).unwrap();
    assert!(b.check(info, 256, 256, 1, true).is_ok());
    let e = b.check(info, 256, 256, 8, true).unwrap_err();
    assert_eq!(e.need(), eight);
    assert!(
        e.to_string().contains("image(s) per batch fit at 256x256"),
        "{e}"
    );
    // Without guidance the same eight images need fewer rows.
    assert!(
        b.check(info, 256, 256, 8, false)
            .map_or_else(|e| e.need(), |_| 0)
            < eight
    );
    // Too little for even one 512x512 image: the advice is a smaller size.
    let e =
        MemoryBudget::preflight(info, &comps, &[(512, 512)], 1, (100 * MIB, "test")).unwrap_err();
    assert!(e.to_string().contains("one image fits up to about"), "{e}");
    assert!(e.activations > e.available - e.weights, "{e}");
}
