"""Offline test fixtures: tiny random-weight diffusers pipelines built from configs, with no download.

``tiny_pipeline(name)`` builds one of :data:`PIPELINE_NAMES` on CPU in well under a second and
``call_kwargs(name)`` gives the arguments of a 2-step call with classifier-free guidance on::

    from fastsample.testing import call_kwargs, tiny_pipeline

    pipe = tiny_pipeline("pixart", seed=0)
    images = pipe(**call_kwargs("pixart", seed=0)).images  # (1, 16, 16, 3) numpy array in [0, 1]

Every pipeline keeps the architecture family, latent channels, learned-sigma layout, CFG code path and
default scheduler configuration of the real checkpoint it stands for (SD 1.5, SDXL, DiT-XL/2, PixArt-α,
SD3, FLUX.1-dev); only the widths, depths and vocabularies are tiny. Weights are random (seeded).

Tokenizers are loaded from small vocabulary files that this module generates once per process into a
temporary directory: a byte-level BPE ``vocab.json`` + ``merges.txt`` for CLIP, and a Unigram
``tokenizer.json`` for T5. Nothing is fetched from a hub.

The component builders (``tiny_dit_transformer()``, ``tiny_vae()``, ...) are public so that code hooking
a single model can build it alone; ``tiny_pipeline(name, seed).<component>`` has the same weights as the
matching builder called with the seed listed in :data:`_SEED_OFFSETS` added to ``seed``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import torch

logger = logging.getLogger(__name__)

PIPELINE_NAMES = ("sd", "sdxl", "dit", "pixart", "sd3", "flux")

# Image side (pixels) produced by every fixture: latents are LATENT_SIZE x LATENT_SIZE and every tiny VAE
# upsamples by 2 (two blocks), so images are IMAGE_SIZE x IMAGE_SIZE. 16 is the smallest side that all six
# pipelines accept (SD/SDXL/PixArt need a multiple of 8, Flux a multiple of 2 * vae_scale_factor).
LATENT_SIZE = 8
VAE_SCALE_FACTOR = 2
IMAGE_SIZE = LATENT_SIZE * VAE_SCALE_FACTOR

CLIP_VOCAB_SIZE = 1000  # embedding rows of the tiny CLIP text encoders (>= generated vocabulary)
CLIP_MAX_LENGTH = 77  # as in every released CLIP text encoder; the pipelines pad to it
T5_VOCAB_SIZE = 256  # embedding rows of the tiny T5 encoders (>= generated vocabulary)
T5_MAX_LENGTH = 512
T5_EXTRA_IDS = 8

# Words that get whole-word tokens in both generated vocabularies; anything else is still encodable
# (CLIP falls back to bytes, T5 to single characters).
_WORDS = (
    *("a", "photo", "painting", "of", "an", "the", "cat", "dog", "squirrel", "eating", "burger"),
    *("astronaut", "riding", "horse", "on", "mars", "red", "blue", "green", "small", "big", "in"),
    *("with", "and", "blurry", "low", "quality", "bad", "ugly", "deformed"),
)

# Seed offset per component role, so that two text encoders of one pipeline are not identical copies.
_SEED_OFFSETS = {"denoiser": 0, "vae": 1, "text_encoder": 2, "text_encoder_2": 3, "text_encoder_3": 4}


# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------


def _require_transformers():
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - transformers is in the `test` extra
        raise ImportError(
            "fastsample.testing needs `transformers` for the text encoders and tokenizers: "
            "pip install 'fastsample[test]' (or pip install transformers sentencepiece protobuf)"
        ) from err
    return transformers


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG for a block without disturbing the caller's global RNG state."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _check_name(name: str) -> str:
    if name not in PIPELINE_NAMES:
        raise ValueError(f"unknown pipeline name {name!r}; expected one of {', '.join(PIPELINE_NAMES)}")
    return name


# --------------------------------------------------------------------------------------------------------
# generated tokenizer files
# --------------------------------------------------------------------------------------------------------

_FILES_LOCK = threading.Lock()
_FILES_DIR: str | None = None


def _bytes_to_unicode() -> list[str]:
    """The 256 printable characters GPT-2/CLIP byte-level BPE uses for the bytes 0..255, in byte order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in codes:
            codes[b] = 256 + extra
            extra += 1
    return [chr(codes[b]) for b in range(256)]


