import os
import sys
from pathlib import Path

import pytest

PYTHON_DIR = Path(__file__).resolve().parents[1]
REPO = PYTHON_DIR.parent
sys.path.insert(0, str(PYTHON_DIR))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_DIFFUSERS = REPO / "fixtures" / "models" / "tiny-sd15-diffusers"
TINY_ONNX = REPO / "fixtures" / "models" / "tiny-sd15"
TINY_SDXL_DIFFUSERS = REPO / "fixtures" / "models" / "tiny-sdxl-diffusers"
TINY_SDXL_ONNX = REPO / "fixtures" / "models" / "tiny-sdxl"
SDXL_REFERENCE = REPO / "fixtures" / "reference" / "tiny-sdxl"

# SD3 and FLUX.1 (dev, schnell): the committed fixtures when they exist, else the same
# kind of tiny random-weight pipeline built here (tiny_dit.py), once per test session
TINY_SD3_DIFFUSERS = REPO / "fixtures" / "models" / "tiny-sd3-diffusers"
TINY_FLUX_DIFFUSERS = REPO / "fixtures" / "models" / "tiny-flux-diffusers"
TINY_FLUX_SCHNELL_DIFFUSERS = REPO / "fixtures" / "models" / "tiny-flux-schnell-diffusers"


def _dit_model(committed: Path, build, tmp_path_factory) -> Path:
    if (committed / "model_index.json").is_file() and (committed / "transformer").is_dir():
        return committed
    import tiny_dit

    return tiny_dit.save(build(), tmp_path_factory.mktemp("dit") / committed.name)


@pytest.fixture(scope="session")
def sd3_model(tmp_path_factory) -> Path:
    import tiny_dit

    return _dit_model(TINY_SD3_DIFFUSERS, lambda: tiny_dit.build_sd3(REPO), tmp_path_factory)


@pytest.fixture(scope="session")
def flux_model(tmp_path_factory) -> Path:
    import tiny_dit

    return _dit_model(TINY_FLUX_DIFFUSERS, lambda: tiny_dit.build_flux(REPO, guidance=True), tmp_path_factory)


@pytest.fixture(scope="session")
def flux_schnell_model(tmp_path_factory) -> Path:
    import tiny_dit

    return _dit_model(TINY_FLUX_SCHNELL_DIFFUSERS, lambda: tiny_dit.build_flux(REPO, guidance=False), tmp_path_factory)
