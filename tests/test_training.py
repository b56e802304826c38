"""I-GPT training: sequence layout and labels, both losses, where gradients go, checkpoints, resuming, the VAE
stage, configs and the CLI. A tiny model on a few shapes documents, on CPU."""
from __future__ import annotations

import copy
import functools
import json

import pytest
import torch
from click.testing import CliRunner

from dreamgen.errors import ParamsError, TrainingError
from dreamgen.model.loader import load_model
from dreamgen.model.tokenizer import build_tokenizer
from dreamgen.prompts.templates import CHAT_TEMPLATES
from dreamgen.shapes.dataset import write_dataset
from dreamgen.training import IGPTObjective, ImageInputs, SequenceBuilder, collate, load_config, read_documents, train
from dreamgen.training.architecture import apply_freeze, build_model, build_vae
from dreamgen.training.config import ArchitectureConfig, FreezeConfig, VAEArchitectureConfig
from dreamgen.training.data import IGNORE
from dreamgen.training.loop import step_generator
from dreamgen.training.trainer import tokenizer_corpus

TINY_ARCH = dict(hidden=32, layers=1, heads=2, intermediate=64, max_positions=256, queries=4, clip_hidden=16,
                 clip_layers=2, clip_heads=2, clip_image=16, clip_patch=8, cross_dim=16, unet_channels=[16, 16],
                 unet_layers_per_block=1, unet_heads=2, unet_norm_groups=4, latent_size=8)
TINY_VAE = dict(channels=[8, 8], latent_channels=4, layers_per_block=1, norm_groups=1, image_size=16)


