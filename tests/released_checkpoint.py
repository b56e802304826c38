"""A DreamLLM checkpoint written the way the reference code writes one, not the way dreamgen does.

The reference (RunpeiDong/DreamLLM, transformers 4.35, diffusers 0.24) saves each part with `torch.save(state_dict)`
of its own module tree, in bf16:

    pytorch_model.bin            LlamaForCausalLM: model.embed_tokens.weight, model.layers.N.*, model.norm.weight,
                                 lm_head.weight   (or pytorch_model-0000N-of-0000M.bin + pytorch_model.bin.index.json)
    clip_vision_embedding.bin    CLIPVisionEmbedding: clip_vision_model.vision_model.* (transformers 4.35's
                                 CLIPVisionModel nests everything under `vision_model.`),
                                 projector.projector.{weight,bias}
    dream_embedding.bin          DreamEmbedding: dream_queries (1, Q, H)
    stable_diffusion_head.bin    StableDiffusionHead: vae.*, unet.*, projector.projector.weight
    config.json                  DreamLLMConfig: model_type "dreamllm", the wrong bos 0 / eos 1 / pad -1 it inherited
                                 from Vicuna's config, plugins_init_kwargs with `_target_`s, special_tokens2ids_dict
    tokenizer.model + added_tokens.json, special_tokens_map.json, tokenizer_config.json (sentencepiece, LLaMA-style)

The LLM and CLIP names are written out here by hand, from the 4.35 module structure, so this file does not follow
whatever the installed transformers calls them. UNet and VAE names come from diffusers' own classes (their names have
not changed since 0.24; `KNOWN_DIFFUSERS_KEYS` pins a few, so a rename would fail here, loudly). Nothing of dreamgen's
save code or modules is used.

The checkpoint folder holds what the hub repo holds and nothing more: no CLIP, UNet, VAE or scheduler configs
beside the weights; config.json names the tower and the head by hub id, with the "none" values the released one
has, so the loader must take them from the configs it knows by those ids. The tower and the head here are
toy-sized: `write_model_configs` writes their configs laid out as dreamgen/model/configs, for DREAMGEN_MODEL_CONFIGS
(tests/conftest.py points it there for every test; the real sizes ship in dreamgen/model/configs).
`rotary_buffers=True` also writes each layer's `self_attn.rotary_emb.inv_freq`, as the reference's own rotary class
registers it persistent (some released files have them, some not).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

# The released tokenizer's added tokens, in the order the reference adds them (ids follow the base vocabulary).
ADDED_TOKENS = ["[PAD]", "<im_start>", "<dream_end>", "<dream_start>", "<im_patch>", "<im_end>", "<image>", "<dream>"]
PLUGINS = "omni.models.dreamllm.modeling_plugins."
CLIP_HUB_ID = "openai/clip-vit-large-patch14"
SD_HUB_ID = "stabilityai/stable-diffusion-2-1-base"
# The folders of dreamgen/model/configs (and of DREAMGEN_MODEL_CONFIGS) these hub ids map to.
CLIP_CONFIGS, SD_CONFIGS = "clip-vit-large-patch14", "sd21-base"
KNOWN_DIFFUSERS_KEYS = ("unet.conv_in.weight", "unet.time_embedding.linear_1.weight",
                        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
                        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                        "unet.mid_block.resnets.0.conv1.weight", "unet.conv_out.weight",
                        "vae.encoder.mid_block.attentions.0.to_q.weight", "vae.quant_conv.weight",
                        "vae.post_quant_conv.weight", "vae.decoder.conv_out.weight")
CORPUS = """
A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed,
and polite answers to the user's questions. USER: ASSISTANT: Write an illustrated article about the topic.
The history of the city, the river, the mountains and the sea. How to bake bread and grow tomatoes.
red orange yellow green blue purple circle square triangle star picture image photo drawing background
the a an of to in on at for with by from and or but is are was were this that it they we you one two three
a red circle on a blue background. a small house by a lake. a cat sleeping on a warm window sill.
""".strip().split("\n")


@dataclass(frozen=True)
class Sizes:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 128
    max_positions: int = 512
    clip_hidden: int = 32
    clip_layers: int = 2
    clip_heads: int = 4
    clip_intermediate: int = 64
    clip_image: int = 32
    clip_patch: int = 8
    queries: int = 8
    unet_blocks: tuple = (32, 64)
    cross_dim: int = 32
    latent: int = 8  # 64 px pictures (VAE factor 8)
    vocab: int = 400  # sentencepiece pieces; the added tokens come after


TINY = Sizes()
# The memory bench's fixture: an LLM of 0.41B parameters (824 MB in bf16), toy-sized everything else.
BENCH = replace(TINY, hidden=1024, layers=32, heads=16, intermediate=2816, max_positions=2048)


# ------------------------------------------------------------------------------------------------- state dicts
def _normal(g: torch.Generator, *shape, std: float = 0.02) -> torch.Tensor:
    return (torch.randn(*shape, generator=g) * std).to(torch.bfloat16)


def _norm_weight(g: torch.Generator, n: int) -> torch.Tensor:
    return (1 + 0.1 * torch.randn(n, generator=g)).to(torch.bfloat16)


def llm_state(s: Sizes, vocab: int, g: torch.Generator, rotary_buffers: bool = False) -> dict:
    """LlamaForCausalLM's state dict as transformers 4.35 names it (rotary inv_freq is not persistent there; with
    `rotary_buffers`, as the reference's own rotary class registers it, it is)."""
    h, i = s.hidden, s.intermediate
    state = {"model.embed_tokens.weight": _normal(g, vocab, h)}
    for n in range(s.layers):
        p = f"model.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[f"{p}self_attn.{proj}.weight"] = _normal(g, h, h)
        state[f"{p}mlp.gate_proj.weight"] = _normal(g, i, h)
        state[f"{p}mlp.up_proj.weight"] = _normal(g, i, h)
        state[f"{p}mlp.down_proj.weight"] = _normal(g, h, i)
        state[f"{p}input_layernorm.weight"] = _norm_weight(g, h)
        state[f"{p}post_attention_layernorm.weight"] = _norm_weight(g, h)
        if rotary_buffers:
            d = h // s.heads
            state[f"{p}self_attn.rotary_emb.inv_freq"] = \
                (1.0 / 10000.0 ** (torch.arange(0, d, 2).float() / d)).to(torch.bfloat16)
    state["model.norm.weight"] = _norm_weight(g, h)
    state["lm_head.weight"] = _normal(g, vocab, h, std=0.5)  # a spread of logits, so sampling varies
    return state


