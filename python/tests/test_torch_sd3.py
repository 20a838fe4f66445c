"""The torch backend on a tiny SD3 pipeline (two CLIPTextModelWithProjection, a T5
encoder, SD3Transformer2DModel, a 16-channel VAE) against diffusers' own
StableDiffusion3Pipeline on the same folder: its prompt encoding, and every call
its denoising loop makes to the transformer (recorded with a forward hook)."""

import numpy as np
import pytest
import torch

from anyaccel_sidecar.backends import Conditioning, load
from anyaccel_sidecar.errors import BadRequest

ATOL = 1e-5
PROMPT, NEGATIVE = "a red cat", "blurry"
T5_TOKENS = 16


@pytest.fixture(scope="module")
def backend(sd3_model):
    return load(str(sd3_model), "cpu", threads=1)


@pytest.fixture(scope="module")
def pipe(sd3_model):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(str(sd3_model)).to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    for part in pipe.components.values():
        if isinstance(part, torch.nn.Module):
            part.requires_grad_(False)
    return pipe


def ids(tokenizer, prompt, length):
    return tokenizer(prompt, padding="max_length", max_length=length, truncation=True, return_tensors="np").input_ids.astype(np.int64)


def encode(backend, pipe, prompt):
    """The conditioning of one prompt, assembled as SD3's encode_prompt does (and as the
    Rust pipeline does): both CLIPs' penultimate layers side by side, zero-padded to
    T5's width, then T5's tokens after them; pooled = both text_embeds."""
    first = backend.encode_text("text_encoder", ids(pipe.tokenizer, prompt, 77), "penultimate")
    second = backend.encode_text("text_encoder_2", ids(pipe.tokenizer_2, prompt, 77), "penultimate")
    clip = np.concatenate([first.hidden, second.hidden], axis=-1)
    t5 = backend.encode_text("text_encoder_3", ids(pipe.tokenizer_3, prompt, T5_TOKENS), "last").hidden
    clip = np.pad(clip, ((0, 0), (0, 0), (0, t5.shape[-1] - clip.shape[-1])))
    return np.concatenate([clip, t5], axis=1), np.concatenate([first.pooled, second.pooled], axis=-1)


