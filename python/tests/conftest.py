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

# SD3 and FLUX.1 (dev, schnell): diffusers folders written by scripts/fixtures/dit.py
TINY_SD3_DIFFUSERS = REPO / "fixtures" / "models" / "tiny-sd3-diffusers"
TINY_FLUX_DIFFUSERS = REPO / "fixtures" / "models" / "tiny-flux-diffusers"
TINY_FLUX_SCHNELL_DIFFUSERS = REPO / "fixtures" / "models" / "tiny-flux-schnell-diffusers"


@pytest.fixture(scope="session")
def sd3_model() -> Path:
    return TINY_SD3_DIFFUSERS


@pytest.fixture(scope="session")
def flux_model() -> Path:
    return TINY_FLUX_DIFFUSERS


@pytest.fixture(scope="session")
def flux_schnell_model() -> Path:
    return TINY_FLUX_SCHNELL_DIFFUSERS