def _apply_merges(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly join the adjacent pair with the lowest merge rank."""
    pieces = list(pieces)
    while len(pieces) > 1:
        rank, i = min((ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(pieces, pieces[1:])))
        if rank == len(ranks):
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """A small CLIP byte-level BPE vocabulary: 256 byte symbols, their ``</w>`` forms, merges that make each
    word of ``_WORDS`` one token, then ``<|startoftext|>`` and ``<|endoftext|>`` last (as in the real CLIP).

    Each word is first encoded with the merges made so far; merges joining its remaining pieces left to
    right are appended, so no later merge can split an earlier word."""
    symbols = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab[s] = len(vocab)
    ranks: dict[tuple[str, str], int] = {}
    for word in _WORDS:
        pieces = _apply_merges([*word[:-1], word[-1] + "</w>"], ranks)
        merged = pieces[0]
        for piece in pieces[1:]:
            ranks.setdefault((merged, piece), len(ranks))
            merged += piece
            vocab.setdefault(merged, len(vocab))
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda item: item[1])]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    assert len(vocab) <= CLIP_VOCAB_SIZE, "generated CLIP vocabulary outgrew CLIP_VOCAB_SIZE"
    return vocab, merges


def t5_vocab() -> list[tuple[str, float]]:
    """A small T5 Unigram vocabulary (piece, log-probability): ``<pad>``, ``</s>``, ``<unk>`` first as in
    T5, then ``▁``, single characters (with and without the ``▁`` word-start marker) and whole words."""
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -6.0) for c in chars] + [("▁" + c, -6.5) for c in chars]
    pieces += [("▁" + w, -3.0 - 0.1 * len(w)) for w in _WORDS if len(w) > 1]
    assert len(pieces) + T5_EXTRA_IDS <= T5_VOCAB_SIZE, "generated T5 vocabulary outgrew T5_VOCAB_SIZE"
    return pieces


def tokenizer_files_dir() -> str:
    """Directory (created once per process, removed at exit) holding ``clip/`` and ``t5/`` tokenizer files."""
    global _FILES_DIR
    with _FILES_LOCK:
        if _FILES_DIR is not None and os.path.isdir(_FILES_DIR):
            return _FILES_DIR
        transformers = _require_transformers()
        root = tempfile.mkdtemp(prefix="fastsample-tokenizers-")
        atexit.register(shutil.rmtree, root, True)

        clip_dir = os.path.join(root, "clip")
        os.makedirs(clip_dir)
        vocab, merges = clip_vocab_and_merges()
        with open(os.path.join(clip_dir, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(os.path.join(clip_dir, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        with open(os.path.join(clip_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({"model_max_length": CLIP_MAX_LENGTH, "tokenizer_class": "CLIPTokenizer"}, f)

        # T5: the Unigram model is serialised by transformers' own T5 tokenizer class into tokenizer.json,
        # so the pre-tokenizer/post-processor match what T5 checkpoints ship.
        t5 = transformers.T5Tokenizer(
            vocab=t5_vocab(), extra_ids=T5_EXTRA_IDS, model_max_length=T5_MAX_LENGTH
        )
        t5.save_pretrained(os.path.join(root, "t5"))

        _FILES_DIR = root
        logger.debug("wrote tiny tokenizer files to %s", root)
        return root


def tiny_clip_tokenizer():
    """A ``CLIPTokenizer`` loaded from the generated ``vocab.json`` / ``merges.txt`` (max length 77)."""
    transformers = _require_transformers()
    return transformers.CLIPTokenizer.from_pretrained(os.path.join(tokenizer_files_dir(), "clip"))


def tiny_t5_tokenizer():
    """A T5 tokenizer (``T5Tokenizer``, which is ``T5TokenizerFast`` in transformers 5) from the generated
    ``tokenizer.json``."""
    transformers = _require_transformers()
    return transformers.T5Tokenizer.from_pretrained(os.path.join(tokenizer_files_dir(), "t5"))


# --------------------------------------------------------------------------------------------------------
# text encoders
# --------------------------------------------------------------------------------------------------------


def tiny_clip_text_encoder(
    seed: int = 0, hidden_size: int = 32, projection_dim: int | None = None
) -> torch.nn.Module:
    """A 2-layer ``CLIPTextModel`` (``CLIPTextModelWithProjection`` when ``projection_dim`` is given)."""
    transformers = _require_transformers()
    vocab, _ = clip_vocab_and_merges()
    eos = vocab["<|endoftext|>"]
    config = transformers.CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="quick_gelu",
        projection_dim=projection_dim or hidden_size,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=eos,
        pad_token_id=eos,
    )
    cls = transformers.CLIPTextModel if projection_dim is None else transformers.CLIPTextModelWithProjection
    with _seeded(seed):
        return cls(config).eval()


def tiny_t5_encoder(seed: int = 0, d_model: int = 32) -> torch.nn.Module:
    """A 2-layer ``T5EncoderModel`` with T5 v1.1's gated-GELU feed-forward (as in SD3, Flux and PixArt)."""
    transformers = _require_transformers()
    config = transformers.T5Config(
        vocab_size=T5_VOCAB_SIZE,
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    with _seeded(seed):
        return transformers.T5EncoderModel(config).eval()


# --------------------------------------------------------------------------------------------------------
# VAE, UNets, transformers
# --------------------------------------------------------------------------------------------------------


def tiny_vae(
    seed: int = 0,
    latent_channels: int = 4,
    scaling_factor: float = 0.18215,
    shift_factor: float | None = None,
    use_quant_conv: bool = True,
):
    """A two-block ``AutoencoderKL`` (spatial factor 2) with the real model's latent channels and scaling."""
    from diffusers import AutoencoderKL

    with _seeded(seed):
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            latent_channels=latent_channels,
            norm_num_groups=4,
            sample_size=IMAGE_SIZE,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_quant_conv,
        ).eval()


def tiny_sd_unet(seed: int = 0, cross_attention_dim: int = 32):
    """SD 1.5-shaped ``UNet2DConditionModel``: cross-attention down block, plain down block, mirrored up."""
    from diffusers import UNet2DConditionModel

    with _seeded(seed):
        return UNet2DConditionModel(
            sample_size=LATENT_SIZE,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            norm_num_groups=8,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=2,
        ).eval()


def tiny_sdxl_unet(
    seed: int = 0, cross_attention_dim: int = 64, pooled_dim: int = 32, time_embed_dim: int = 8
):
    """SDXL-shaped ``UNet2DConditionModel``: ``text_time`` added conditioning (pooled text embedding + 6
    micro-conditioning numbers), linear projections in the transformer blocks, no attention at the top."""
    from diffusers import UNet2DConditionModel

    with _seeded(seed):
        return UNet2DConditionModel(
            sample_size=LATENT_SIZE,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            norm_num_groups=8,
            transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            cross_attention_dim=cross_attention_dim,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=6 * time_embed_dim + pooled_dim,
        ).eval()


def tiny_dit_transformer(seed: int = 0):
    """DiT-XL/2-shaped ``DiTTransformer2DModel``: patch 2, adaLN-Zero, 1000 classes, learned sigma (8 out)."""
    from diffusers import DiTTransformer2DModel

    with _seeded(seed):
        return DiTTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=8,
            num_layers=2,
            sample_size=LATENT_SIZE,
            patch_size=2,
            num_embeds_ada_norm=1000,  # DiTPipeline hard-codes class 1000 as the null class
        ).eval()