@pytest.fixture(autouse=True)
def one_thread():
    """Small models on a shared machine: one thread skips OpenMP's barrier waits, often many times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("shapes"), 12, seed=5)


@functools.cache
def _tiny_model(data_file: str, seed: int = 0):
    tokenizer = build_tokenizer(tokenizer_corpus([data_file], CHAT_TEMPLATES["vicuna"]), base_vocab=512,
                                merges_vocab=200, split_punctuation=True)
    torch.manual_seed(seed)
    vae = build_vae(VAEArchitectureConfig(**TINY_VAE))
    return build_model(ArchitectureConfig(**TINY_ARCH), tokenizer, vae, seed=seed, name="tiny-train")


def tiny_model(data_file, seed=0):
    """A fresh copy each time: tests train it."""
    import copy
    return copy.deepcopy(_tiny_model(str(data_file), seed)).train()


def fixed_batch(model, data_file, n=4):
    builder = SequenceBuilder(model.tokenizer, model.special, CHAT_TEMPLATES["vicuna"])
    samples = [builder.build(doc) for doc in read_documents(data_file)[:n]]
    return collate(samples, model.special.pad), samples


# ---------------------------------------------------------------------------------------------- layout and labels
def test_sequence_layout_and_labels(data_file):
    model = tiny_model(data_file)
    s = model.special
    batch, samples = fixed_batch(model, data_file)
    specials = {s.pad, s.im_start, s.im_end, s.im_patch, s.dream_start, s.dream_end, s.bos}
    for sample in samples:
        ids, labels = sample.input_ids, sample.labels
        assert ids[0] == s.bos and ids[-1] == s.eos and labels[-1] == s.eos
        # among special tokens only <dream_start> is a target
        targeted = {label for label in labels if label != IGNORE}
        assert targeted & specials == {s.dream_start}
        assert labels.count(s.dream_start) == len(sample.dreams) == ids.count(s.dream_start)
        # the prompt is context, not target: nothing before the first answer token is learned
        prompt_end = ids.index(s.dream_start) - 1
        assert labels[:prompt_end].count(IGNORE) >= 40
        for start, _ in sample.dreams:  # dream block, then the image block, as generation lays them out
            assert ids[start - 1] == s.dream_start and ids[start + s.num_dream_queries] == s.dream_end
            assert ids[start + s.num_dream_queries + 1] == s.im_start
            assert all(label == IGNORE for label in labels[start:start + s.image_cost - 1])
        for start, _ in sample.images:
            assert ids[start - 1] == s.im_start and ids[start + s.num_image_patches] == s.im_end
    assert batch.labels[batch.attention_mask == 0].eq(IGNORE).all()
    assert int(batch.attention_mask.sum()) == sum(len(x.input_ids) for x in samples)


def test_text_and_chat_tokens_match_what_generation_feeds(data_file):
    from dreamgen.generation.generator import DocumentRequest, Generator

    model = tiny_model(data_file).eval()
    doc = read_documents(data_file)[0]
    sample = SequenceBuilder(model.tokenizer, model.special, CHAT_TEMPLATES["vicuna"]).build(doc)
    generator = Generator(model)
    prompt_ids = [model.special.bos] + generator._tokens(generator.render_instruction(DocumentRequest(doc.prompt)))
    assert sample.input_ids[:len(prompt_ids)] == prompt_ids
    first_text = generator._tokens(doc.blocks[0])
    assert sample.input_ids[len(prompt_ids):len(prompt_ids) + len(first_text)] == first_text


# ---------------------------------------------------------------------------------------------- the objective
def test_a_few_steps_lower_both_losses_on_a_fixed_batch(data_file):
    model = tiny_model(data_file)
    params = apply_freeze(model, FreezeConfig(unet=False))
    batch, _ = fixed_batch(model, data_file)
    objective = IGPTObjective(model, ImageInputs(model, True, True), cfg_dropout=0.0, noise_samples=2)
    optimizer = torch.optim.Adam([p for _, p in params], lr=3e-3)

    def losses():
        with torch.no_grad():
            out = objective(batch, step_generator(0, 0))  # the same noise and timesteps every time
        return out.lm, out.vm

    lm0, vm0 = losses()
    for step in range(12):
        out = objective(batch, step_generator(0, 0))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    lm1, vm1 = losses()
    assert lm1 < 0.8 * lm0 and vm1 < 0.9 * vm0, (lm0, lm1, vm0, vm1)


def test_gradients_reach_queries_projector_and_llm_not_frozen_parts(data_file):
    model = tiny_model(data_file)
    apply_freeze(model, FreezeConfig(unet=True, vae=True, vision=True))
    batch, _ = fixed_batch(model, data_file)
    objective = IGPTObjective(model, ImageInputs(model, True, True), w_lm=0.0, w_vm=1.0, cfg_dropout=0.0)
    objective(batch, step_generator(0, 0)).loss.backward()
    # the diffusion loss alone reaches the condition projector, the queries and the LLM through the hidden states
    assert model.head.projector.projector.weight.grad.abs().sum() > 0
    assert model.dream.dream_queries.grad.abs().sum() > 0
    assert model.llm.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert model.vision.projector.projector.weight.grad.abs().sum() > 0  # image blocks are read by later text
    for frozen in (model.head.unet, model.head.vae, model.vision.clip_vision_model):
        assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())


def test_cfg_dropout_trains_the_unconditional_condition(data_file):
    model = tiny_model(data_file)
    apply_freeze(model, FreezeConfig(llm=True, unet=True))
    batch, _ = fixed_batch(model, data_file)
    objective = IGPTObjective(model, ImageInputs(model, True, True), w_lm=0.0, cfg_dropout=0.999)
    out = objective(batch, step_generator(0, 0))
    out.loss.backward()
    # every condition is the unconditional one: the queries after <s> alone, which still learn
    assert out.images > 0 and model.dream.dream_queries.grad.abs().sum() > 0
    with torch.no_grad():
        uncond = objective.unconditional()
    from dreamgen.generation.generator import Generator
    expected = Generator(model.eval()).unconditional()
    torch.testing.assert_close(uncond[0], expected, rtol=1e-4, atol=1e-5)


def test_word_weights_raise_only_their_words_next_token_loss(data_file):
    """{large: 3}: the loss is the plain per-token mean with each target " large" counted three times (over the
    same token count), so the other tokens' gradient keeps its scale."""
    import torch.nn.functional as F
    from dreamgen.training.objective import word_token_weights

    model = tiny_model(data_file).eval()
    batch, _ = fixed_batch(model, data_file, n=8)
    [large] = model.tokenizer(" large", add_special_tokens=False)["input_ids"]  # one token to the tiny tokenizer
    targets = batch.labels[:, 1:]
    assert (targets == large).sum() > 0  # the fixture's articles name sizes
    weights = word_token_weights(model.tokenizer, {"large": 3}, model.llm.config.vocab_size)
    plain = IGPTObjective(model, ImageInputs(model, True, True), cfg_dropout=0.0)
    weighted = IGPTObjective(model, ImageInputs(model, True, True), cfg_dropout=0.0, token_weights=weights)
    with torch.no_grad():
        hidden = model.llm.model(inputs_embeds=plain.embed(batch), attention_mask=batch.attention_mask).last_hidden_state
        logits = model.llm.lm_head(hidden[:, :-1]).float()
        per_token = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
        count = int((targets != IGNORE).sum())
        expected = (per_token.sum() + 2 * per_token[targets == large].sum()) / count
        lm_plain, _ = plain.lm_loss(hidden, batch.labels)
        lm_weighted, _ = weighted.lm_loss(hidden, batch.labels)
    torch.testing.assert_close(lm_plain, per_token.sum() / count)
    torch.testing.assert_close(lm_weighted, expected)
    assert lm_weighted > lm_plain