def clip_state(s: Sizes, g: torch.Generator) -> dict:
    """CLIPVisionEmbedding's state dict: transformers 4.35's CLIPVisionModel (under `vision_model.`) + projector."""
    c, i = s.clip_hidden, s.clip_intermediate
    positions = (s.clip_image // s.clip_patch) ** 2 + 1
    v = "clip_vision_model.vision_model."
    state = {f"{v}embeddings.class_embedding": _normal(g, c),
             f"{v}embeddings.patch_embedding.weight": _normal(g, c, 3, s.clip_patch, s.clip_patch),
             f"{v}embeddings.position_embedding.weight": _normal(g, positions, c),
             f"{v}pre_layrnorm.weight": _norm_weight(g, c), f"{v}pre_layrnorm.bias": _normal(g, c)}
    for n in range(s.clip_layers):
        p = f"{v}encoder.layers.{n}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            state[f"{p}self_attn.{proj}.weight"] = _normal(g, c, c)
            state[f"{p}self_attn.{proj}.bias"] = _normal(g, c)
        state[f"{p}layer_norm1.weight"], state[f"{p}layer_norm1.bias"] = _norm_weight(g, c), _normal(g, c)
        state[f"{p}mlp.fc1.weight"], state[f"{p}mlp.fc1.bias"] = _normal(g, i, c), _normal(g, i)
        state[f"{p}mlp.fc2.weight"], state[f"{p}mlp.fc2.bias"] = _normal(g, c, i), _normal(g, c)
        state[f"{p}layer_norm2.weight"], state[f"{p}layer_norm2.bias"] = _norm_weight(g, c), _normal(g, c)
    state[f"{v}post_layernorm.weight"], state[f"{v}post_layernorm.bias"] = _norm_weight(g, c), _normal(g, c)
    state["projector.projector.weight"] = _normal(g, s.hidden, c)
    state["projector.projector.bias"] = _normal(g, s.hidden)
    return state


def unet_config(s: Sizes) -> dict:
    """A toy UNet of SD 2.1's kind (linear projections, per-block head dims), as diffusers 0.24 saves its config."""
    return {"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.24.0", "act_fn": "silu",
            "attention_head_dim": [2, 4], "block_out_channels": list(s.unet_blocks), "center_input_sample": False,
            "cross_attention_dim": s.cross_dim, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
            "in_channels": 4, "layers_per_block": 1, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
            "norm_num_groups": 8, "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4,
            "sample_size": s.latent, "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "upcast_attention": False, "use_linear_projection": True}


def vae_config(s: Sizes) -> dict:
    return {"_class_name": "AutoencoderKL", "_diffusers_version": "0.24.0", "act_fn": "silu",
            "block_out_channels": [8, 16, 16, 16], "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3,
            "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 8, "out_channels": 3,
            "sample_size": s.latent * 8, "up_block_types": ["UpDecoderBlock2D"] * 4}


# SD 2.1-base's scheduler/scheduler_config.json as the hub has it.
SCHEDULER_CONFIG = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
                    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
                    "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
                    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}


def head_state(s: Sizes, g: torch.Generator) -> dict:
    """StableDiffusionHead's state dict: `vae.*` and `unet.*` as diffusers names them, + the condition projector."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))  # diffusers' own init, seeded
    parts = {"vae": AutoencoderKL.from_config(vae_config(s)), "unet": UNet2DConditionModel.from_config(unet_config(s))}
    state = {f"{name}.{key}": value.to(torch.bfloat16) for name, module in parts.items()
             for key, value in module.state_dict().items()}
    missing = [k for k in KNOWN_DIFFUSERS_KEYS if k not in state]
    assert not missing, f"diffusers renamed its modules; the released names {missing} are gone"
    state["projector.projector.weight"] = _normal(g, s.cross_dim, s.hidden)
    return state


# ------------------------------------------------------------------------------------------------- tokenizer
def write_tokenizer(out: Path, vocab: int) -> dict:
    """A LLaMA-style sentencepiece model (BPE, byte fallback, no normalisation) trained offline, and the files
    transformers 4.35 writes beside it. Returns the added tokens' ids."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4), model_writer=model, vocab_size=vocab, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        add_dummy_prefix=True, allow_whitespace_only_pieces=True, character_coverage=1.0, unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    ids = {token: vocab + k for k, token in enumerate(ADDED_TOKENS)}
    (out / "added_tokens.json").write_text(json.dumps(ids, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps({
        "additional_special_tokens": ADDED_TOKENS[1:], "bos_token": "<s>", "eos_token": "</s>",
        "pad_token": "[PAD]", "unk_token": "<unk>"}, indent=2))
    decoder = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": True} for t, i in [("<unk>", 0), ("<s>", 1), ("</s>", 2), *ids.items()]}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder,
        "additional_special_tokens": ADDED_TOKENS[1:], "bos_token": "<s>", "clean_up_tokenization_spaces": False,
        "eos_token": "</s>", "legacy": False, "model_max_length": 2048, "pad_token": "[PAD]",
        "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>",
        "use_default_system_prompt": True}, indent=2))
    return ids