def tiny_pixel_dit_transformer(
    seed: int = 0,
    sample_size: int = 8,
    patch_size: int = 2,
    num_layers: int = 2,
    num_classes: int = 10,
    out_channels: int = 3,
):
    """Pixel-space ``DiTTransformer2DModel`` for ``fastsample.pipelines.PixelDiTPipeline``: RGB in, ε (3) or
    ε and a learned variance (6) out, ``num_classes`` labels (the null class is ``num_classes``), width 16."""
    from diffusers import DiTTransformer2DModel

    with _seeded(seed):
        return DiTTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=3,
            out_channels=out_channels,
            num_layers=num_layers,
            sample_size=sample_size,
            patch_size=patch_size,
            num_embeds_ada_norm=num_classes,
        ).eval()


def tiny_pixart_transformer(seed: int = 0, caption_channels: int = 32):
    """PixArt-α-shaped ``PixArtTransformer2DModel``: adaLN-single, T5 caption projection, learned sigma."""
    from diffusers import PixArtTransformer2DModel

    with _seeded(seed):
        return PixArtTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=8,
            num_layers=2,
            cross_attention_dim=32,
            sample_size=LATENT_SIZE,
            patch_size=2,
            caption_channels=caption_channels,
        ).eval()


def tiny_sd3_transformer(seed: int = 0, joint_attention_dim: int = 64, pooled_projection_dim: int = 64):
    """SD3-shaped ``SD3Transformer2DModel``: MMDiT joint blocks, patch 2, 16 latent channels."""
    from diffusers import SD3Transformer2DModel

    with _seeded(seed):
        return SD3Transformer2DModel(
            sample_size=LATENT_SIZE,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=joint_attention_dim,
            caption_projection_dim=32,
            pooled_projection_dim=pooled_projection_dim,
            pos_embed_max_size=2 * LATENT_SIZE,
        ).eval()