def test_word_weights_errors_name_the_word(tmp_path, data_file):
    with pytest.raises(TrainingError, match=r"zero.yaml: loss.word_weights.small must be a number > 0 \(got 0\)"):
        load_config(_config(tmp_path, data_file, tmp_path / "zero", loss={"word_weights": {"small": 0}}))
    with pytest.raises(TrainingError, match=r"loss.word_weights.True must be a word; quote on/off/yes/no"):
        load_config(_config(tmp_path, data_file, tmp_path / "bare", loss={"word_weights": {True: 2.0}}))
    # a word the tokenizer splits has no one target to weigh: said before any step runs
    split = _config(tmp_path, data_file, tmp_path / "split", loss={"word_weights": {"smallish": 2.0}})
    with pytest.raises(TrainingError, match=r"loss.word_weights.smallish: 'smallish' is \d+ tokens"):
        train(load_config(split))
    assert not (tmp_path / "split" / "final").exists()


def test_readout_learns_what_the_condition_must_carry(data_file):
    """The readout loss reads the labelled attributes back from each condition: training on it alone (no text,
    no diffusion loss) makes the condition of a fixed batch name its pictures' positions."""
    from dreamgen.training.readout import Readout

    model = tiny_model(data_file)
    params = apply_freeze(model, FreezeConfig(unet=True))
    batch, samples = fixed_batch(model, data_file, n=8)
    assert all(set(labels) == {"background", "colour", "kind", "position", "size"} for labels in batch.dream_labels)
    width = model.special.num_dream_queries * model.head.unet.config.cross_attention_dim
    readout = Readout.for_labels(batch.dream_labels, width)
    assert readout.vocab["size"] == ["large", "small"]
    objective = IGPTObjective(model, ImageInputs(model, True, True), w_lm=0.0, w_vm=0.0, readout=readout,
                              w_readout=1.0)
    optimizer = torch.optim.Adam([p for _, p in params] + list(readout.parameters()), lr=3e-3)
    first = objective(batch, step_generator(0, 0)).readout
    for _ in range(40):
        out = objective(batch, step_generator(0, 0))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert out.readout < 0.3 * first, (first, out.readout)
    # the gradient went into the model: the queries, the projector and the LLM changed, not just the heads
    assert model.dream.dream_queries.grad.abs().sum() > 0
    assert model.head.projector.projector.weight.grad.abs().sum() > 0


def test_readout_run_resumes_and_its_heads_stay_out_of_the_model(tmp_path, data_file):
    loss = {"loss": {"noise_samples": 2, "w_readout": 1.0}}
    straight = train(load_config(_config(tmp_path, data_file, tmp_path / "straight", steps=4, **loss)))
    assert (tmp_path / "straight" / "checkpoint-2" / "readout.pt").exists()
    assert not (straight.output / "readout.pt").exists()  # scaffolding: the shipped model has no heads
    lines = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert all(line["readout"] > 0 for line in lines)
    stopped = _config(tmp_path, data_file, tmp_path / "stopped", steps=4, **loss)
    train(load_config(stopped, {"optim.steps": 2}))
    import shutil
    shutil.rmtree(tmp_path / "stopped" / "final")
    resumed = train(load_config(stopped))
    a, b = load_model(str(straight.output)), load_model(str(resumed.output))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)


