"""Where in its steps a picture is guided and may reuse the UNet's deep features (issue 32): `guidance_until` paints
the steps after its share unguided (the conditional row alone), `cache_until` runs full passes after its share.
Counted on the UNet's blocks, checked against the steps written out plainly, mixed in one call with pictures of
other shares, on ONNX Runtime as on torch, and recorded where a picture must reproduce from."""
import io
import json

import pytest
import torch
from PIL import Image

from dreamgen.errors import ParamsError, PromptFileError
from dreamgen.generation.deepcache import split_unet
from dreamgen.generation.diffusion import ImageRequest, denoise_step, steps_in
from dreamgen.generation.generator import Generator
from dreamgen.jobs.png import encode_png, read_png_parameters
from dreamgen.model.checkpoint import DEFAULTS_KEY, read_defaults
from dreamgen.params import GenerationParams
from dreamgen.prompts.files import iter_prompt_file
from tests.helpers import paint_alone, paint_joined, started, tiny_model
from tests.test_deepcache import count_rows


def _cond(seed, rows=None):
    model = tiny_model()
    shape = (model.special.num_dream_queries, model.head.unet.config.cross_attention_dim)
    return torch.randn(*((rows,) if rows else ()), *shape, generator=torch.Generator().manual_seed(seed))


def _start(request):
    return started(request, tiny_model())


def test_a_share_of_steps_counts_from_the_first_rounding_up_and_is_one_step_at_least():
    assert [steps_in(share, 25) for share in (1.0, 0.75, 0.6, 0.5, 0.04, 0.01)] == [25, 19, 15, 13, 1, 1]
    assert steps_in(0.6, 25) == 15  # 0.6 * 25 is 15.000000000000002 in floating point
    assert steps_in(0.3, 10) == 3 and steps_in(0.7, 10) == 7


def test_the_rows_each_step_runs_follow_the_shares():
    model = tiny_model()
    gen = Generator(model)
    unet = model.head.unet
    request = ImageRequest(cond=_cond(1), uncond=gen.painter.unconditional(), seed=3, steps=8, guidance=3.0,
                           scheduler="ddpm", height=64, width=64, cache_interval=2, cache_until=0.5,
                           guidance_until=0.5)
    deep, shallow = count_rows(unet.mid_block), count_rows(unet.conv_in)
    try:
        with torch.no_grad():
            picture = _start(request)
            while not picture.done:
                denoise_step([picture], gen.components.unet, gen.components.split_unet)
    finally:
        deep.handle.remove()
        shallow.handle.remove()
    assert shallow.rows == 4 * 2 + 4 * 1  # guided (two rows) through steps 0-3, the conditional row after
    assert deep.rows == 2 + 2 + 4 * 1  # full passes at steps 0 and 2 (guided), then every step from 4 on


def test_a_picture_guided_part_of_the_way_is_the_steps_written_out_plainly():
    """denoise_step against the loop written out for one picture: guided and cached (interval 2) through its first
    shares, unguided and full after."""
    model = tiny_model()
    gen = Generator(model)
    unet = model.head.unet
    cond, uncond = _cond(4), gen.painter.unconditional()
    request = ImageRequest(cond=cond, uncond=uncond, seed=2, steps=9, guidance=4.0, scheduler="ddim", height=64,
                           width=64, cache_interval=2, cache_until=0.6, guidance_until=0.4)
    guided_steps, cached_steps = 4, 6  # ceil(0.4 * 9), ceil(0.6 * 9)
    with torch.no_grad():
        engine = _start(request)
        while not engine.done:
            denoise_step([engine], gen.components.unet, gen.components.split_unet)
        plain, deep = _start(request), None
        for step, t in enumerate(plain.scheduler.timesteps):
            x = plain.scheduler.scale_model_input(plain.latents, t)
            full = step % 2 == 0 or step >= cached_steps
            if step < guided_steps:
                eps, deep = split_unet(unet, torch.cat([x, x]), torch.stack([t, t]), torch.stack([uncond, cond]),
                                       torch.tensor([full] * 2), deep)
                eps = eps[:1] + 4.0 * (eps[1:] - eps[:1])
            else:
                eps, deep = split_unet(unet, x, t[None], cond[None], torch.tensor([full]), deep[-1:])
            plain.latents = plain.scheduler.step(eps, t, plain.latents, **plain.step_kwargs, return_dict=False)[0]
        unguided = _start(ImageRequest(**{**request.__dict__, "guidance_until": 1.0, "cache_until": 1.0}))
        while not unguided.done:
            denoise_step([unguided], gen.components.unet, gen.components.split_unet)
    torch.testing.assert_close(engine.latents, plain.latents, rtol=1e-5, atol=1e-6)
    assert (engine.latents - unguided.latents).abs().max() > 1e-3  # the shares changed the picture