# ------------------------------------------------------------------------------------------------- config.json
def released_config(s: Sizes, vocab: int, ids: dict, clip_name: str, sd_name: str) -> dict:
    """config.json as DreamLLMConfig.save_pretrained writes it (transformers 4.35)."""
    h = s.hidden
    # "none" where a path is unset: the released config spells it as a string, not null
    clip = {"_target_": PLUGINS + "CLIPVisionEmbedding", "clip_vision_model_name_or_path": clip_name,
            "embed_hidden_size": h, "freeze_clip_vision_model": True, "freeze_embedding_layers": True,
            "freeze_projector": False, "local_files_only": False, "pretrained_model_name_or_path": "none",
            "projector_depth": 1, "projector_name_or_path": "none", "projector_type": "linear", "select_layer": -2,
            "use_additional_post_layernorm": False}
    dream = {"_target_": PLUGINS + "DreamEmbedding", "embed_hidden_size": h, "freeze_dream_queries": False,
             "num_dream_queries": s.queries, "pretrained_model_name_or_path": "none"}
    head = {"_target_": PLUGINS + "StableDiffusionHead", "center_crop": True, "diffusion_name_or_path": sd_name,
            "drop_prob": 0.1, "embed_hidden_size": h, "freeze_projector": False, "freeze_unet": True,
            "freeze_vae": True, "input_perturbation": 0.0, "local_files_only": False, "noise_offset": 0.0,
            "pretrained_model_name_or_path": "none", "projector_depth": 1, "projector_name_or_path": "none",
            "projector_type": "linear", "random_flip": True, "resolution": 512, "snr_gamma": None}
    return {
        "_name_or_path": "/data/checkpoints/dreamllm/stage3_sft/checkpoint-final",
        "architectures": ["DreamLLMForCausalMLM"], "attention_bias": False,
        "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": -1,  # wrong, as released (Vicuna's config)
        "hidden_act": "silu", "hidden_size": h, "initializer_range": 0.02, "intermediate_size": s.intermediate,
        "log_attentions": False, "log_hidden_states": False, "loss_scale_schedule": "none", "loss_weight_lm": 1.0,
        "loss_weight_vm": 10.0, "max_position_embeddings": s.max_positions, "model_type": "dreamllm",
        "num_attention_heads": s.heads, "num_hidden_layers": s.layers, "num_key_value_heads": s.heads,
        "plugins_init_kwargs": {"clip_vision_embedding": clip, "dream_embedding": dream, "stable_diffusion_head": head},
        "plugins_type": {"clip_vision_embedding": "embedding", "dream_embedding": "embedding",
                         "stable_diffusion_head": "head"},
        "pretraining_tp": 1, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000.0,
        "special_tokens2ids_dict": {"[PAD]": ids["[PAD]"], "additional_special_tokens": {
            t: ids[t] for t in ADDED_TOKENS[1:]}},
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.35.2",
        "use_cache": True, "vocab_size": vocab,
    }