def tiny_flux_transformer(seed: int = 0, joint_attention_dim: int = 32, pooled_projection_dim: int = 32):
    """FLUX.1-dev-shaped ``FluxTransformer2DModel``: one double-stream and two single-stream blocks, 2x2
    packed 16-channel latents (64 in), RoPE on 3 axes, and the distilled guidance embedding."""
    from diffusers import FluxTransformer2DModel

    with _seeded(seed):
        return FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=1,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=joint_attention_dim,
            pooled_projection_dim=pooled_projection_dim,
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        ).eval()


# --------------------------------------------------------------------------------------------------------
# schedulers (the configurations the released checkpoints ship)
# --------------------------------------------------------------------------------------------------------


def default_scheduler(name: str):
    """The scheduler the real checkpoint behind ``name`` ships with, with its configuration."""
    import diffusers

    _check_name(name)
    if name == "sd":  # runwayml/stable-diffusion-v1-5
        return diffusers.PNDMScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            skip_prk_steps=True,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type="epsilon",
        )
    if name == "sdxl":  # stabilityai/stable-diffusion-xl-base-1.0
        return diffusers.EulerDiscreteScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            prediction_type="epsilon",
            interpolation_type="linear",
            use_karras_sigmas=False,
            timestep_spacing="leading",
            steps_offset=1,
        )
    if name == "dit":  # facebook/DiT-XL-2-256: DiT's linear training schedule, sampled with DDIM
        return diffusers.DDIMScheduler(
            num_train_timesteps=1000,
            beta_start=0.0001,
            beta_end=0.02,
            beta_schedule="linear",
            clip_sample=False,
            set_alpha_to_one=True,
            steps_offset=0,
            prediction_type="epsilon",
        )
    if name == "pixart":  # PixArt-alpha/PixArt-XL-2-1024-MS
        return diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=1000,
            beta_start=0.0001,
            beta_end=0.02,
            beta_schedule="linear",
            algorithm_type="dpmsolver++",
            solver_order=2,
            solver_type="midpoint",
            lower_order_final=True,
            prediction_type="epsilon",
            timestep_spacing="linspace",
            steps_offset=0,
        )
    if name == "sd3":  # stabilityai/stable-diffusion-3-medium-diffusers
        return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    # flux: black-forest-labs/FLUX.1-dev (resolution-dependent shift)
    return diffusers.FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


# --------------------------------------------------------------------------------------------------------
# pipelines
# --------------------------------------------------------------------------------------------------------


def _components(name: str, seed: int) -> dict[str, Any]:
    s = {role: seed + offset for role, offset in _SEED_OFFSETS.items()}
    scheduler = default_scheduler(name)
    if name == "sd":
        return {
            "vae": tiny_vae(s["vae"]),
            "text_encoder": tiny_clip_text_encoder(s["text_encoder"], hidden_size=32),
            "tokenizer": tiny_clip_tokenizer(),
            "unet": tiny_sd_unet(s["denoiser"], cross_attention_dim=32),
            "scheduler": scheduler,
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }
    if name == "sdxl":
        # cross-attention sees both encoders' penultimate states concatenated (32 + 32); the added
        # conditioning gets text_encoder_2's projected pooled output (32).
        return {
            "vae": tiny_vae(s["vae"], scaling_factor=0.13025),
            "text_encoder": tiny_clip_text_encoder(s["text_encoder"], hidden_size=32),
            "text_encoder_2": tiny_clip_text_encoder(s["text_encoder_2"], hidden_size=32, projection_dim=32),
            "tokenizer": tiny_clip_tokenizer(),
            "tokenizer_2": tiny_clip_tokenizer(),
            "unet": tiny_sdxl_unet(s["denoiser"], cross_attention_dim=64, pooled_dim=32),
            "scheduler": scheduler,
        }
    if name == "dit":
        return {
            "transformer": tiny_dit_transformer(s["denoiser"]),
            "vae": tiny_vae(s["vae"]),
            "scheduler": scheduler,
        }
    if name == "pixart":
        return {
            "tokenizer": tiny_t5_tokenizer(),
            "text_encoder": tiny_t5_encoder(s["text_encoder"], d_model=32),
            "vae": tiny_vae(s["vae"]),
            "transformer": tiny_pixart_transformer(s["denoiser"], caption_channels=32),
            "scheduler": scheduler,
        }
    if name == "sd3":
        # CLIP hidden states (32 + 32) are zero-padded to the T5 width (64) and joined with T5's tokens;
        # the pooled projection is both CLIPs' projected outputs concatenated (32 + 32).
        return {
            "transformer": tiny_sd3_transformer(
                s["denoiser"], joint_attention_dim=64, pooled_projection_dim=64
            ),
            "scheduler": scheduler,
            "vae": tiny_vae(
                s["vae"], latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False
            ),
            "text_encoder": tiny_clip_text_encoder(s["text_encoder"], hidden_size=32, projection_dim=32),
            "tokenizer": tiny_clip_tokenizer(),
            "text_encoder_2": tiny_clip_text_encoder(s["text_encoder_2"], hidden_size=32, projection_dim=32),
            "tokenizer_2": tiny_clip_tokenizer(),
            "text_encoder_3": tiny_t5_encoder(s["text_encoder_3"], d_model=64),
            "tokenizer_3": tiny_t5_tokenizer(),
        }
    # flux: pooled CLIP output (32) conditions the modulation, T5 tokens (32 wide) the joint attention.
    return {
        "scheduler": scheduler,
        "vae": tiny_vae(
            s["vae"], latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False
        ),
        "text_encoder": tiny_clip_text_encoder(s["text_encoder"], hidden_size=32),
        "tokenizer": tiny_clip_tokenizer(),
        "text_encoder_2": tiny_t5_encoder(s["text_encoder_2"], d_model=32),
        "tokenizer_2": tiny_t5_tokenizer(),
        "transformer": tiny_flux_transformer(s["denoiser"], joint_attention_dim=32, pooled_projection_dim=32),
    }


