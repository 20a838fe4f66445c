#!/usr/bin/env python3
"""Slims a CUDA shared library to one GPU architecture without changing its layout.

ONNX Runtime's CUDA provider (libonnxruntime_providers_cuda.so, ~270 MB) carries
each kernel as machine code (cubin) for several architectures in its `.nv_fatbin`
section. The driver picks, per fat binary container, the cubin of the device's own
architecture (binary compatibility holds only within a major version, and this
build ships no PTX), and never reads the others. This tool zeroes the payloads of
the cubins for other architectures in every container that has one for `--arch`;
entry headers, sizes and offsets stay as they are, so the ELF file is unchanged
but for runs of zeros, which compress to nothing. Containers with no cubin of
`--arch` (e.g. Blackwell-only kernels) are left whole.

    python3 slim_fatbin.py IN.so OUT.so --arch 90 [--report report.json]

The fat binary layout (container header: magic 0xBA55ED50, u16 version, u16 header
size, u64 size of what follows; entries: u16 kind (1 PTX, 2 ELF), u16, u32 entry
header size, u64 padded payload size, u32 payload size, ..., u32 sm arch at 28) is
the one cuobjdump reads; --check re-reads the output and verifies every kept
payload is byte-identical to the input's.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import struct
import sys

MAGIC = 0xBA55ED50
KIND_PTX, KIND_ELF, KIND_ELF_ALT = 1, 2, 16


def sections(data: bytes) -> dict[str, tuple[int, int]]:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise SystemExit("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    raw = []
    for i in range(shnum):
        o = shoff + i * shentsize
        (name,) = struct.unpack_from("<I", data, o)
        off, size = struct.unpack_from("<QQ", data, o + 24)
        raw.append((name, off, size))
    stroff = raw[shstrndx][1]
    out = {}
    for name, off, size in raw:
        end = data.index(b"\0", stroff + name)
        out[data[stroff + name:end].decode()] = (off, size)
    return out


def containers(data: bytes, start: int, end: int):
    """Yields (container offset, [entries]); entry = dict(kind, arch, payload_off, payload_len)."""
    o = start
    while o + 16 <= end:
        magic, _version, hsize, size = struct.unpack_from("<IHHQ", data, o)
        if magic != MAGIC:
            # containers are laid end to end; tolerate alignment padding
            o += 8
            continue
        e, cend = o + hsize, o + hsize + size
        if cend > end:
            raise SystemExit(f"container at {o:#x} runs past the section's end")
        entries = []
        while e + 64 <= cend:
            kind, _v, esize = struct.unpack_from("<HHI", data, e)
            (padded,) = struct.unpack_from("<Q", data, e + 8)
            (plen,) = struct.unpack_from("<I", data, e + 16)
            (arch,) = struct.unpack_from("<I", data, e + 28)
            if esize == 0:
                break
            if e + esize + padded > cend or plen > padded:
                raise SystemExit(f"entry at {e:#x} runs past its container")
            entries.append({"kind": kind, "arch": arch, "off": e + esize, "len": plen})
            e += esize + padded
        yield o, entries
        o = cend


def slim(data: bytes, arch: int) -> tuple[bytearray, dict]:
    secs = sections(data)
    if ".nv_fatbin" not in secs:
        raise SystemExit("no .nv_fatbin section")
    start, size = secs[".nv_fatbin"]
    out = bytearray(data)
    zeroed = collections.Counter()
    kept = collections.Counter()
    n_cont = n_untouched = 0
    for _, entries in containers(data, start, start + size):
        n_cont += 1
        has = any(x["kind"] in (KIND_ELF, KIND_ELF_ALT) and x["arch"] == arch for x in entries)
        for x in entries:
            key = f"{'ptx' if x['kind'] == KIND_PTX else 'elf'}_sm{x['arch']}"
            if has and x["arch"] != arch:
                out[x["off"]:x["off"] + x["len"]] = bytes(x["len"])
                zeroed[key] += x["len"]
            else:
                kept[key] += x["len"]
        if not has:
            n_untouched += 1
    report = {
        "arch": arch,
        "containers": n_cont,
        "containers_without_arch_left_whole": n_untouched,
        "zeroed_bytes": dict(sorted(zeroed.items())),
        "kept_bytes": dict(sorted(kept.items())),
        "fatbin_bytes": size,
    }
    return out, report


def check(original: bytes, slimmed: bytes, arch: int) -> None:
    if len(original) != len(slimmed):
        raise SystemExit("sizes differ")
    secs = sections(original)
    start, size = secs[".nv_fatbin"]
    if original[:start] != slimmed[:start] or original[start + size:] != slimmed[start + size:]:
        raise SystemExit("bytes outside .nv_fatbin changed")
    a = list(containers(original, start, start + size))
    b = list(containers(slimmed, start, start + size))
    if [(o, [(x["kind"], x["arch"], x["off"], x["len"]) for x in e]) for o, e in a] != \
       [(o, [(x["kind"], x["arch"], x["off"], x["len"]) for x in e]) for o, e in b]:
        raise SystemExit("container or entry headers changed")
    for _, entries in a:
        for x in entries:
            if x["arch"] == arch:
                if original[x["off"]:x["off"] + x["len"]] != slimmed[x["off"]:x["off"] + x["len"]]:
                    raise SystemExit(f"a kept sm_{arch} payload at {x['off']:#x} changed")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--arch", type=int, default=90, help="SM architecture to keep (H100/H200: 90)")
    ap.add_argument("--report", help="write the report as JSON here")
    ap.add_argument("--no-check", action="store_true")
    args = ap.parse_args(argv)
    data = open(args.input, "rb").read()
    out, report = slim(data, args.arch)
    if not args.no_check:
        check(data, bytes(out), args.arch)
        report["checked"] = "headers and every kept payload identical to the input's"
    with open(args.output, "wb") as f:
        f.write(out)
    report["input_sha256"] = hashlib.sha256(data).hexdigest()
    report["output_sha256"] = hashlib.sha256(out).hexdigest()
    text = json.dumps(report, indent=1)
    if args.report:
        open(args.report, "w").write(text + "\n")
    print(text, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