def record(pipe, **kwargs):
    """Runs the diffusers pipeline; returns every transformer call's inputs and output."""
    calls = []

    def hook(module, args, kw, out):
        calls.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kw.items()} | {"out": out[0].detach().clone()})

    handle = pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        pipe(**kwargs, output_type="latent", generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    return calls


def step(backend, cond, sample, timesteps):
    session = backend.begin_denoise(cond)
    try:
        return backend.denoise_step(session, sample, np.asarray(timesteps, np.float32))
    finally:
        assert backend.end_denoise(session)


def test_capabilities(backend):
    c = backend.capabilities()
    assert c.pipeline_class == "StableDiffusion3Pipeline" and c.per_sample_timesteps
    assert c.components == ["text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae_decoder", "vae_encoder"]
    assert c.max_text_len == 77 and backend.family.name == "sd3" and backend.denoiser == "transformer"


def test_encoders_match_diffusers(backend, pipe):
    for index, name in enumerate(("text_encoder", "text_encoder_2")):
        enc = backend.encode_text(name, ids(getattr(pipe, "tokenizer" if index == 0 else "tokenizer_2"), PROMPT, 77), "penultimate")
        want, want_pooled = pipe._get_clip_prompt_embeds(PROMPT, device="cpu", clip_model_index=index)
        cfg = getattr(pipe, name).config
        assert enc.hidden.shape == (1, 77, cfg.hidden_size) and enc.pooled.shape == (1, cfg.projection_dim)
        np.testing.assert_allclose(enc.hidden, want.numpy(), atol=ATOL)
        np.testing.assert_allclose(enc.pooled, want_pooled.numpy(), atol=ATOL)
        last = backend.encode_text(name, ids(pipe.tokenizer, PROMPT, 77), "last")
        assert not np.allclose(last.hidden, enc.hidden), "the penultimate layer is not the last"
    t5 = backend.encode_text("text_encoder_3", ids(pipe.tokenizer_3, PROMPT, T5_TOKENS), "last")
    want = pipe._get_t5_prompt_embeds(PROMPT, max_sequence_length=T5_TOKENS, device="cpu")
    assert t5.pooled is None and t5.hidden.shape == (1, T5_TOKENS, pipe.text_encoder_3.config.d_model)
    np.testing.assert_allclose(t5.hidden, want.numpy(), atol=ATOL)
    # T5 has no fixed length: longer than CLIP's 77 is fine, past diffusers' 512 is not
    assert backend.encode_text("text_encoder_3", np.ones((2, 100), np.int64), "last").hidden.shape[:2] == (2, 100)
    with pytest.raises(BadRequest, match="text_encoder_3 takes at most 512"):
        backend.encode_text("text_encoder_3", np.ones((1, 513), np.int64), "last")
    with pytest.raises(BadRequest, match="text_encoder takes at most 77"):
        backend.encode_text("text_encoder", np.ones((1, 78), np.int64), "last")


def test_denoise_steps_equal_the_pipelines_transformer_calls(backend, pipe):
    hidden, pooled = encode(backend, pipe, PROMPT)
    neg_hidden, neg_pooled = encode(backend, pipe, NEGATIVE)
    want = pipe.encode_prompt(PROMPT, PROMPT, PROMPT, negative_prompt=NEGATIVE, device="cpu", max_sequence_length=T5_TOKENS)
    np.testing.assert_allclose(hidden, want[0].numpy(), atol=ATOL)
    np.testing.assert_allclose(pooled, want[2].numpy(), atol=ATOL)
    np.testing.assert_allclose(neg_pooled, want[3].numpy(), atol=ATOL)

    calls = record(pipe, prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=3, guidance_scale=4.0,
                   height=64, width=64, max_sequence_length=T5_TOKENS)
    assert len(calls) == 3
    # classifier-free guidance: [negative, positive] rows, as the pipeline orders them
    cond = Conditioning(np.concatenate([neg_hidden, hidden]), pooled=np.concatenate([neg_pooled, pooled]))
    session = backend.begin_denoise(cond)
    for i, call in enumerate(calls):
        t = call["timestep"].numpy()
        # diffusers passes SD3's transformer t = sigma * 1000, one per row
        assert t.shape == (2,) and np.allclose(t, pipe.scheduler.sigmas[i].item() * 1000, atol=1e-3)
        np.testing.assert_allclose(call["encoder_hidden_states"].numpy(), cond.encoder_hidden_states, atol=ATOL)
        np.testing.assert_allclose(call["pooled_projections"].numpy(), cond.pooled, atol=ATOL)
        out = backend.denoise_step(session, call["hidden_states"].numpy(), t)
        assert out.shape == tuple(call["hidden_states"].shape) == (2, 16, 64 // backend.scale, 64 // backend.scale)
        np.testing.assert_allclose(out, call["out"].numpy(), atol=ATOL)
    assert backend.end_denoise(session)


def test_per_row_timesteps_and_select(backend, pipe):
    rng = np.random.default_rng(0)
    hidden, pooled = encode(backend, pipe, PROMPT)
    other, other_pooled = encode(backend, pipe, NEGATIVE)
    third = rng.standard_normal(hidden.shape).astype(np.float32)
    cond = Conditioning(np.concatenate([hidden, other, third]), pooled=np.concatenate([pooled, other_pooled, pooled * 0.5]))
    side = 64 // backend.scale
    sample = rng.standard_normal((3, 16, side, side)).astype(np.float32)
    ts = np.array([1000.0, 500.0, 20.0], np.float32)
    session = backend.begin_denoise(cond)
    together = backend.denoise_step(session, sample, ts)
    for i in range(3):
        alone = step(backend, cond.select([i]), sample[i : i + 1], ts[i : i + 1])
        np.testing.assert_allclose(together[i], alone[0], atol=ATOL)
    assert not np.allclose(step(backend, cond.select([0]), sample[:1], ts[2:]), together[:1], atol=1e-3), "t moves the output"
    picked = backend.select_denoise(session, [2, 0])
    np.testing.assert_allclose(backend.denoise_step(picked, sample[[2, 0]], ts[[2, 0]]), together[[2, 0]], atol=ATOL)
    with pytest.raises(BadRequest, match="expected \\[2, channels, h, w\\]"):
        backend.denoise_step(picked, sample, ts)
    with pytest.raises(BadRequest, match="not within the session's 3 rows"):
        backend.select_denoise(session, [3])
    assert backend.end_denoise(picked) and backend.end_denoise(session)


def test_sd3_conditioning_is_checked(backend, pipe):
    hidden, pooled = encode(backend, pipe, PROMPT)
    with pytest.raises(BadRequest, match="an SD3 transformer needs `pooled`"):
        backend.begin_denoise(Conditioning(hidden))
    with pytest.raises(BadRequest, match="`time_ids` was given, but an SD3 transformer takes only encoder_hidden_states, pooled"):
        backend.begin_denoise(Conditioning(hidden, pooled, time_ids=np.zeros((1, 6), np.float32)))
    with pytest.raises(BadRequest, match="`txt_ids` was given"):
        backend.begin_denoise(Conditioning(hidden, pooled, txt_ids=np.zeros((hidden.shape[1], 3), np.float32)))
    with pytest.raises(BadRequest, match=f"joint attention takes {hidden.shape[2]}"):
        backend.begin_denoise(Conditioning(hidden[..., :8], pooled))
    with pytest.raises(BadRequest, match=f"pooled_projections take {pooled.shape[1]}"):
        backend.begin_denoise(Conditioning(hidden, pooled[:, :8]))
    session = backend.begin_denoise(Conditioning(hidden, pooled))
    with pytest.raises(BadRequest, match="expected \\[1, channels, h, w\\]"):
        backend.denoise_step(session, np.zeros((1, 16, 64), np.float32), np.ones(1, np.float32))
    backend.end_denoise(session)


def test_vae_decode_and_encode(backend, pipe):
    side = 64 // backend.scale
    latents = torch.randn([1, 16, side, side], generator=torch.Generator().manual_seed(1))
    image = backend.vae_decode(latents.numpy())
    with torch.inference_mode():
        want = pipe.vae.decode(latents, return_dict=False)[0].numpy()
        params = pipe.vae.encode(torch.from_numpy(np.clip(want, -1, 1))).latent_dist.parameters.numpy()
    assert image.shape == (1, 3, 64, 64)
    np.testing.assert_allclose(image, want, atol=ATOL)
    got = backend.vae_encode(np.clip(image, -1, 1))
    assert got.shape == (1, 32, side, side), "mean and log-variance of 16 latent channels"
    np.testing.assert_allclose(got, params, atol=1e-4)


def test_bf16(sd3_model, backend, pipe):
    """Every weight in bf16 (diffusers 0.39 leaves SD3's transformer in fp32 under
    torch_dtype unless cast), and the step near fp32's."""
    half = load(str(sd3_model), "cpu", dtype="bf16", threads=1)
    assert half.capabilities().dtype == "bf16"
    assert {p.dtype for p in half.denoiser_model.parameters()} == {torch.bfloat16}
    hidden, pooled = encode(backend, pipe, PROMPT)
    side = 64 // backend.scale
    sample = np.random.default_rng(2).standard_normal((1, 16, side, side)).astype(np.float32)
    want = step(backend, Conditioning(hidden, pooled), sample, [700.0])
    got = step(half, Conditioning(hidden, pooled), sample, [700.0])
    assert got.dtype == np.float32 and not np.array_equal(got, want)
    assert np.sqrt(((got - want) ** 2).mean() / (want**2).mean()) < 0.05
