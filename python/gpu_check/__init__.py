"""The GPU check of issue 16 (scripts/gpu/check.sh): one prepared run that builds
random-weight models, compiles them with `anyaccel compile`, compares anyaccel's
images with diffusers' and times anyaccel against diffusers and torch.compile.
`check.py` orchestrates; `torch_worker.py` is the PyTorch side (run as its own
process); `models.py` builds the random-weight models. `--dry-run` runs the same
code on a CPU with the tiny fixtures."""
