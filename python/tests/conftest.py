import os
import sys
from pathlib import Path

PYTHON_DIR = Path(__file__).resolve().parents[1]
REPO = PYTHON_DIR.parent
sys.path.insert(0, str(PYTHON_DIR))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_DIFFUSERS = REPO / "fixtures" / "models" / "tiny-sd15-diffusers"
TINY_ONNX = REPO / "fixtures" / "models" / "tiny-sd15"
TINY_SDXL_DIFFUSERS = REPO / "fixtures" / "models" / "tiny-sdxl-diffusers"
TINY_SDXL_ONNX = REPO / "fixtures" / "models" / "tiny-sdxl"
SDXL_REFERENCE = REPO / "fixtures" / "reference" / "tiny-sdxl"