def test_readout_needs_labelled_images(tmp_path):
    from dreamgen.training.readout import Readout

    with pytest.raises(TrainingError, match="no image in the training data has 'labels'"):
        Readout.for_labels([{}, {}], 8)
    (tmp_path / "a.png").write_bytes(b"")
    bad = tmp_path / "docs.jsonl"
    bad.write_text('{"blocks": [{"type": "image", "path": "a.png", "labels": {"size": 3}}]}\n')
    with pytest.raises(TrainingError, match=r"docs.jsonl:1: block 0: 'labels' must map attribute names"):
        read_documents(bad)


# ---------------------------------------------------------------------------------------------- runs
def _config(tmp_path, data_file, model_dir, steps=3, **extra) -> str:
    vae_dir = tmp_path / "vae"
    if not vae_dir.exists():
        torch.manual_seed(0)
        build_vae(VAEArchitectureConfig(**TINY_VAE)).save_pretrained(vae_dir)
    config = {
        "stage": "igpt", "seed": 1, "output_dir": str(model_dir),
        "data": {"train": [str(data_file)], "max_length": 256},
        "model": {"init": "new", "name": "tiny-trained", "vae": str(vae_dir), "architecture": TINY_ARCH,
                  "tokenizer": {"base_vocab": 512, "merges_vocab": 200}},
        "freeze": {"unet": False},
        "loss": {"noise_samples": 2},
        "optim": {"steps": steps, "batch_size": 3, "lr": 1e-3, "warmup_steps": 1},
        "save_every": 2, "log_every": 1, **extra,
    }
    path = tmp_path / f"{model_dir.name}.yaml"
    import yaml
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_training_writes_a_checkpoint_that_loads_and_generates(tmp_path, data_file):
    from dreamgen.generation.generator import DocumentRequest, Generator
    from dreamgen.params import GenerationParams

    result = train(load_config(_config(tmp_path, data_file, tmp_path / "run")))
    assert result.output == tmp_path / "run" / "final"
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3] and all(line["vm"] > 0 for line in lines)
    assert (tmp_path / "run" / "checkpoint-2" / "trainer_state.pt").exists()

    model = load_model(str(result.output))
    assert model.info.name == "tiny-trained" and len(model.tokenizer) == 520
    assert model.special.dream_start == 515 and model.special.num_dream_queries == 4
    doc = Generator(model).generate([DocumentRequest("Write about a red circle.",
                                                     GenerationParams(steps=2, max_new_tokens=8))])[0]
    assert doc.stop_reason in ("eos", "max_new_tokens")


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, data_file):
    straight = train(load_config(_config(tmp_path, data_file, tmp_path / "straight", steps=4)))
    stopped = _config(tmp_path, data_file, tmp_path / "stopped", steps=4)
    train(load_config(stopped, {"optim.steps": 2}))  # stops after its checkpoint at step 2 ...
    import shutil
    shutil.rmtree(tmp_path / "stopped" / "final")
    resumed = train(load_config(stopped))  # ... and goes on from it
    a, b = load_model(str(straight.output)), load_model(str(resumed.output))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)


def test_vae_stage_trains_and_sets_the_scaling_factor(tmp_path, data_file):
    import yaml
    from diffusers import AutoencoderKL

    path = tmp_path / "vae.yaml"
    path.write_text(yaml.safe_dump({
        "stage": "vae", "output_dir": str(tmp_path / "vae-run"), "data": {"train": [str(data_file)]},
        "architecture": TINY_VAE, "optim": {"steps": 3, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1},
        "save_every": 2, "log_every": 1}))
    result = train(load_config(path))
    vae = AutoencoderKL.from_pretrained(result.output)
    assert vae.config.scaling_factor == pytest.approx(result.metrics["scaling_factor"])
    assert vae.config.scaling_factor != 0.18215
    assert len((tmp_path / "vae-run" / "log.jsonl").read_text().splitlines()) == 3


