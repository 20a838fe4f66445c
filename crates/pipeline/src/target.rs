//! What `anyaccel compile` builds an artifact for. The names are defined here
//! once: `anyaccel compile --target`, the artifact's `anyaccel-manifest.json`
//! and the `target` of a deployment's `cluster.toml` artifacts all spell a
//! target this way.

use std::fmt;

/// The kind of artifact a model is compiled into, which decides the hardware
/// that serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompileTarget {
    /// ONNX, fp32: the CPU artifact (any batch and size); also runs on CUDA.
    OnnxFp32,
    /// onnx-fp32 with int8 UNet MatMul weights. CPU only: ONNX Runtime's
    /// dynamic int8 MatMul has no CUDA kernel.
    OnnxInt8,
    /// ONNX, fp32, as exported: x86_64 CPUs through OpenVINO (bf16 where the
    /// CPU has it).
    OnnxOpenVino,
    /// ONNX, fp16: the CUDA artifact.
    OnnxFp16,
    /// optimum-neuron compiled components for inf2/trn1 (static batch and size).
    Neuron,
}

impl CompileTarget {
    /// Every target, in the order choices are listed.
    pub const ALL: [CompileTarget; 5] = [
        CompileTarget::OnnxFp32,
        CompileTarget::OnnxInt8,
        CompileTarget::OnnxOpenVino,
        CompileTarget::OnnxFp16,
        CompileTarget::Neuron,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CompileTarget::OnnxFp32 => "onnx-fp32",
            CompileTarget::OnnxInt8 => "onnx-int8",
            CompileTarget::OnnxOpenVino => "onnx-openvino",
            CompileTarget::OnnxFp16 => "onnx-fp16",
            CompileTarget::Neuron => "neuron",
        }
    }

    /// The target named `name` exactly (case matters), if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for CompileTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(
            CompileTarget::ALL.map(CompileTarget::as_str),
            [
                "onnx-fp32",
                "onnx-int8",
                "onnx-openvino",
                "onnx-fp16",
                "neuron"
            ]
        );
        for t in CompileTarget::ALL {
            assert_eq!(CompileTarget::parse(&t.to_string()), Some(t));
        }
        assert_eq!(CompileTarget::parse("Neuron"), None);
        assert_eq!(CompileTarget::parse("onnx-int4"), None);
    }
}
