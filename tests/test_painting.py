"""Painting step by step beside the text (issue 32): each generator step, every picture in flight takes one
denoising step in one UNet call, each at its own timestep; nobody's writing waits for a picture; a document's
pictures and text are the same as when pictures are gathered and painted at once."""
import torch

from dreamgen.generation.config import GeneratorConfig
from dreamgen.generation.diffusion import ImageRequest, denoise_step, start_picture
from dreamgen.generation.generator import Generator
from tests.helpers import max_pixel_diff, request, tiny_model

# Pictures of different steps, schedulers, guidance and sizes, asked for at different times, beside text only ones.
JOB = [request(f"subject {i}", seed=i, max_new_tokens=(30, 50, 20, 40)[i % 4], max_images=(1, 2, 0, 1)[i % 4],
               steps=(2, 4, 3, 5)[i % 4], scheduler=("ddpm", "ddim", "dpm-solver", "ddpm")[i % 4],
               guidance=(7.5, 1.0, 3.0, 2.0)[i % 4], image_size=(None, 32)[i % 2], temperature=(0.0, 0.8)[i % 2])
       for i in range(8)]


def documents(painting: str, slots: int = 4, job=JOB):
    gen = Generator(tiny_model(), config=GeneratorConfig(painting=painting))
    docs = {}
    gen.run(job, on_document=lambda i, d: docs.__setitem__(i, d), slots=slots)
    return [docs[i] for i in range(len(docs))], gen


def test_stepwise_painting_gives_the_documents_of_gathered_painting():
    stepwise, gen = documents("stepwise")
    gathered, _ = documents("gather")
    assert len(stepwise) == len(gathered) == len(JOB) and sum(len(d.images) for d in stepwise) >= 4
    for a, b in zip(stepwise, gathered):
        assert a.text == b.text and len(a.images) == len(b.images) and a.stop_reason == b.stop_reason
        for x, y in zip(a.images, b.images):
            assert (x.width, x.seed) == (y.width, y.seed) and max_pixel_diff(x.image, y.image) <= 1
    assert not gen.painter.pictures  # every picture fed back


def test_a_picture_never_stops_the_others_writing(monkeypatch):
    # writers beside the painters: gathering waits a few steps for them, then stops them while it paints
    monkeypatch.setattr("dreamgen.generation.scheduler.PAINT_GATHER_STEPS", 3)
    job = JOB + [request(f"a long story {i}", seed=40 + i, max_new_tokens=120, max_images=0) for i in range(2)]
    stepwise, step_gen = documents("stepwise", slots=10, job=job)
    gathered, gather_gen = documents("gather", slots=10, job=job)
    s, g = step_gen.stats, gather_gen.stats
    assert s.pictures == g.pictures == sum(len(d.images) for d in stepwise) > 0
    assert s.stalled_seconds == 0 and g.stalled_seconds > 0  # gathering stops the writers while it paints
    assert len(s.picture_waits) == s.pictures
    # a picture of n steps is fed back n + 1 generator steps after it was asked for (it joins at the next step)
    assert max(steps for _, steps in s.picture_waits) <= max(r.params.steps for r in JOB) + 1


def test_each_picture_of_a_unet_batch_is_at_its_own_step():
    """Pictures that started at different times share one UNet call and still end as each would alone."""
    model = tiny_model()
    gen = Generator(model)
    head = model.head
    cond = torch.randn(3, model.special.num_dream_queries, head.unet.config.cross_attention_dim,
                       generator=torch.Generator().manual_seed(0))
    requests = [ImageRequest(cond=cond[i], uncond=gen.unconditional(), seed=i, steps=(3, 5, 4)[i],
                             guidance=(7.5, 1.0, 3.0)[i], scheduler=("ddpm", "ddim", "dpm-solver")[i], height=64,
                             width=64) for i in range(3)]

    def start(r):
        return start_picture(r, head.scheduler_config, head.unet.config.in_channels, head.vae_scale_factor,
                             model.device, model.dtype)

    alone = []
    with torch.no_grad():
        for r in requests:
            p = start(r)
            while not p.done:
                denoise_step([p], gen.components.unet)
            alone.append(p.latents)
        pictures = [start(r) for r in requests]
        denoise_step(pictures[:1], gen.components.unet)  # the first starts a step ahead of the others
        while any(not p.done for p in pictures):
            denoise_step([p for p in pictures if not p.done], gen.components.unet)
    assert [p.step for p in pictures] == [r.steps for r in requests]
    for p, latents in zip(pictures, alone):
        torch.testing.assert_close(p.latents, latents, rtol=1e-4, atol=1e-5)


def test_a_dropped_document_takes_its_picture_with_it():
    gen = Generator(tiny_model())
    stopped = [False]
    doomed = request("doomed", seed=1, max_new_tokens=40, max_images=1, steps=30)
    doomed.should_stop = lambda: stopped[0]

    def progress(kind, index):
        if kind == "document":
            stopped[0] = True

    docs = {}
    gen.run([request("quick", seed=2, max_new_tokens=3, max_images=0), doomed], slots=2,
            on_document=lambda i, d: docs.__setitem__(i, d), on_progress=progress)
    assert set(docs) == {0} and not gen.painter.pictures


def test_the_scheduler_state_stays_fp32_while_the_unet_runs_bf16():
    """The reference samples in fp32: latents, noise, the guidance mix and the scheduler's arithmetic; only the
    UNet (and the LM) run in bf16."""
    model = tiny_model()
    head = model.head
    unet = head.unet.to(torch.bfloat16)
    seen = []

    def bf16_unet(sample, timestep, cond):
        seen.append((sample.dtype, cond.dtype))
        return unet(sample, timestep, encoder_hidden_states=cond, return_dict=False)[0]

    try:
        cond = torch.randn(model.special.num_dream_queries, head.unet.config.cross_attention_dim)
        requests = [ImageRequest(cond=cond, uncond=cond * 0.5, seed=s, steps=3, guidance=g, scheduler=k, height=64,
                                 width=64) for s, g, k in ((1, 7.5, "ddpm"), (2, 1.0, "dpm-solver"))]
        pictures = [start_picture(r, head.scheduler_config, head.unet.config.in_channels, head.vae_scale_factor,
                                  model.device, torch.bfloat16) for r in requests]
        assert all(p.latents.dtype == torch.float32 for p in pictures) and pictures[0].noise.dtype == torch.float32
        with torch.no_grad():
            while any(not p.done for p in pictures):
                denoise_step([p for p in pictures if not p.done], bf16_unet)
        assert len(seen) == 3 and set(seen) == {(torch.bfloat16, torch.bfloat16)}
        assert all(p.latents.dtype == torch.float32 and torch.isfinite(p.latents).all() for p in pictures)
    finally:
        unet.to(torch.float32)  # tiny_model() is shared