def test_foreground_weight_weighs_the_shape_and_zero_is_the_plain_loss():
    import numpy as np
    import torch.nn.functional as F

    from dreamgen.shapes.render import render
    from dreamgen.shapes.world import SIZES, Shape
    from dreamgen.training.config import VAEConfig, VAELossConfig
    from dreamgen.training.vae import pixel_weights, vae_loss

    shape = Shape("red", "diamond", "small", "in the middle", "beige")
    pixels = torch.from_numpy(np.asarray(render(shape), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    w = pixel_weights(pixels, 5.0)[0, 0]
    assert w[32, 32] == 6.0 and w[0, 0] == 1.0 and set(w.unique().tolist()) == {1.0, 6.0}
    tip = 32 - SIZES["small"]
    assert w[32, tip] == 6.0 and w[32, tip - 2] == 1.0  # the diamond's left tip counts, two pixels beyond it not
    assert 0.05 < (w > 1).float().mean() < 0.2  # a small shape is a small share of the picture
    assert torch.equal(pixel_weights(pixels, 0.0), torch.ones_like(pixels[:, :1]))

    torch.manual_seed(0)
    vae = build_vae(VAEArchitectureConfig(**{**TINY_VAE, "image_size": 64}))
    plain = VAEConfig(loss=VAELossConfig(kl_weight=0.0))
    loss, metrics = vae_loss(vae, pixels, plain, torch.Generator().manual_seed(1))
    x = pixels * 2 - 1
    posterior = vae.encode(x).latent_dist
    generator = torch.Generator().manual_seed(1)
    recon = vae.decode(posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)).sample
    assert torch.equal(loss, F.l1_loss(recon, x) + F.mse_loss(recon, x))
    weighted, _ = vae_loss(vae, pixels, VAEConfig(loss=VAELossConfig(kl_weight=0.0, foreground_weight=5.0)),
                           torch.Generator().manual_seed(1))
    w = pixel_weights(pixels, 5.0)
    w = w / w.mean()
    torch.testing.assert_close(weighted, (w * (recon - x).abs()).mean() + (w * (recon - x) ** 2).mean())
    assert not torch.equal(weighted, loss)


# ---------------------------------------------------------------------------------------------- bad input
def test_config_errors_name_the_key(tmp_path, data_file):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"stage: igpt\ndata: {{train: [{data_file}]}}\noptim: {{stepz: 3}}\n")
    with pytest.raises(TrainingError, match=r"optim: unknown key\(s\) stepz"):
        load_config(bad)
    bad.write_text(f"stage: igpt\ndata: {{train: [{data_file}]}}\nloss: {{cfg_dropout: 1.5}}\n")
    with pytest.raises(TrainingError, match="loss.cfg_dropout"):
        load_config(bad)
    bad.write_text("stage: igpt\ndata: {train: [nowhere.jsonl]}\n")
    with pytest.raises(TrainingError, match="nowhere.jsonl"):
        load_config(bad)


def test_data_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "docs.jsonl"
    bad.write_text('{"blocks": [{"type": "text", "text": "hi"}]}\n{"blocks": [{"type": "image", "path": "x.png"}]}\n')
    with pytest.raises(TrainingError, match=r"docs.jsonl:2: block 0: no image at"):
        read_documents(bad)
    bad.write_text('{"blocks": []}\n')
    with pytest.raises(TrainingError, match=r"docs.jsonl:1: a document is an object"):
        read_documents(bad)


def test_cli_train(tmp_path, data_file):
    from dreamgen.cli import cli

    config = _config(tmp_path, data_file, tmp_path / "cli-run", steps=2)
    result = CliRunner().invoke(cli, ["train", config])
    assert result.exit_code == 0, result.output
    assert f"Model: {tmp_path / 'cli-run' / 'final'}" in result.output
    # what `dreamgen train` writes has the released names (transformers 4.35's `vision_model.` level included)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "cli-run" / "final" / "clip_vision_embedding.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert "clip_vision_model.vision_model.embeddings.patch_embedding.weight" in keys
    assert all(k.startswith(("clip_vision_model.vision_model.", "projector.projector.")) for k in keys)
    bad = CliRunner().invoke(cli, ["train", str(tmp_path / "missing.yaml")])
    assert bad.exit_code == 1 and "no training config at" in bad.output


