"""`python -m anyaccel_sidecar --socket PATH --model MODEL --device cpu|cuda|neuron|auto`

Started and supervised by the Rust service (crate anyaccel-executor-remote). It
listens at once, answers Health with LOADING while the model loads (Neuron loads take
minutes), then SERVING. It exits when its parent dies, on SIGTERM/SIGINT, and with
status 3 when the model cannot be loaded.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import threading
import time

EXIT_LOAD_FAILED = 3


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="anyaccel_sidecar", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", required=True, help="Unix socket path to listen on")
    ap.add_argument("--model", required=True, help="diffusers folder or Hub id (cpu/cuda); optimum-neuron compiled folder (neuron)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "neuron"])
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"], help="torch backends only")
    ap.add_argument(
        "--compile", default="off", choices=["off", "default", "reduce-overhead", "max-autotune"],
        help="torch only: torch.compile the denoiser in this mode (reduce-overhead: CUDA graphs); each input shape compiles on first use",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument(
        "--static-batch", type=int, default=None,
        help="torch only: behave like a Neuron-compiled model with this fixed image batch (UNet and SD3 transformer: twice it; Flux: the same) ...",
    )
    ap.add_argument("--static-size", default=None, help="... and this one image size WxH (tests the client's padding)")
    ap.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone (default: the parent)")
    ap.add_argument("--log-level", default=os.environ.get("ANYACCEL_SIDECAR_LOG", "INFO"))
    return ap.parse_args(argv)


def _die_with_parent(parent: int) -> None:
    # Linux: ask the kernel to SIGTERM us when the parent thread exits ...
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    # ... and poll as well (the kernel signal follows the parent THREAD, not process)
    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                logging.getLogger("anyaccel_sidecar").warning("parent %d is gone; exiting", parent)
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    log = logging.getLogger("anyaccel_sidecar")
    _die_with_parent(args.parent_pid or os.getppid())

    from .backends import load
    from .server import SidecarService, start_server

    static = None
    if args.static_batch or args.static_size:
        if not (args.static_batch and args.static_size):
            raise SystemExit("--static-batch and --static-size go together")
        w, _, h = args.static_size.lower().partition("x")
        static = (args.static_batch, int(w), int(h))

    service = SidecarService()
    server = start_server(service, args.socket)
    log.info("listening on %s (pid %d); loading %s for %s", args.socket, os.getpid(), args.model, args.device)

    stopping = threading.Event()

    def on_signal(signum, frame):
        log.info("signal %d: stopping", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if not service.load(lambda: load(args.model, args.device, args.dtype, args.threads, static, args.compile)):
        # let a Health poll see FAILED and its message before the socket goes away
        stopping.wait(1.0)
        server.stop(grace=None)
        return EXIT_LOAD_FAILED
    stopping.wait()
    server.stop(grace=2.0).wait(3.0)
    try:
        os.unlink(args.socket)
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
