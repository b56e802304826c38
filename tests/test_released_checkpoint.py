"""A checkpoint written the way the reference code writes one (tests/released_checkpoint.py: transformers-4.35
names, bf16 pickles, the released config.json's quirks, a sentencepiece tokenizer) loads as it is, writes
interleaved documents, and paints what diffusers' own pipeline paints from the same files."""
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dreamgen.cli import cli
from dreamgen.errors import CheckpointError
from dreamgen.model.checkpoint import save_checkpoint
from dreamgen.generation.generator import DocumentRequest, Generator
from dreamgen.model.loader import load_model
from dreamgen.params import REFERENCE_DEFAULTS, GenerationParams
from tests.released_checkpoint import ADDED_TOKENS, TINY, write_released_checkpoint

PARTS = ("pytorch_model.bin", "clip_vision_embedding.bin", "dream_embedding.bin", "stable_diffusion_head.bin")


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return write_released_checkpoint(tmp_path_factory.mktemp("released") / "dreamllm-tiny", seed=0)


@pytest.fixture(scope="module")
def model(released):
    return load_model(str(released))


def file_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_the_fixture_is_written_as_the_reference_writes_it(released):
    """The fixture itself, against the facts of the released files, so the tests below test the real layout."""
    clip = file_state(released / "clip_vision_embedding.bin")
    tower = [k for k in clip if not k.startswith("projector.")]
    assert all(k.startswith("clip_vision_model.vision_model.") for k in tower)
    assert len(tower) == 16 * TINY.clip_layers + 7  # 391 at ViT-L/14's 24 layers, as the issue counts them
    assert {"projector.projector.weight", "projector.projector.bias"} <= set(clip)
    head = file_state(released / "stable_diffusion_head.bin")
    assert {k.split(".")[0] for k in head} == {"vae", "unet", "projector"}
    for part in PARTS:
        assert {t.dtype for t in file_state(released / part).values()} == {torch.bfloat16}, part
    config = json.loads((released / "config.json").read_text())
    assert (config["model_type"], config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == \
        ("dreamllm", 0, 1, -1)
    plugins = config["plugins_init_kwargs"]
    assert plugins["clip_vision_embedding"]["clip_vision_model_name_or_path"] == "openai/clip-vit-large-patch14"
    assert plugins["stable_diffusion_head"]["diffusion_name_or_path"] == "stabilityai/stable-diffusion-2-1-base"
    assert plugins["stable_diffusion_head"]["pretrained_model_name_or_path"] == "none"
    # what the hub repo holds, and nothing more: no CLIP, UNet, VAE or scheduler configs beside the weights
    assert sorted(p.name for p in released.iterdir()) == sorted(
        [*PARTS, "config.json", "tokenizer.model", "added_tokens.json", "special_tokens_map.json",
         "tokenizer_config.json"])
    assert not any(k.endswith("rotary_emb.inv_freq") for k in file_state(released / "pytorch_model.bin"))


def test_it_loads_with_the_tokenizers_ids_and_the_configs_its_hub_ids_name(model):
    assert model.info.dtype == "fp32"  # --dtype auto on the CPU
    # the config names ViT-L/14 and SD 2.1-base by hub id: their configs are the ones known by those ids (here
    # the toy ones of DREAMGEN_MODEL_CONFIGS, conftest; the real ones ship in dreamgen/model/configs)
    assert model.vision.clip_vision_model.config.hidden_size == TINY.clip_hidden
    assert model.head.unet.config.cross_attention_dim == TINY.cross_dim
    ids = {t: TINY.vocab + k for k, t in enumerate(ADDED_TOKENS)}
    s = model.special
    assert (s.bos, s.eos, s.pad, s.dream_start, s.im_start) == (1, 2, ids["[PAD]"], ids["<dream_start>"],
                                                                ids["<im_start>"])
    # not the config's wrong bos 0 / eos 1 / pad -1
    assert (model.llm.config.bos_token_id, model.llm.config.eos_token_id, model.llm.config.pad_token_id) == \
        (1, 2, ids["[PAD]"])


def test_every_tensor_is_the_files_own(released, model):
    modules = {"pytorch_model.bin": model.llm, "dream_embedding.bin": model.dream,
               "stable_diffusion_head.bin": model.head}
    for part, module in modules.items():
        ours = module.state_dict()
        for key, value in file_state(released / part).items():
            assert torch.equal(ours[key], value.float()), (part, key)  # bf16 -> fp32 is exact
    ours = model.vision.state_dict()
    for key, value in file_state(released / "clip_vision_embedding.bin").items():
        flat = key.replace("clip_vision_model.vision_model.", "clip_vision_model.")  # transformers 5's names
        assert torch.equal(ours[flat], value.float()), key


def test_bf16_keeps_the_files_bits_and_the_vae_in_fp32(released):
    model = load_model(str(released), dtype="bf16")
    assert model.info.dtype == "bf16" and model.llm.dtype == torch.bfloat16
    assert model.head.vae.dtype == torch.float32 and model.head.unet.dtype == torch.bfloat16
    state = file_state(released / "pytorch_model.bin")
    assert all(torch.equal(model.llm.state_dict()[k], v) for k, v in state.items())


def test_the_tokenizer_is_sentencepieces(released, model):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(released / "tokenizer.model"))
    for text in ("a red circle on a blue background", "The history of the river.\n\nHow to bake bread",
                 "USER: <dream_start> is plain text here ASSISTANT:", "ünïcode 日本 and digits 2024"):
        ids = model.tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids
        assert ids == sp.encode(text), text