_PIPELINE_CLASSES = {
    "sd": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "dit": "DiTPipeline",
    "pixart": "PixArtAlphaPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
}


def tiny_pipeline(
    name: str, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
):
    """Build a fresh tiny random-weight ``diffusers`` pipeline for ``name`` (one of :data:`PIPELINE_NAMES`).

    Weights are a deterministic function of ``seed``; the caller's global torch RNG is left untouched. The
    progress bar is disabled. Nothing is downloaded.
    """
    import diffusers

    _check_name(name)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    pipe = getattr(diffusers, _PIPELINE_CLASSES[name])(**_components(name, seed))
    # the components are built in float32 on CPU: only move/cast when asked to (a float32 cast would
    # make diffusers warn about casting models with `to()`)
    if dtype != torch.float32:
        pipe = pipe.to(dtype=dtype)
    if torch.device(device) != torch.device("cpu"):
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def expected_image_shape(name: str, batch_size: int = 1) -> tuple[int, int, int, int]:
    """Shape of ``pipe(**call_kwargs(name)).images`` (``output_type="np"``): (batch, height, width, 3)."""
    _check_name(name)
    return (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3)


def call_kwargs(name: str, seed: int = 0, num_inference_steps: int = 2, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a ``num_inference_steps``-step call of ``tiny_pipeline(name)`` with CFG on.

    Text pipelines get a prompt and a negative prompt with ``guidance_scale`` > 1; DiT gets
    ``class_labels`` with ``guidance_scale`` > 1. Flux's ``guidance_scale`` only feeds its distilled
    guidance embedding, so its real classifier-free guidance is ``true_cfg_scale`` > 1 with a negative
    prompt. ``generator`` is a fresh CPU generator seeded with ``seed``; images come back as numpy
    (``output_type="np"``). ``overrides`` replace or add entries.
    """
    _check_name(name)
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
    kwargs: dict[str, Any] = {
        "num_inference_steps": num_inference_steps,
        "generator": torch.Generator("cpu").manual_seed(seed),
        "output_type": "np",
    }
    if name == "dit":
        kwargs.update(class_labels=[1], guidance_scale=4.0)
    else:
        kwargs.update(
            prompt="a photo of a cat eating a burger",
            negative_prompt="blurry, low quality",
            height=IMAGE_SIZE,
            width=IMAGE_SIZE,
        )
    if name in ("sd", "sdxl"):
        kwargs["guidance_scale"] = 7.5
    elif name == "pixart":
        # resolution binning only knows the real sample sizes; captions are not cleaned (needs bs4/ftfy)
        kwargs.update(guidance_scale=4.5, use_resolution_binning=False, clean_caption=False)
    elif name == "sd3":
        kwargs["guidance_scale"] = 7.0
    elif name == "flux":
        # Flux pads T5 prompts to 512 tokens by default; 64 keeps the tiny call ~2x cheaper
        kwargs.update(true_cfg_scale=4.0, guidance_scale=3.5, max_sequence_length=64)
    kwargs.update(overrides)
    return kwargs
