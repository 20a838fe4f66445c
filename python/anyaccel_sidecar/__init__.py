"""The anyaccel sidecar: runs Stable Diffusion model components (text encoder, UNet,
VAE decoder and encoder) for the Rust service, over gRPC on a Unix socket.

Everything else (tokenizer, schedulers, guidance, noise, batching, images) stays in
Rust, so an image is the same request on every accelerator. See
proto/anyaccel/sidecar/v1/sidecar.proto for the protocol.
"""

__version__ = "0.1.0"

SERVICE = "anyaccel.sidecar.v1.Sidecar"
