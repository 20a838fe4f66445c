"""The official OpenAI Python SDK against a running anyaccel server.

Usage: openai_sdk.py BASE_URL API_KEY INIT_IMAGE [--sdxl | --sd3 | --flux]
With --sdxl the server serves an SDXL model: requests also carry SDXL's
micro-conditioning fields. With --sd3 or --flux it serves a flow-matching
model (scheduler flow_match_euler); Flux takes no negative prompt.
Exits non-zero (with a message) on the first failed expectation.
"""
import base64
import io
import struct
import sys
import zlib

from openai import OpenAI


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def jobs_finished(base_url: str) -> dict[str, float]:
    """`anyaccel_jobs_finished_total` from /metrics, per status."""
    import re
    import urllib.request

    with urllib.request.urlopen(f"{base_url}/metrics") as r:
        text = r.read().decode()
    out = {"completed": 0.0, "failed": 0.0, "cancelled": 0.0}
    for line in text.splitlines():
        if line.startswith("anyaccel_jobs_finished_total{"):
            status = re.search(r'status="([a-z]+)"', line).group(1)
            out[status] += float(line.rsplit(" ", 1)[1])
    return out


def wait_for_cancel(base_url: str, before: dict[str, float]) -> dict[str, float]:
    """Polls /metrics until one more job ended (in any status); the counts then."""
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = jobs_finished(base_url)
        if sum(now.values()) > sum(before.values()):
            return now
        time.sleep(0.02)
    raise AssertionError(f"no job ended within 30 s of the client leaving: {jobs_finished(base_url)}")


def main() -> None:
    base_url, api_key, init_image = sys.argv[1:4]
    flags = sys.argv[4:]
    sdxl = "--sdxl" in flags
    flow = "--sd3" in flags or "--flux" in flags
    client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key)
    micro = {"original_size": "128x128", "crop_top_left": [8, 16], "target_size": "64x64"} if sdxl else {}
    extra = {"scheduler": "flow_match_euler" if flow else "euler_a"}
    if "--flux" not in flags:
        extra["negative_prompt"] = "blurry"

    result = client.images.generate(
        prompt="a watercolor lighthouse",
        n=2,
        size="64x64",
        response_format="b64_json",
        extra_body={"steps": 3, "seed": 1234, **extra, **micro},
    )
    assert len(result.data) == 2, result
    for image in result.data:
        assert png_size(base64.b64decode(image.b64_json)) == (64, 64)
    seeds = [image.model_extra["seed"] for image in result.data]
    assert seeds == [1234, 1235], seeds

    with open(init_image, "rb") as f:
        edited = client.images.edit(
            image=("init.png", f, "image/png"),
            prompt="the same scene at night",
            n=1,
            size="64x64",
            response_format="b64_json",
            extra_body={"strength": 0.6, "steps": 4, "seed": 7, **micro},
        )
    assert len(edited.data) == 1
    assert png_size(base64.b64decode(edited.data[0].b64_json)) == (64, 64)

    # Streaming: partial images in order, then the final image, all decodable
    # at the requested size.
    stream = client.images.generate(
        prompt="a watercolor lighthouse",
        size="64x64",
        stream=True,
        partial_images=2,
        extra_body={"steps": 6, "seed": 99, **extra, **micro},
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"], kinds
    assert [e.partial_image_index for e in events[:2]] == [0, 1], events
    for e in events:
        assert png_size(base64.b64decode(e.b64_json)) == (64, 64), e.type
    assert events[-1].usage is not None
    with open(init_image, "rb") as f:
        stream = client.images.edit(
            image=("init.png", f, "image/png"),
            prompt="the same scene at night",
            size="64x64",
            stream=True,
            partial_images=2,
            extra_body={"strength": 0.8, "steps": 8, "seed": 7, **micro},
        )
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds == ["image_edit.partial_image"] * 2 + ["image_edit.completed"], kinds
    assert [e.partial_image_index for e in events[:2]] == [0, 1], events
    for e in events:
        assert png_size(base64.b64decode(e.b64_json)) == (64, 64), e.type
    # The partial images are earlier states, not the final image again.
    assert events[0].b64_json != events[-1].b64_json

    # Hanging up mid-stream cancels the run: the server counts the job as
    # cancelled, and not as completed.
    before = jobs_finished(base_url)
    stream = client.images.generate(
        prompt="slow",
        size="128x128",
        stream=True,
        partial_images=3,
        extra_body={"steps": 150, **extra, **micro},
    )
    first = next(iter(stream))
    assert first.type == "image_generation.partial_image", first
    stream.close()
    after = wait_for_cancel(base_url, before)
    assert after["cancelled"] == before["cancelled"] + 1, (before, after)
    assert after["completed"] == before["completed"], (before, after)
    assert after["failed"] == before["failed"], (before, after)

    # An error surfaces as the SDK's typed exception with our message.
    try:
        client.images.generate(prompt="x", size="1000x1000")
    except Exception as e:  # openai.BadRequestError
        assert getattr(e, "status_code", None) == 400, e
        assert "not offered" in str(e), e
    else:
        raise AssertionError("a size the server does not offer was accepted")
    if sdxl:
        try:
            client.images.generate(prompt="x", size="64x64", extra_body={"original_size": "big"})
        except Exception as e:  # openai.BadRequestError
            assert getattr(e, "status_code", None) == 400, e
            assert "original_size" in str(e), e
        else:
            raise AssertionError("a malformed original_size was accepted")
    if "--flux" in flags:
        try:
            client.images.generate(prompt="x", size="64x64", extra_body={"negative_prompt": "blurry"})
        except Exception as e:  # openai.BadRequestError
            assert getattr(e, "status_code", None) == 400, e
            assert "negative_prompt" in str(e), e
        else:
            raise AssertionError("Flux accepted a negative prompt")
    print("openai sdk: ok")


if __name__ == "__main__":
    main()
