"""The torch backend on tiny FLUX.1-dev-like (guidance_embeds) and FLUX.1-schnell-like
pipelines (a CLIPTextModel, a T5 encoder, FluxTransformer2DModel on 2x2-packed
latents, a 16-channel VAE) against diffusers' own FluxPipeline on the same folders:
its prompt encoding, and every call its denoising loop makes to the transformer
(recorded with a forward hook)."""

import numpy as np
import pytest
import torch

from anyaccel_sidecar.backends import Conditioning, load
from anyaccel_sidecar.errors import BadRequest

ATOL = 1e-5
PROMPT = "a red cat"
T5_TOKENS = 16
SIZE = 64  # pixels: 8x8 latents, 4x4 packed tokens (a VAE that halves three times)
TOKENS = (SIZE // 16) ** 2


@pytest.fixture(scope="module", params=["dev", "schnell"])
def variant(request, flux_model, flux_schnell_model):
    from diffusers import FluxPipeline

    folder = flux_model if request.param == "dev" else flux_schnell_model
    pipe = FluxPipeline.from_pretrained(str(folder)).to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    for part in pipe.components.values():
        if isinstance(part, torch.nn.Module):
            part.requires_grad_(False)
    return request.param, load(str(folder), "cpu", threads=1), pipe


def ids(tokenizer, prompt, length):
    return tokenizer(prompt, padding="max_length", max_length=length, truncation=True, return_tensors="np").input_ids.astype(np.int64)


def image_ids(height, width):
    """(0, row, column) per packed token, row-major: what the Rust side sends as img_ids."""
    grid = np.zeros((height // 16, width // 16, 3), np.float32)
    grid[..., 1] = np.arange(height // 16)[:, None]
    grid[..., 2] = np.arange(width // 16)[None, :]
    return grid.reshape(-1, 3)


def conditioning(backend, pipe, prompt, guidance=3.5, rows=1):
    clip = backend.encode_text("text_encoder", ids(pipe.tokenizer, prompt, 77), "last")
    t5 = backend.encode_text("text_encoder_2", ids(pipe.tokenizer_2, prompt, T5_TOKENS), "last")
    dev = backend.guidance_embeds
    return Conditioning(
        np.repeat(t5.hidden, rows, axis=0),
        pooled=np.repeat(clip.pooled, rows, axis=0),
        guidance=np.full(rows, guidance, np.float32) if dev else None,
        txt_ids=np.zeros((T5_TOKENS, 3), np.float32),
        img_ids=image_ids(SIZE, SIZE),
    )


def record(pipe, **kwargs):
    calls = []

    def hook(module, args, kw, out):
        calls.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kw.items()} | {"out": out[0].detach().clone()})

    handle = pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        pipe(**kwargs, output_type="latent", generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    return calls


def test_capabilities(variant):
    name, backend, _ = variant
    c = backend.capabilities()
    assert c.pipeline_class == "FluxPipeline" and c.per_sample_timesteps and c.max_text_len == 77
    assert c.components == ["text_encoder", "text_encoder_2", "transformer", "vae_decoder", "vae_encoder"]
    assert backend.family.packed and backend.guidance_embeds == (name == "dev")


def test_encoders_match_diffusers(variant):
    _, backend, pipe = variant
    clip = backend.encode_text("text_encoder", ids(pipe.tokenizer, PROMPT, 77), "last")
    want = pipe._get_clip_prompt_embeds(PROMPT, device="cpu")  # CLIPTextModel's pooler_output
    assert clip.pooled.shape == (1, pipe.text_encoder.config.hidden_size)
    np.testing.assert_allclose(clip.pooled, want.numpy(), atol=ATOL)
    t5 = backend.encode_text("text_encoder_2", ids(pipe.tokenizer_2, PROMPT, T5_TOKENS), "last")
    want = pipe._get_t5_prompt_embeds(PROMPT, max_sequence_length=T5_TOKENS, device="cpu")
    assert t5.pooled is None and t5.hidden.shape == (1, T5_TOKENS, pipe.text_encoder_2.config.d_model)
    np.testing.assert_allclose(t5.hidden, want.numpy(), atol=ATOL)


def test_denoise_steps_equal_the_pipelines_transformer_calls(variant):
    name, backend, pipe = variant
    cond = conditioning(backend, pipe, PROMPT, guidance=3.5)
    calls = record(pipe, prompt=PROMPT, num_inference_steps=3, guidance_scale=3.5, height=SIZE, width=SIZE,
                   max_sequence_length=T5_TOKENS)
    assert len(calls) == 3
    session = backend.begin_denoise(cond)
    for i, call in enumerate(calls):
        t = call["timestep"].numpy()
        # diffusers passes Flux's transformer t / 1000 = sigma, one per row
        assert t.shape == (1,) and np.allclose(t, pipe.scheduler.sigmas[i].item(), atol=1e-6)
        if name == "dev":
            np.testing.assert_array_equal(call["guidance"].numpy(), [3.5])
        else:
            assert call["guidance"] is None
        # the ids the Rust side computes are the pipeline's
        np.testing.assert_array_equal(call["img_ids"].numpy(), cond.img_ids)
        np.testing.assert_array_equal(call["txt_ids"].numpy(), cond.txt_ids)
        np.testing.assert_allclose(call["encoder_hidden_states"].numpy(), cond.encoder_hidden_states, atol=ATOL)
        np.testing.assert_allclose(call["pooled_projections"].numpy(), cond.pooled, atol=ATOL)
        sample = call["hidden_states"].numpy()
        assert sample.shape == (1, TOKENS, 64), "2x2 patches of 16 channels"
        assert backend.scale == 8
        out = backend.denoise_step(session, sample, t)
        assert out.shape == sample.shape
        np.testing.assert_allclose(out, call["out"].numpy(), atol=ATOL)
    assert backend.end_denoise(session)


def test_per_row_timesteps_guidance_and_select(variant):
    name, backend, pipe = variant
    rng = np.random.default_rng(0)
    cond = conditioning(backend, pipe, PROMPT, rows=3)
    cond.encoder_hidden_states[1:] += rng.standard_normal(cond.encoder_hidden_states[1:].shape).astype(np.float32)
    if name == "dev":
        cond.guidance[:] = [3.5, 1.0, 5.0]
    sample = rng.standard_normal((3, TOKENS, 64)).astype(np.float32)
    ts = np.array([1.0, 0.5, 0.02], np.float32)
    session = backend.begin_denoise(cond)
    together = backend.denoise_step(session, sample, ts)
    for i in range(3):
        one = backend.begin_denoise(cond.select([i]))
        np.testing.assert_allclose(together[i], backend.denoise_step(one, sample[i : i + 1], ts[i : i + 1])[0], atol=ATOL)
        assert backend.end_denoise(one)
    picked = backend.select_denoise(session, [2, 0])
    state = backend.sessions.get(picked)
    assert state.rows == 2 and tuple(state.img_ids.shape) == (16, 3) and tuple(state.txt_ids.shape) == (T5_TOKENS, 3)
    np.testing.assert_allclose(backend.denoise_step(picked, sample[[2, 0]], ts[[2, 0]]), together[[2, 0]], atol=ATOL)
    if name == "dev":
        # guidance reaches the transformer per row
        other = cond.select([0])
        other.guidance[:] = 5.0
        s = backend.begin_denoise(other)
        assert not np.allclose(backend.denoise_step(s, sample[:1], ts[:1]), together[:1], atol=1e-4)
        backend.end_denoise(s)
    assert backend.end_denoise(picked) and backend.end_denoise(session)


def test_flux_conditioning_is_checked(variant):
    name, backend, pipe = variant
    cond = conditioning(backend, pipe, PROMPT)
    if name == "dev":
        with pytest.raises(BadRequest, match="guidance-distilled .* needs `guidance`"):
            backend.begin_denoise(Conditioning(cond.encoder_hidden_states, cond.pooled, txt_ids=cond.txt_ids, img_ids=cond.img_ids))
        with pytest.raises(BadRequest, match="guidance: expected \\[1\\]"):
            backend.begin_denoise(Conditioning(cond.encoder_hidden_states, cond.pooled, guidance=np.ones(2, np.float32),
                                               txt_ids=cond.txt_ids, img_ids=cond.img_ids))
    else:
        with pytest.raises(BadRequest, match="no guidance embedding"):
            backend.begin_denoise(Conditioning(cond.encoder_hidden_states, cond.pooled, guidance=np.ones(1, np.float32),
                                               txt_ids=cond.txt_ids, img_ids=cond.img_ids))
    g = cond.guidance
    with pytest.raises(BadRequest, match="a Flux transformer needs `img_ids`"):
        backend.begin_denoise(Conditioning(cond.encoder_hidden_states, cond.pooled, guidance=g, txt_ids=cond.txt_ids))
    with pytest.raises(BadRequest, match="a Flux transformer needs `pooled`"):
        backend.begin_denoise(Conditioning(cond.encoder_hidden_states, guidance=g, txt_ids=cond.txt_ids, img_ids=cond.img_ids))
    with pytest.raises(BadRequest, match=f"txt_ids: 4 positions for {T5_TOKENS} text tokens"):
        backend.begin_denoise(Conditioning(cond.encoder_hidden_states, cond.pooled, guidance=g, txt_ids=cond.txt_ids[:4], img_ids=cond.img_ids))
    with pytest.raises(BadRequest, match="img_ids: expected \\[tokens, 3\\]"):
        backend.begin_denoise(Conditioning(cond.encoder_hidden_states, cond.pooled, guidance=g, txt_ids=cond.txt_ids, img_ids=cond.img_ids[:, :2]))
    with pytest.raises(BadRequest, match="`time_ids` was given"):
        backend.begin_denoise(Conditioning(cond.encoder_hidden_states, cond.pooled, time_ids=np.zeros((1, 6), np.float32),
                                           guidance=g, txt_ids=cond.txt_ids, img_ids=cond.img_ids))
    session = backend.begin_denoise(cond)
    with pytest.raises(BadRequest, match="packed latents"):
        backend.denoise_step(session, np.zeros((1, 16, 8, 8), np.float32), np.ones(1, np.float32))
    with pytest.raises(BadRequest, match=f"expected \\[1, {TOKENS}, channels\\] packed latents"):
        backend.denoise_step(session, np.zeros((1, 9, 64), np.float32), np.ones(1, np.float32))
    backend.end_denoise(session)


def test_vae_takes_unpacked_16_channel_latents(variant):
    _, backend, pipe = variant
    side = SIZE // backend.scale
    latents = torch.randn([2, 16, side, side], generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = pipe.vae.decode(latents, return_dict=False)[0].numpy()
    image = backend.vae_decode(latents.numpy())
    assert image.shape == (2, 3, SIZE, SIZE)
    np.testing.assert_allclose(image, want, atol=ATOL)
    assert backend.vae_encode(np.clip(image, -1, 1)).shape == (2, 32, side, side)


def test_static_shapes_emulation(flux_model):
    backend = load(str(flux_model), "cpu", threads=1, static=(1, 64, 64))
    c = backend.capabilities()
    # FLUX.1 is guidance-distilled: one transformer row per image (no CFG pair)
    assert c.component_batches == {"text_encoder": 1, "text_encoder_2": 1, "transformer": 1, "vae_decoder": 1, "vae_encoder": 1}
    hidden = np.zeros((1, 8, backend.cross_dim), np.float32)
    pooled = np.zeros((1, backend.pooled_dim), np.float32)
    with pytest.raises(BadRequest, match=f"fixed to 64x64 \\(static shapes\\), {TOKENS} tokens"):
        backend.begin_denoise(Conditioning(hidden, pooled, guidance=np.ones(1, np.float32), txt_ids=np.zeros((8, 3), np.float32),
                                           img_ids=image_ids(128, 64)))
    with pytest.raises(BadRequest, match="fixed to batch 1"):
        backend.begin_denoise(Conditioning(np.repeat(hidden, 2, 0), np.repeat(pooled, 2, 0), guidance=np.ones(2, np.float32),
                                           txt_ids=np.zeros((8, 3), np.float32), img_ids=image_ids(64, 64)))


def test_bf16(flux_model):
    full = load(str(flux_model), "cpu", threads=1)
    half = load(str(flux_model), "cpu", dtype="bf16", threads=1)
    assert {p.dtype for p in half.denoiser_model.parameters()} == {torch.bfloat16}
    rng = np.random.default_rng(3)
    cond = Conditioning(
        rng.standard_normal((2, 8, full.cross_dim)).astype(np.float32),
        pooled=rng.standard_normal((2, full.pooled_dim)).astype(np.float32),
        guidance=np.array([3.5, 1.0], np.float32),
        txt_ids=np.zeros((8, 3), np.float32),
        img_ids=image_ids(SIZE, SIZE),
    )
    sample = rng.standard_normal((2, TOKENS, 64)).astype(np.float32)
    outs = []
    for b in (full, half):
        s = b.begin_denoise(cond)
        outs.append(b.denoise_step(s, sample, np.array([0.8, 0.4], np.float32)))
        b.end_denoise(s)
    want, got = outs
    assert not np.array_equal(got, want) and np.sqrt(((got - want) ** 2).mean() / (want**2).mean()) < 0.05
