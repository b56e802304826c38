"""A tiny DreamLLM of the real classes, built offline and deterministically from a seed.

Same structure as the released model at toy sizes: a 2-layer LLaMA with the released vocabulary and special ids,
a 2-layer CLIP tower (32 px, 16 patches), 8 dream queries, and a 4-level UNet/VAE (VAE factor 8, 64 px images).
It serves the tests and the zero-setup default; it writes noise, not articles.
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from .dreamllm import CLIPVisionEmbedding, DreamEmbedding, DreamLLM, ModelInfo, StableDiffusionHead
from .sizes import SIZES, SMALL_SIZES, TINY_SIZES  # noqa: F401 (the sizes live there, light)
from .special_tokens import SpecialTokens
from .tokenizer import build_tokenizer

# The SD 2.1-base schedule; DDPM/DDIM/DPM-solver are built from it at generation time.
SD_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}

# A small deterministic corpus so the tokenizer has real word pieces for English prompts.
TOKENIZER_CORPUS = """
A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed,
and polite answers to the user's questions. USER: ASSISTANT: Write an illustrated article about the topic.
Write a how-to guide with steps. Write a news story. The history of the city, the river, the mountains and the sea.
How to bake bread, grow tomatoes, build a bird house, paint a room, travel by train, learn to swim.
red orange yellow green blue purple pink brown black white grey gold silver circle square triangle star heart
small large big tiny left right top bottom center middle background foreground picture image photo drawing
the a an of to in on at for with by from and or but is are was were be been has have had this that these those
it its they them their we our you your he she his her one two three four five six seven eight nine ten first
next then finally because however also very more most many much some any every each other new old good great
time year day people world life work place home school water food light color shape sun moon tree flower house
""".split("\n")

def _shape_output_head(llm: LlamaForCausalLM, tokenizer, seed: int, corpus: list[str]) -> None:
    """Give the random model's output head a shape that exercises the whole loop at any size: trained word pieces
    get random rows, unused and byte pieces none, and the `<dream_start>` and `</s>` rows are calibrated on the
    corpus' hidden states so a document places a picture every ~20 tokens and ends after ~80 on average.
    Random weights, but not an inert model: every path of the generation loop runs."""
    weight = llm.lm_head.weight.data
    vocab = tokenizer.get_vocab()
    first_piece = 3 + 256  # after <unk> <s> </s> and the byte pieces
    last_piece = max(i for t, i in vocab.items() if i < 32000 and not t.startswith("<unused_")) + 1
    g = torch.Generator().manual_seed(seed + 1)
    hidden = weight.shape[1]
    scale = (64 / hidden) ** 0.5  # the same logit spread at any width (post-norm states have norm ~ sqrt(hidden))
    weight.zero_()
    weight[first_piece:last_piece] = torch.randn(last_piece - first_piece, hidden, generator=g) * 0.5 * scale

    with torch.no_grad():
        states = torch.cat([llm.model(input_ids=torch.tensor([tokenizer(line).input_ids])).last_hidden_state[0]
                            for line in corpus])  # (N, H)
    best_piece = (states @ weight.T).max(dim=1).values  # (N,) the logit to beat at each position
    for token, rate in (("<dream_start>", 0.06), ("</s>", 0.004)):
        direction = torch.randn(hidden, generator=g)
        low, high = 0.0, 64.0  # bisect the row's length until it wins at `rate` of the positions
        for _ in range(40):
            mid = (low + high) / 2
            wins = ((states @ (mid * direction)) > best_piece).float().mean()
            low, high = (mid, high) if wins < rate else (low, mid)
        weight[tokenizer.convert_tokens_to_ids(token)] = high * direction


def build_tiny_model(seed: int = 0, name: str = "tiny-random", sizes: dict | None = None) -> DreamLLM:
    s = {**TINY_SIZES, **(sizes or {})}
    torch.manual_seed(seed)
    tokenizer = build_tokenizer([line for line in TOKENIZER_CORPUS if line.strip()])
    llm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=s["hidden"], intermediate_size=2 * s["hidden"],
        num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["heads"],
        max_position_embeddings=s["max_positions"], rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
        pad_token_id=32000, tie_word_embeddings=False))
    clip = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=s["clip_hidden"], intermediate_size=2 * s["clip_hidden"], num_hidden_layers=2,
        num_attention_heads=4, image_size=s["clip_image"], patch_size=s["clip_patch"], projection_dim=s["clip_hidden"]))
    vision = CLIPVisionEmbedding(clip, s["hidden"], select_layer=-2)
    dream = DreamEmbedding(s["queries"], s["hidden"])
    torch.nn.init.normal_(dream.dream_queries, std=0.02)  # as the reference initialises them
    unet = UNet2DConditionModel(
        sample_size=s["latent"], in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=tuple(s["unet_blocks"]), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=s["cross_dim"],
        attention_head_dim=8, norm_num_groups=8, use_linear_projection=True)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=s["latent"] * 8)
    head = StableDiffusionHead(unet, vae, s["hidden"], SD_SCHEDULER_CONFIG)
    _shape_output_head(llm, tokenizer, seed, [line for line in TOKENIZER_CORPUS if line.strip()])
    torch.nn.init.normal_(head.projector.projector.weight, std=0.02)
    torch.nn.init.normal_(vision.projector.projector.weight, std=0.02)
    torch.nn.init.zeros_(vision.projector.projector.bias)

    special = SpecialTokens.from_ids({t: tokenizer.convert_tokens_to_ids(t) for t in
                                      ("[PAD]", "<im_start>", "<im_end>", "<im_patch>", "<dream_start>", "<dream_end>")},
                                     bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id,
                                     num_dream_queries=s["queries"], num_image_patches=vision.num_patches)
    model = DreamLLM(llm, vision, dream, head, tokenizer, special, ModelInfo(name=name), plugin_config={})
    return model.eval().requires_grad_(False)