def clip_hub_config(s: Sizes) -> dict:
    """The CLIP tower's config in the hub's full CLIPConfig form (text and vision), as a copied snapshot has it."""
    vision = {"hidden_size": s.clip_hidden, "intermediate_size": s.clip_intermediate,
              "num_hidden_layers": s.clip_layers,
              "num_attention_heads": s.clip_heads, "image_size": s.clip_image, "patch_size": s.clip_patch,
              "projection_dim": s.clip_hidden, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05,
              "model_type": "clip_vision_model", "num_channels": 3}
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
            "model_type": "clip_text_model", "vocab_size": 49408}
    return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": s.clip_hidden,
            "text_config": text, "vision_config": vision, "transformers_version": "4.35.2"}


# ------------------------------------------------------------------------------------------------- the whole
def write_released_checkpoint(out, sizes: Sizes = TINY, seed: int = 0, llm_shards: int = 1,
                              picture_rate: float | None = 0.3, rotary_buffers: bool = False) -> Path:
    """Write a DreamLLM checkpoint in the released layout into `out`. `llm_shards` > 1 writes the LLM as
    pytorch_model-0000N-of-0000M.bin + index, as save_pretrained shards a large model. `picture_rate` tilts the
    output head so `<dream_start>` wins at about that share of sampled steps (a random LLM would never ask for a
    picture); None leaves it random. Its CLIP and SD configs are not in it (write_model_configs)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    ids = write_tokenizer(out, sizes.vocab)
    vocab = sizes.vocab + len(ADDED_TOKENS)

    llm = llm_state(sizes, vocab, g, rotary_buffers)
    if picture_rate is not None:
        _tilt_towards_pictures(llm, ids["<dream_start>"], picture_rate)
    _save_llm(out, llm, llm_shards)
    del llm
    torch.save(clip_state(sizes, g), out / "clip_vision_embedding.bin")
    torch.save({"dream_queries": _normal(g, 1, sizes.queries, sizes.hidden, std=1.0)}, out / "dream_embedding.bin")
    torch.save(head_state(sizes, g), out / "stable_diffusion_head.bin")

    config = released_config(sizes, vocab, ids, CLIP_HUB_ID, SD_HUB_ID)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return out


def write_model_configs(folder, sizes: Sizes = TINY) -> Path:
    """The toy tower's and head's configs, laid out as dreamgen/model/configs, for DREAMGEN_MODEL_CONFIGS: the
    CLIP config in the hub's full CLIPConfig form, SD's unet/, vae/ and scheduler/ as its hub repo has them. Every
    Sizes here shares them (only the LLM's sizes vary)."""
    folder = Path(folder)
    files = {f"{CLIP_CONFIGS}/config.json": clip_hub_config(sizes),
             f"{SD_CONFIGS}/unet/config.json": unet_config(sizes), f"{SD_CONFIGS}/vae/config.json": vae_config(sizes),
             f"{SD_CONFIGS}/scheduler/scheduler_config.json": SCHEDULER_CONFIG}
    for name, config in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(config, indent=2))
    return folder


def _tilt_towards_pictures(llm: dict, dream_start: int, rate: float) -> None:
    """Make the `<dream_start>` row of the output head the mean of the text rows plus a bias direction shared by
    the final norm, scaled so it wins sometimes: a stand-in for training, so the fixture writes interleaved
    documents."""
    head = llm["lm_head.weight"].float()
    direction = llm["model.norm.weight"].float()  # post-norm states lean along the norm's weight
    head[dream_start] = direction / direction.norm() * rate * 40
    llm["lm_head.weight"] = head.to(torch.bfloat16)


def _save_llm(out: Path, state: dict, shards: int) -> None:
    if shards <= 1:
        torch.save(state, out / "pytorch_model.bin")
        return
    keys = list(state)
    per = -(-len(keys) // shards)
    weight_map, total = {}, 0
    for n in range(shards):
        name = f"pytorch_model-{n + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[n * per:(n + 1) * per]}
        torch.save(part, out / name)
        weight_map.update({k: name for k in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    (out / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
