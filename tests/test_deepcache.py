"""Reusing the UNet's deep features across neighbouring steps (issue 32, generation/deepcache.py): cache_interval=1
paints today's pictures; 2 and 3 paint pictures close to them while running the deep blocks fewer times; pictures at
different cache phases in one UNet call end as each would alone; the parameter is checked and recorded."""
import io
import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from dreamgen.errors import ParamsError, PromptFileError
from dreamgen.generation import diffusion
from dreamgen.generation.deepcache import (SHALLOW_SKIPS, down_layers, shallow_down, split_unet, supports_split,
                                           up_layers)
from dreamgen.generation.diffusion import ImageRequest, denoise_step, start_picture
from dreamgen.generation.generator import DocumentRequest, Generator
from dreamgen.ids import document_id
from dreamgen.jobs.png import encode_png, read_png_parameters
from dreamgen.model.loader import load_model
from dreamgen.params import GenerationParams
from dreamgen.prompts.files import iter_prompt_file
from dreamgen.shapes.dataset import eval_prompts
from tests.helpers import paint_alone, paint_joined, pixels, tiny_model


class count_rows:
    """Rows that go through a real block of the UNet (a forward hook on it): how often that part ran."""

    def __init__(self, module):
        self.rows = 0
        self.handle = module.register_forward_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs, output):
        self.rows += (args[0] if args else kwargs["hidden_states"]).shape[0]