def test_it_writes_interleaved_documents(released, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": f"doc{i}", "prompt": "Write about a red circle", "steps": 2,
                                             "max_new_tokens": 40, "temperature": 1.0}) for i in range(2)) + "\n")
    result = invoke("run", prompts, "--model", released, "--out", tmp_path / "out", "--job-id", "j")
    assert result.exit_code == 0, result.output
    assert "Job j: 2 done, 0 failed, 2 in the file" in result.output
    for doc_id in ("doc0", "doc1"):
        doc = json.loads((tmp_path / "out" / "j" / doc_id / "document.json").read_text())
        kinds = [b["type"] for b in doc["blocks"]]
        assert "image" in kinds and kinds.index("image") > 0 and kinds.count("text") >= 2, kinds
        assert doc["timings"]["dtype"] == "fp32"
        # what the file names, and the reference scripts' settings for the rest: this checkpoint names none
        p = doc["params"]
        assert (p["steps"], p["max_new_tokens"], p["temperature"]) == (2, 40, 1.0)
        assert (p["scheduler"], p["guidance"], p["top_p"]) == ("ddpm", 3.5, 1.0)
    seeds = [json.loads((tmp_path / "out" / "j" / d / "document.json").read_text())["params"]["seed"]
             for d in ("doc0", "doc1")]
    assert seeds[0] != seeds[1]  # no seed given: each document's own, from its id