def test_pictures_of_other_shares_in_one_call_end_as_each_alone():
    model = tiny_model()
    gen = Generator(model)
    components = gen.components
    cond = _cond(0, rows=4)
    shares = [(1.0, 1.0), (0.5, 0.3), (0.75, 0.6), (0.2, 1.0)]  # (guidance_until, cache_until)
    requests = [ImageRequest(cond=cond[i], uncond=gen.painter.unconditional(), seed=i, steps=(7, 6, 8, 5)[i],
                             guidance=(7.5, 3.0, 3.0, 2.0)[i], scheduler=("ddpm", "ddim", "dpm-solver", "ddpm")[i],
                             height=64, width=64, cache_interval=(2, 3, 2, 1)[i], guidance_until=shares[i][0],
                             cache_until=shares[i][1]) for i in range(4)]
    with torch.no_grad():
        by_itself = paint_alone(model, requests, components)
        together, mixes = paint_joined(model, requests, components, lambda p: p.guided)
    assert any(len(set(mix)) == 2 for mix in mixes)  # some calls had guided and unguided pictures
    assert len(together) == len(by_itself) == 4
    for a, b in zip(together, by_itself):
        assert int(((a - b).abs() * 255).max().round()) <= 1


@pytest.mark.parametrize("name", ["cache_until", "guidance_until"])
@pytest.mark.parametrize("bad", [0, -0.5, 1.5, "0.5", True])
def test_a_bad_share_is_named(name, bad):
    with pytest.raises(ParamsError, match=rf"^{name}=.*must be a number in \(0, 1\]") as raised:
        GenerationParams(**{name: bad})
    assert raised.value.name == name


def test_the_shares_are_recorded_in_the_document_and_its_pngs(make_doc):
    doc = make_doc("doc-1")
    doc.params = GenerationParams(seed=7, guidance=7.5, cache_interval=2, cache_until=0.6,
                                  guidance_until=0.75).to_dict()
    data = encode_png(doc, doc.images[0])
    params = read_png_parameters(data)["params"]
    assert (params["cache_until"], params["guidance_until"]) == (0.6, 0.75)
    again = GenerationParams.from_dict(params)  # the picture reproduces
    assert (again.cache_until, again.guidance_until) == (0.6, 0.75)
    line = Image.open(io.BytesIO(data)).text["parameters"].splitlines()[-1]
    assert "CFG scale: 7.5, Guidance until: 0.75, Cache interval: 2, Cache until: 0.6, Seed: 7" in line
    doc.params = GenerationParams(seed=7, guidance=7.5, cache_until=0.6, guidance_until=1).to_dict()
    line = Image.open(io.BytesIO(encode_png(doc, doc.images[0]))).text["parameters"]
    assert "until" not in line  # all steps guided; no cache, so where it would end says nothing
    assert json.loads(json.dumps(GenerationParams().to_dict()))["guidance_until"] is None  # unset: the model's own


def test_prompt_files_and_checkpoints_set_the_shares_and_name_a_bad_one(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "A red circle", "guidance_until": 0.75, "cache_until": 1}\n{"prompt": "A cross"}\n')
    specs = list(iter_prompt_file(good, None, "shapes"))
    assert [(s.params.guidance_until, s.params.cache_until) for s in specs] == [(0.75, 1), (None, None)]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,prompt,guidance_until\na,A red circle,2\n")
    with pytest.raises(PromptFileError, match=r"bad.csv:2: .*guidance_until"):
        list(iter_prompt_file(bad, None, "shapes"))
    defaults = read_defaults({DEFAULTS_KEY: {"guidance_until": 0.75, "cache_until": 0.6}}, tmp_path)
    assert (defaults.guidance_until, defaults.cache_until) == (0.75, 0.6)
    assert read_defaults({}, tmp_path).guidance_until == 1.0  # the released checkpoints: guided every step
    resolved = GenerationParams(guidance_until=0.5).resolved(defaults)
    assert (resolved.guidance_until, resolved.cache_until) == (0.5, 0.6)  # a request's own wins
    with pytest.raises(Exception, match="guidance_until"):
        read_defaults({DEFAULTS_KEY: {"guidance_until": 0}}, tmp_path)
