"""Tiny random-weight SD3 and FLUX.1 pipelines for the sidecar's tests, built from configs.

Seeded, 2 transformer layers, 16-32 wide, a 16-channel VAE that halves three times
(64x64 images, 8x8 latents). The CLIP tokenizers are tiny-sdxl's; the T5 tokenizer is
a 55-piece Unigram (diffusers and optimum's exporter load every listed component); the
tests send token ids, as the Rust side does. When the committed fixtures (fixtures/models/tiny-sd3-diffusers, ...) exist,
conftest uses those instead; the tests read every dimension from the loaded configs.
"""

from __future__ import annotations

from pathlib import Path

VOCAB = 1000
LATENT = 16  # SD3's and Flux's VAE latent channels


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 8, 8, 8],
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=LATENT,
        sample_size=64,
        # SD3/Flux's VAE: no quant convs, latents scaled and shifted
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=1.5035,
        shift_factor=0.0609,
    ).eval()


def _clip(projection: bool, hidden: int = 16, projection_dim: int = 16):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        hidden_act="gelu",
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _t5(d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=VOCAB,
        d_model=d_model,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
    )
    return T5EncoderModel(cfg).eval()


def _clip_tokenizer(repo: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(repo / "fixtures" / "models" / "tiny-sdxl-diffusers" / "tokenizer"))


def _t5_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"\u2581{c}", -2.0) for c in letters] + [(c, -3.0) for c in letters]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0, model_max_length=512
    )


def build_sd3(repo: Path, seed: int = 0):
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    te, te2 = _clip(True), _clip(True)
    te3 = _t5(32)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=LATENT,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,  # T5's d_model (the CLIP pair, 16 + 16, is padded to it)
        caption_projection_dim=16,
        pooled_projection_dim=32,  # both CLIPs' text_embeds, 16 + 16
        out_channels=LATENT,
        pos_embed_max_size=16,
    ).eval()
    vae = _vae()
    tok = _clip_tokenizer(repo)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=te,
        tokenizer=tok,
        text_encoder_2=te2,
        tokenizer_2=tok,
        text_encoder_3=te3,
        tokenizer_3=_t5_tokenizer(),
    )


def build_flux(repo: Path, guidance: bool, seed: int = 0):
    """FLUX.1-dev-like (guidance_embeds) or FLUX.1-schnell-like."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed + (1 if guidance else 2))
    te = _clip(False)
    te2 = _t5(32)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT,  # 2x2 patches of the latents
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # T5's d_model
        pooled_projection_dim=16,  # CLIP's pooler_output
        guidance_embeds=guidance,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    ).eval()
    vae = _vae()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0 if not guidance else 3.0,
        use_dynamic_shifting=guidance,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=te,
        tokenizer=_clip_tokenizer(repo),
        text_encoder_2=te2,
        tokenizer_2=_t5_tokenizer(),
        transformer=transformer,
    )


def save(pipe, out: Path) -> Path:
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out