def _reference_picture(released, sd_configs, caption: str, seed: int, steps: int,
                       guidance: float) -> Image.Image:
    """The picture computed from the checkpoint's files with transformers, sentencepiece and diffusers alone:
    `<s>` + caption + dream block through LlamaForCausalLM, the post-norm states at the queries through the
    condition projector, and StableDiffusionPipeline with DDPM as the reference builds it."""
    import sentencepiece as spm
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import LlamaConfig, LlamaForCausalLM

    config = json.loads((released / "config.json").read_text())
    llm = LlamaForCausalLM(LlamaConfig(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"], num_attention_heads=config["num_attention_heads"],
        num_key_value_heads=config["num_key_value_heads"], max_position_embeddings=config["max_position_embeddings"],
        rms_norm_eps=config["rms_norm_eps"], tie_word_embeddings=False))
    llm.load_state_dict({k: v.float() for k, v in file_state(released / "pytorch_model.bin").items()})
    queries = file_state(released / "dream_embedding.bin")["dream_queries"].float()[0]
    head = file_state(released / "stable_diffusion_head.bin")
    added = json.loads((released / "added_tokens.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=str(released / "tokenizer.model"))
    embed = llm.get_input_embeddings()

    def condition(ids):
        with torch.no_grad():
            ends = embed(torch.tensor([added["<dream_start>"], added["<dream_end>"]]))
            embeds = torch.cat([embed(torch.tensor(ids)), ends[:1], queries, ends[1:]])[None]
            hidden = llm.model(inputs_embeds=embeds).last_hidden_state[0]
            return (hidden[-1 - len(queries):-1] @ head["projector.projector.weight"].float().T)[None]

    def part(name, cls, sub):
        module = cls.from_config(json.loads((sd_configs / sub / "config.json").read_text()))
        module.load_state_dict({k[len(name) + 1:]: v.float() for k, v in head.items() if k.startswith(name + ".")})
        return module

    scheduler = DDPMScheduler.from_config(json.loads((sd_configs / "scheduler" / "scheduler_config.json").read_text()))
    pipe = StableDiffusionPipeline(vae=part("vae", AutoencoderKL, "vae"),
                                   unet=part("unet", UNet2DConditionModel, "unet"), scheduler=scheduler,
                                   text_encoder=None, tokenizer=None, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    size = TINY.latent * 8
    return pipe(prompt_embeds=condition([1] + sp.encode(caption)), negative_prompt_embeds=condition([1]),
                num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="pil").images[0]


def test_text_to_image_equals_stable_diffusion_pipeline_from_the_files(released, toy_model_configs, tmp_path):
    sd_configs = toy_model_configs / "sd21-base"  # what the config's SD hub id names (conftest)
    caption = "a red circle on a blue background"
    result = invoke("generate", "--image-only", caption, "--model", released, "--out", tmp_path / "g",
                    "--seed", 7, "--steps", 4, "--guidance", 7.5)
    assert result.exit_code == 0, result.output
    png = tmp_path / "g" / "images" / "00.png"  # generate writes one document folder
    ours = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    reference = np.asarray(_reference_picture(released, sd_configs, caption, seed=7, steps=4, guidance=7.5),
                           dtype=np.int16)
    assert ours.shape == reference.shape and ours.std() > 1
    assert np.abs(ours - reference).max() <= 1  # one level of 255: float rounding
    other = np.asarray(_reference_picture(released, sd_configs, caption, seed=8, steps=4, guidance=7.5),
                       dtype=np.int16)
    assert np.abs(ours - other).max() > 5  # the comparison can fail: another seed is another picture


def test_a_request_naming_nothing_records_the_reference_scripts_settings(model):
    """The released checkpoints name no defaults: DDPM, 150 steps, guidance 3.5, temperature 0.2, top_p 1.0 and
    up to 1024 new tokens, as the reference's scripts sample (no picture here, to keep it short)."""
    assert model.info.defaults == REFERENCE_DEFAULTS
    doc = Generator(model).generate([DocumentRequest("Write about a red circle", GenerationParams(max_images=0))])[0]
    assert {k: doc.params[k] for k in ("scheduler", "steps", "guidance", "temperature", "top_p", "max_new_tokens")} \
        == {"scheduler": "ddpm", "steps": 150, "guidance": 3.5, "temperature": 0.2, "top_p": 1.0,
            "max_new_tokens": 1024}
    assert doc.text


def test_rotary_buffers_saved_as_the_reference_registers_them_load_the_same(released, model, tmp_path):
    """The reference's own rotary class registers `inv_freq` as a persistent buffer, so its files may hold one per
    layer: the loader takes the checkpoint with them as without them."""
    with_buffers = write_released_checkpoint(tmp_path / "rotary", seed=0, rotary_buffers=True)
    keys = [k for k in file_state(with_buffers / "pytorch_model.bin") if k.endswith("self_attn.rotary_emb.inv_freq")]
    assert len(keys) == TINY.layers
    other = load_model(str(with_buffers))
    a, b = model.llm.state_dict(), other.llm.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    request = DocumentRequest("Write about a red circle", GenerationParams(seed=3, max_new_tokens=12, max_images=0))
    assert Generator(model).generate([request])[0].text == Generator(other).generate([request])[0].text


def test_sharded_llm_weights_in_the_released_naming_load(released, tmp_path):
    sharded = write_released_checkpoint(tmp_path / "sharded", seed=0, llm_shards=3)
    assert not (sharded / "pytorch_model.bin").exists()
    index = json.loads((sharded / "pytorch_model.bin.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [f"pytorch_model-0000{n}-of-00003.bin" for n in (1, 2, 3)]
    a, b = load_model(str(released)).llm.state_dict(), load_model(str(sharded)).llm.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (sharded / "pytorch_model-00002-of-00003.bin").unlink()
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin.index.json names shard pytorch_model-00002-of"):
        load_model(str(sharded))


@pytest.mark.parametrize("safetensors", [False, True])
def test_what_dreamgen_saves_has_the_released_names_and_loads_the_same(released, model, tmp_path, safetensors):
    out = save_checkpoint(model, tmp_path / "resaved", safetensors=safetensors)
    for part in PARTS:
        if safetensors:
            from safetensors import safe_open
            name = "model.safetensors" if part == "pytorch_model.bin" else part.replace(".bin", ".safetensors")
            with safe_open(str(out / name), "pt") as f:
                keys = set(f.keys())
        else:
            keys = set(file_state(out / part))
        assert keys == set(file_state(released / part)), part
    again = load_model(str(out))
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.special == model.special


def test_the_flat_clip_names_dreamgen_wrote_before_still_load(released, model, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(released, old)
    state = file_state(old / "clip_vision_embedding.bin")
    torch.save({k.replace("clip_vision_model.vision_model.", "clip_vision_model."): v for k, v in state.items()},
               old / "clip_vision_embedding.bin")
    loaded = load_model(str(old)).vision.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.vision.state_dict().items())


def test_a_missing_or_misshapen_clip_key_is_named_as_released(released, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(released, broken)
    state = file_state(released / "clip_vision_embedding.bin")
    key = "clip_vision_model.vision_model.encoder.layers.1.mlp.fc2.bias"
    torch.save({k: v for k, v in state.items() if k != key}, broken / "clip_vision_embedding.bin")
    with pytest.raises(CheckpointError, match=rf"clip_vision_embedding.bin lacks 1 key\(s\) the model needs: {key}$"):
        load_model(str(broken))
    torch.save({**state, key: torch.zeros(3)}, broken / "clip_vision_embedding.bin")
    with pytest.raises(CheckpointError, match=rf"{key} has shape \(3,\), the config says \({TINY.clip_hidden},\)"):
        load_model(str(broken))


def test_modules_are_built_without_weights():
    """The loader builds its modules on the meta device: no random init to pay for, no memory; the buffers no
    file holds (rotary frequencies) stay real."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from dreamgen.model.tensors import on_meta

    with on_meta():
        llm = LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                           num_hidden_layers=32, num_attention_heads=32))  # a 7B, instantly
    assert all(p.is_meta for p in llm.parameters())
    assert sum(p.numel() for p in llm.parameters()) > 6.7e9
    assert all(not b.is_meta for b in llm.buffers())
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"  # and the patch is gone afterwards


def test_a_broken_or_legacy_weight_file_is_named(released, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(released, broken)
    (broken / "dream_embedding.bin").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"dream_embedding.bin is not a readable torch file"):
        load_model(str(broken))
    # torch's pre-zip format cannot be memory-mapped: it is read whole, and loads the same
    state = file_state(released / "dream_embedding.bin")
    torch.save(state, broken / "dream_embedding.bin", _use_new_zipfile_serialization=False)
    assert torch.equal(load_model(str(broken)).dream.dream_queries, state["dream_queries"].float())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (scripts/gpu_run.sh runs it)")
def test_auto_on_cuda_is_bf16_with_tf32_and_paints_as_on_the_cpu(released, tmp_path):
    model = load_model(str(released), device="cuda")
    assert model.info.dtype == "bf16" and model.llm.dtype == torch.bfloat16 and model.head.vae.dtype == torch.float32
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert all(p.device.type == "cuda" for p in model.parameters())
    from dreamgen.generation.generator import DocumentRequest, Generator
    from dreamgen.params import GenerationParams
    doc = Generator(model).generate([DocumentRequest("a red circle", GenerationParams(seed=7, steps=4),
                                                     image_only=True)])[0]
    cpu = Generator(load_model(str(released))).generate([DocumentRequest("a red circle", GenerationParams(
        seed=7, steps=4), image_only=True)])[0]
    diff = np.abs(np.asarray(doc.images[0].image, dtype=np.int16) - np.asarray(cpu.images[0].image, dtype=np.int16))
    assert diff.mean() < 8  # bf16 against fp32: close, not equal
