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


def progress_until_idle(base_url: str, api_key: str) -> int:
    """Polls A1111's progress until nothing runs; the highest step seen."""
    import json
    import time
    import urllib.request

    highest = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        req = urllib.request.Request(
            f"{base_url}/sdapi/v1/progress?skip_current_image=true",
            headers={"Authorization": f"Bearer {api_key}"},
        )
        with urllib.request.urlopen(req) as r:
            p = json.load(r)
        if p["state"]["job_count"] == 0:
            return highest
        highest = max(highest, p["state"]["sampling_step"])
        time.sleep(0.005)
    raise AssertionError("the run did not stop after the client left")


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
            partial_images=1,
            extra_body={"strength": 0.8, "steps": 8, "seed": 7, **micro},
        )
        kinds = [e.type for e in stream]
    assert kinds == ["image_edit.partial_image", "image_edit.completed"], kinds

    # Hanging up mid-stream cancels the run: it never reaches its last step.
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
    highest = progress_until_idle(base_url, api_key)
    assert highest < 150, f"the run went on to step {highest} after the client left"

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