@pytest.mark.parametrize("side", [8, 7])  # 7: upsamplers take their skip's size (diffusers' rule)
def test_the_split_unet_at_full_passes_is_the_unet_at_every_cut(side):
    unet = tiny_model().head.unet
    cuts = range(1, len(down_layers(unet)) + 1)
    assert len(cuts) == 3 and SHALLOW_SKIPS in cuts and not supports_split(unet, 0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, side, side, generator=g)
    t = torch.tensor([999, 500, 20, 1])
    cond = torch.randn(4, 6, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        whole = unet(x, t, encoder_hidden_states=cond, return_dict=False)[0]
        for cut in cuts:
            assert supports_split(unet, cut)
            eps, deep = split_unet(unet, x, t, cond, torch.ones(4, dtype=torch.bool), None, cut)
            assert torch.equal(eps, whole), cut  # the same operations in the same order
            # rows 1 and 3 reuse their deep feature of this very step: the same prediction, up to batch-size rounding
            again, kept = split_unet(unet, x, t, cond, torch.tensor([True, False, True, False]), deep, cut)
            torch.testing.assert_close(again, whole, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(kept, deep, rtol=1e-4, atol=1e-5)
            # the feature entering the first shallow up layer, beside the last shallow skip
            _, skips = shallow_down(unet, x, t, cond, cut)
            block, i = up_layers(unet)[-cut]
            assert len(skips) == cut and deep.shape[0] == 4 and deep.shape[2:] == skips[-1].shape[2:]
            assert deep.shape[1] + skips[-1].shape[1] == block.resnets[i].in_channels


def test_a_reused_step_at_the_default_cut_runs_only_conv_in_and_the_last_up_layer():
    unet = tiny_model().head.unet
    last = unet.up_blocks[-1]
    ran = {name: count_rows(module) for name, module in [("conv_in", unet.conv_in), ("down", unet.down_blocks[0].resnets[0]),
                                                         ("up first", last.resnets[0]), ("up last", last.resnets[-1]),
                                                         ("mid", unet.mid_block)]}
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 4, 8, 8, generator=g), torch.tensor([900, 500, 10])
    cond = torch.randn(3, 6, unet.config.cross_attention_dim, generator=g)
    try:
        with torch.no_grad():
            _, deep = split_unet(unet, x, t, cond, torch.ones(3, dtype=torch.bool), None)
            split_unet(unet, x, t, cond, torch.tensor([False, True, False]), deep)
    finally:
        for counter in ran.values():
            counter.handle.remove()
    assert SHALLOW_SKIPS == 1
    assert {name: c.rows for name, c in ran.items()} == {"conv_in": 6, "down": 4, "up first": 4, "up last": 6, "mid": 4}


def _documents(model, prompts, steps, interval):
    # the shares named: the shapes model's own (guided through 0.75, cached through 0.6) would change the rows
    params = GenerationParams(steps=steps, cache_interval=interval, cache_until=1.0,
                              guidance_until=1.0).resolved(model.info.defaults)
    requests = [DocumentRequest(prompt=p.prompt, params=params, id=f"dc-{i}") for i, p in enumerate(prompts)]
    return Generator(model).generate(requests)


def test_cache_interval_1_paints_todays_pictures():
    model = tiny_model()
    prompts = eval_prompts(3, "combos", seed=1001)
    today = Generator(model).generate([DocumentRequest(prompt=p.prompt, params=GenerationParams(steps=4, max_images=1,
                                                                                               max_new_tokens=40),
                                                       id=f"dc-{i}") for i, p in enumerate(prompts)])
    explicit = Generator(model).generate([DocumentRequest(prompt=p.prompt,
                                                          params=GenerationParams(steps=4, max_images=1, max_new_tokens=40,
                                                                                  cache_interval=1),
                                                          id=f"dc-{i}") for i, p in enumerate(prompts)])
    assert sum(len(d.images) for d in today) > 0
    for a, b in zip(today, explicit):
        assert a.text == b.text and len(a.images) == len(b.images)
        for x, y in zip(a.images, b.images):
            assert np.array_equal(pixels(x.image), pixels(y.image))
    # documents that leave it unset keep the ids they had before the parameter existed; an explicit 1 is
    # another document where a model's own interval is not 1 (the shapes model's may be another)
    assert document_id("m", "p", GenerationParams()) == document_id("m", "p", GenerationParams(cache_interval=None))
    assert document_id("m", "p", GenerationParams()) != document_id("m", "p", GenerationParams(cache_interval=1))
    assert document_id("m", "p", GenerationParams()) != document_id("m", "p", GenerationParams(cache_interval=2))


# Measured on the shapes model, DDPM 50 steps, its guidance 3.0, 12 validation prompts (seed 1001, not the eval's),
# the first picture of each document against the one painted without the cache, in 0-255 steps (the model shipped
# with the binding stage, 2026-12-07; the one before gave 0.17-0.57 / 6-35 at interval 2, 0.83-4.14 / 28-224 for
# another seed):
#                      mean |difference| per picture   largest pixel difference
#   interval 2         0.20 - 0.86                     11 - 79
#   interval 3         0.22 - 0.98                     12 - 74
#   another seed       2.08 - 7.93                     68 - 210 (10 of 12 above 96)
# A shapes-world picture is one shape on a plain ground, so a new seed moves only edges: the mean tells pictures apart
# (a new seed's is twice the bound at least); the largest difference bounds how far an edge's shading may go.
# Cut at conv_in, DDPM 50 at intervals 2 and 3: a mean 0.50-1.46 of 255 per pixel, up to 120 (an edge moved by a
# pixel); pictures of another seed differ by 3.4-5.2, up to 226 (docs/pictures.md, "The cut at conv_in")
CLOSE_MEAN, CLOSE_MAX = 2.0, 140


def test_cached_pictures_are_close_to_full_ones_and_run_the_deep_blocks_less():
    model = load_model("shapes")
    prompts = eval_prompts(4, "combos", seed=1001)
    steps = 50
    unet = model.head.unet
    full = _documents(model, prompts, steps, 1)
    firsts = [d.images[0].image for d in full if d.images]
    assert len(firsts) == len(prompts)
    other_seed = Generator(model).generate([DocumentRequest(
        prompt=prompts[0].prompt, params=GenerationParams(steps=steps, seed=1, cache_interval=1, cache_until=1.0,
                                                      guidance_until=1.0).resolved(model.info.defaults))])[0]
    assert np.abs(pixels(other_seed.images[0].image) - pixels(firsts[0])).mean() > CLOSE_MEAN  # the bound tells apart
    for interval in (2, 3):
        deep, shallow = count_rows(unet.mid_block), count_rows(unet.conv_in)
        try:
            cached = _documents(model, prompts, steps, interval)
        finally:
            deep.handle.remove()
            shallow.handle.remove()
        pictures = sum(len(d.images) for d in cached)
        rows = 2 * pictures  # guided: an unconditional and a conditional row per picture
        assert shallow.rows == rows * steps
        assert deep.rows == rows * math.ceil(steps / interval)  # a full pass every interval-th step, the first too
        for doc, first in zip(cached, firsts):
            difference = np.abs(pixels(doc.images[0].image) - pixels(first))
            assert 0 < difference.mean() <= CLOSE_MEAN and difference.max() <= CLOSE_MAX, (interval, difference.max())


def test_pictures_at_different_cache_phases_in_one_call_end_as_each_alone():
    model = tiny_model()
    gen = Generator(model)
    head = model.head
    cond = torch.randn(4, model.special.num_dream_queries, head.unet.config.cross_attention_dim,
                       generator=torch.Generator().manual_seed(0))
    requests = [ImageRequest(cond=cond[i], uncond=gen.painter.unconditional(), seed=i, steps=(7, 6, 8, 5)[i],
                             guidance=(7.5, 1.0, 3.0, 2.0)[i], scheduler=("ddpm", "ddim", "dpm-solver", "ddpm")[i],
                             height=64, width=64, cache_interval=(2, 3, 1, 3)[i]) for i in range(4)]
    components = gen.components
    assert components.split_unet is not None
    with torch.no_grad():
        by_itself = paint_alone(model, requests, components)
        # they join one, two, three steps apart: every call mixes full passes and reused features
        together, phases = paint_joined(model, requests, components, lambda p: p.full_pass)
    assert any(len(set(phase)) == 2 for phase in phases)  # some calls had both kinds of rows
    for a, b in zip(together, by_itself):
        assert int(((a - b).abs() * 255).max().round()) <= 1


def test_a_guided_picture_reuses_the_deep_feature_of_each_of_its_rows():
    """denoise_step against the cache written out plainly for one guided picture: each of its two rows
    (unconditional, conditional) keeps its own deep feature."""
    model = tiny_model()
    gen = Generator(model)
    head, unet = model.head, model.head.unet
    cond = torch.randn(model.special.num_dream_queries, head.unet.config.cross_attention_dim,
                       generator=torch.Generator().manual_seed(4))
    uncond = gen.painter.unconditional()
    request = ImageRequest(cond=cond, uncond=uncond, seed=2, steps=5, guidance=4.0, scheduler="ddim", height=64,
                           width=64, cache_interval=2)

    def start():
        return start_picture(request, head.scheduler_config, head.unet.config.in_channels, head.vae_scale_factor,
                             model.device, model.dtype)

    with torch.no_grad():
        engine = start()
        while not engine.done:
            denoise_step([engine], gen.components.unet, gen.components.split_unet)
        plain, deep = start(), None
        for step, t in enumerate(plain.scheduler.timesteps):
            x = plain.scheduler.scale_model_input(plain.latents, t)
            full = torch.tensor([step % 2 == 0] * 2)
            eps, deep = split_unet(unet, torch.cat([x, x]), torch.stack([t, t]), torch.stack([uncond, cond]), full,
                                   deep)
            guided = eps[:1] + 4.0 * (eps[1:] - eps[:1])
            plain.latents = plain.scheduler.step(guided, t, plain.latents, **plain.step_kwargs, return_dict=False)[0]
    assert not torch.equal(deep[0], deep[1])  # the rows' features differ: swapping them would show
    torch.testing.assert_close(engine.latents, plain.latents, rtol=1e-5, atol=1e-6)


def test_a_backend_without_the_split_paints_full_steps_and_says_so(monkeypatch, caplog):
    model = tiny_model()
    gen = Generator(model)
    head = model.head
    cond = torch.randn(model.special.num_dream_queries, head.unet.config.cross_attention_dim,
                       generator=torch.Generator().manual_seed(3))

    def paint(interval, split):
        r = ImageRequest(cond=cond, uncond=gen.painter.unconditional(), seed=5, steps=6, guidance=3.0,
                         scheduler="ddpm", height=64, width=64, cache_interval=interval)
        p = start_picture(r, head.scheduler_config, head.unet.config.in_channels, head.vae_scale_factor,
                          model.device, model.dtype)
        while not p.done:
            denoise_step([p], gen.components.unet, split)
        return p.latents

    monkeypatch.setattr(diffusion, "_warned_no_split", False)
    with caplog.at_level(logging.WARNING, logger="dreamgen.generation.diffusion"):
        fallback = paint(3, None)  # as components without the cut have it (engines built without it)
    assert torch.equal(fallback, paint(1, gen.components.split_unet))
    assert not torch.equal(fallback, paint(3, gen.components.split_unet))
    assert [r.message for r in caplog.records if "cache_interval" in r.message] == [
        "cache_interval > 1 needs the UNet cut in two (split_unet), which this backend lacks: "
        "painting with full UNet steps instead"]


@pytest.mark.parametrize("bad", [0, -1, 1000, 2.0, "2", True])
def test_a_bad_cache_interval_is_named(bad):
    with pytest.raises(ParamsError, match=r"^cache_interval=.*must be an integer in \[1, 999\]") as raised:
        GenerationParams(cache_interval=bad)
    assert raised.value.name == "cache_interval"


def test_the_cache_interval_is_recorded_in_the_document_and_its_pngs(make_doc):
    doc = make_doc("doc-1")
    doc.params = GenerationParams(seed=7, guidance=7.5, cache_interval=3).to_dict()
    data = encode_png(doc, doc.images[0])
    meta = read_png_parameters(data)
    assert meta["params"]["cache_interval"] == 3
    assert GenerationParams.from_dict(meta["params"]).cache_interval == 3  # the picture reproduces
    line = Image.open(io.BytesIO(data)).text["parameters"].splitlines()[-1]
    assert "CFG scale: 7.5, Cache interval: 3, Seed: 7" in line
    doc.params = GenerationParams(seed=7, guidance=7.5).to_dict()
    assert "Cache interval" not in Image.open(io.BytesIO(encode_png(doc, doc.images[0]))).text["parameters"]
    assert json.loads(json.dumps(doc.params))["cache_interval"] is None  # unset: the model's own, resolved when run


def test_prompt_files_set_the_cache_interval_and_name_a_bad_one(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("id,prompt,cache_interval\na,A red circle,3\nb,A blue square,\n")
    specs = list(iter_prompt_file(good, None, "shapes"))
    assert [s.params.cache_interval for s in specs] == [3, None]  # empty: the model's own
    for name, content, line in [("bad.csv", "id,prompt,cache_interval\na,A red circle,x\n", 2),
                                ("bad.jsonl", '{"prompt": "A red circle", "cache_interval": 0}\n', 1)]:
        (tmp_path / name).write_text(content)
        with pytest.raises(PromptFileError, match=rf"{name}:{line}: .*cache_interval"):
            list(iter_prompt_file(tmp_path / name, None, "shapes"))


def test_a_checkpoint_may_name_its_own_cache_interval_and_fast_is_one_flag(tmp_path, installed_tiny):
    """Issue 32: the cheaper way is a model's default where its eval says so (the shapes model's config.json), and
    one flag elsewhere; a request's own values win, and the document and its PNGs record what was used."""
    from click.testing import CliRunner

    from dreamgen.cli import cli
    from dreamgen.model.checkpoint import DEFAULTS_KEY, read_defaults
    from dreamgen.params import FAST

    assert read_defaults({DEFAULTS_KEY: {"steps": 25, "cache_interval": 2}}, tmp_path).cache_interval == 2
    assert read_defaults({}, tmp_path).cache_interval == 1  # the released checkpoints: the whole UNet every step
    with pytest.raises(Exception, match="cache_interval"):
        read_defaults({DEFAULTS_KEY: {"cache_interval": 0}}, tmp_path)
    assert GenerationParams(steps=30).resolved(
        read_defaults({DEFAULTS_KEY: {"cache_interval": 2}}, tmp_path)).cache_interval == 2

    def generate(*flags):
        out = tmp_path / "-".join(flags or ("plain",))
        result = CliRunner().invoke(cli, ["generate", "A red circle", "--model", "tiny-random", "--seed", "1",
                                          "--max-new-tokens", "12", "--out", str(out), *flags])
        assert result.exit_code == 0, result.output
        return json.loads((out / "document.json").read_text())["params"]

    fast = generate("--fast")
    assert {k: fast[k] for k in FAST} == {"scheduler": "ddpm", "steps": 25, "cache_interval": 2, "cache_until": 1.0,
                                          "guidance_until": 0.5}
    plain = generate()
    assert plain["steps"] == 50 and plain["cache_interval"] == 1  # the tiny model's own: dreamgen's defaults
    mixed = generate("--fast", "--steps", "10")
    assert mixed["steps"] == 10 and mixed["cache_interval"] == 2