def test_replace_vae_ships_a_new_decoder_and_the_guidance_but_never_a_new_encoder(tmp_path):
    from dreamgen.model.checkpoint import save_checkpoint
    from dreamgen.training.trainer import replace_vae
    from tests.helpers import tiny_model

    model = tiny_model()
    save_checkpoint(model, tmp_path / "model")
    vae = copy.deepcopy(model.head.vae)  # tiny_model() is shared: never change it
    with torch.no_grad():
        for p in vae.decoder.parameters():
            p.add_(0.01)  # a sharpened decoder, as the decoder-only stages write
    vae.save_pretrained(tmp_path / "decoder")
    replace_vae(str(tmp_path / "model"), str(tmp_path / "decoder"), str(tmp_path / "shipped"), guidance=2.0)
    shipped = load_model(str(tmp_path / "shipped"))
    assert shipped.info.defaults.guidance == 2.0
    for a, b in zip(shipped.head.vae.decoder.parameters(), vae.decoder.parameters()):
        assert torch.equal(a, b)
    assert load_model(str(tmp_path / "model")).info.defaults.guidance == 7.5

    with torch.no_grad():
        next(vae.encoder.parameters()).add_(0.01)  # other latents: the UNet never learned them
    vae.save_pretrained(tmp_path / "encoder")
    with pytest.raises(TrainingError, match="encoder or scaling factor differs"):
        replace_vae(str(tmp_path / "model"), str(tmp_path / "encoder"), str(tmp_path / "other"))
    with pytest.raises(ParamsError, match="guidance"):
        replace_vae(str(tmp_path / "model"), str(tmp_path / "decoder"), str(tmp_path / "other"), guidance=-1)


def test_training_on_from_a_checkpoint_reads_only_its_vae_encoder(tmp_path, data_file):
    """scripts/train_shapes.sh trains the binding stage on stage 3's model (the first VAE's decoder) and ships it
    with stage 7's decoder; the shipped model was trained on from stage 3 already carrying stage 7's decoder and its
    guidance. Both give the same weights only if training on never reads the decoder (its latents come from the
    encoder alone) nor the guidance: held here, byte for byte."""
    from dreamgen.training.trainer import replace_vae

    base = train(load_config(_config(tmp_path, data_file, tmp_path / "base", steps=2))).output
    vae = load_model(str(base)).head.vae
    with torch.no_grad():
        for p in vae.decoder.parameters():
            p.mul_(1.5)  # a sharpened decoder, as the decoder-only stages write
    vae.save_pretrained(tmp_path / "decoder")
    replace_vae(str(base), str(tmp_path / "decoder"), str(tmp_path / "shipped"), guidance=3.0)

    def train_on(init, name):
        config = _config(tmp_path, data_file, tmp_path / name, steps=2)
        # with the readout loss, as the binding stage: its heads are drawn afresh, and must be drawn alike
        return train(load_config(config, {"model.init": str(init), "model.vae": None, "loss.w_readout": 1.0})).output

    recipe = load_model(str(train_on(base, "recipe")))  # stage 8 on stage 3, then shipped with the decoder
    replace_vae(str(tmp_path / "recipe" / "final"), str(tmp_path / "decoder"), str(tmp_path / "recipe-shipped"),
                guidance=3.0)
    recipe = load_model(str(tmp_path / "recipe-shipped"))
    shipped = load_model(str(train_on(tmp_path / "shipped", "on-shipped")))  # how the shipped model was made
    assert shipped.info.defaults == recipe.info.defaults and shipped.info.defaults.guidance == 3.0
    a, b = recipe.state_dict(), shipped.state_dict()
    assert len(a) == len(b) > 50 and a.keys() == b.keys()
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert changed == [], changed
    trained = load_model(str(base)).state_dict()
    assert any(not torch.equal(trained[k], a[k]) for k in a if "vae" not in k)  # training on did move weights


def test_replace_vae_may_name_other_defaults_and_refuses_unknown_ones(tmp_path):
    from dreamgen.model.checkpoint import save_checkpoint
    from dreamgen.training.trainer import replace_vae
    from tests.helpers import tiny_model

    model = tiny_model()
    save_checkpoint(model, tmp_path / "model")
    model.head.vae.save_pretrained(tmp_path / "vae")
    replace_vae(str(tmp_path / "model"), str(tmp_path / "vae"), str(tmp_path / "fast"), guidance=3.0,
                defaults={"steps": 25, "cache_interval": 2})
    defaults = load_model(str(tmp_path / "fast")).info.defaults
    assert (defaults.guidance, defaults.steps, defaults.cache_interval) == (3.0, 25, 2)
    with pytest.raises(ParamsError, match="colour is not a model default"):
        replace_vae(str(tmp_path / "model"), str(tmp_path / "vae"), str(tmp_path / "x"), defaults={"colour": 1})
    with pytest.raises(ParamsError, match="cache_interval"):
        replace_vae(str(tmp_path / "model"), str(tmp_path / "vae"), str(tmp_path / "x"), defaults={"cache_interval": 0})
