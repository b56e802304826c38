"""Painting beside the text (issue 32): step by step in the generator's thread (each generator step, every picture in
flight takes one denoising step in one UNet call, each at its own timestep), or in a painter thread of its own
(overlap); nobody's writing waits for a picture; a document's pictures and text are the same as when pictures are
gathered and painted at once, whenever its picture comes back. The painter thread never outlives a run."""
import random
import threading
import time

import pytest
import torch

from dreamgen.errors import GenerationCancelled, ParamsError
from dreamgen.generation import painter_thread
from dreamgen.generation.config import GeneratorConfig
from dreamgen.generation.diffusion import ImageRequest, denoise_step, start_picture
from dreamgen.generation.generator import Generator
from dreamgen.generation.painter_thread import Painted, PainterThread
from tests.helpers import max_pixel_diff, request, tiny_model

# Pictures of different steps, schedulers, guidance and sizes, asked for at different times, beside text only ones.
JOB = [request(f"subject {i}", seed=i, max_new_tokens=(30, 50, 20, 40)[i % 4], max_images=(1, 2, 0, 1)[i % 4],
               steps=(2, 4, 3, 5)[i % 4], scheduler=("ddpm", "ddim", "dpm-solver", "ddpm")[i % 4],
               guidance=(7.5, 1.0, 3.0, 2.0)[i % 4], image_size=(None, 32)[i % 2], temperature=(0.0, 0.8)[i % 2])
       for i in range(8)]


def documents(painting: str, slots: int = 4, job=JOB, gen=None, **run):
    gen = gen or Generator(tiny_model(), config=GeneratorConfig(painting=painting))
    docs = {}
    gen.run(job, on_document=lambda i, d: docs.__setitem__(i, d), slots=slots, **run)
    return [docs[i] for i in sorted(docs)], gen


def assert_same_documents(docs, reference):
    assert len(docs) == len(reference) > 0
    for a, b in zip(docs, reference):
        assert a.text == b.text and len(a.images) == len(b.images) and a.stop_reason == b.stop_reason
        for x, y in zip(a.images, b.images):
            assert (x.width, x.seed) == (y.width, y.seed) and max_pixel_diff(x.image, y.image) <= 1


_EARLIER: set = set()  # painter threads of runs still going in other tests (a worker's pool left open)


@pytest.fixture(autouse=True)
def earlier_painters():
    _EARLIER.clear()
    _EARLIER.update(t for t in threading.enumerate() if t.name == "dreamgen-painter")
    yield


def painter_threads() -> list:
    """Painter threads started during this test and still alive."""
    return [t for t in threading.enumerate() if t.name == "dreamgen-painter" and t not in _EARLIER]


def unet_wrapped(gen: Generator, before_call) -> None:
    """gen's UNet calls `before_call(sample)` first (to slow it, count its calls or break it)."""
    unet = gen.components.unet

    def wrapped(sample, timestep, encoder_hidden_states):
        before_call(sample)
        return unet(sample, timestep, encoder_hidden_states)

    gen.components.unet = wrapped
    gen.components.split_unet = None  # (no picture here caches)


@pytest.mark.parametrize("painting", ["stepwise", "overlap"])
def test_painting_beside_the_text_gives_the_documents_of_gathered_painting(painting):
    beside, gen = documents(painting)
    gathered, _ = documents("gather")
    assert len(beside) == len(JOB) and sum(len(d.images) for d in beside) >= 4
    assert_same_documents(beside, gathered)
    assert not gen.painter.pictures and gen._painter_thread is None  # every picture fed back, the thread stopped


def test_a_document_is_the_same_whenever_its_picture_comes_back():
    """The painter thread slowed at random: pictures come back at other generator steps, the documents do not
    change."""
    reference, _ = documents("gather")
    for seed in (1, 2):
        gen = Generator(tiny_model(), config=GeneratorConfig(painting="overlap"))
        delays = random.Random(seed)
        unet_wrapped(gen, lambda sample: time.sleep(delays.choice((0.0, 0.0, 0.01, 0.05))))
        docs, gen = documents("overlap", gen=gen)
        assert_same_documents(docs, reference)


def test_a_picture_never_stops_the_others_writing(monkeypatch):
    # writers beside the painters: gathering waits a few steps for them, then stops them while it paints
    monkeypatch.setattr("dreamgen.generation.scheduler.PAINT_GATHER_STEPS", 3)
    job = JOB + [request(f"a long story {i}", seed=40 + i, max_new_tokens=120, max_images=0) for i in range(2)]
    stepwise, step_gen = documents("stepwise", slots=10, job=job)
    gathered, gather_gen = documents("gather", slots=10, job=job)
    overlap, overlap_gen = documents("overlap", slots=10, job=job)
    s, g, o = step_gen.stats, gather_gen.stats, overlap_gen.stats
    assert s.pictures == g.pictures == o.pictures == sum(len(d.images) for d in stepwise) > 0
    assert s.stalled_seconds == 0 and g.stalled_seconds > 0  # gathering stops the writers while it paints
    assert o.stalled_seconds == 0
    # stepwise, the writers' step waits for the pictures' denoising step in the same thread; overlap, never
    assert g.held_seconds >= g.stalled_seconds and s.held_seconds > 0 and o.held_seconds == 0
    assert len(s.picture_waits) == s.pictures and len(o.picture_waits) == o.pictures
    # a picture of n steps is fed back n + 1 generator steps after it was asked for (it joins at the next step)
    assert max(steps for _, steps in s.picture_waits) <= max(r.params.steps for r in JOB) + 1
    assert min(seconds for seconds, _ in o.picture_waits) > 0


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


@pytest.mark.parametrize("painting", ["stepwise", "overlap"])
def test_a_dropped_document_takes_its_picture_with_it(painting):
    gen = Generator(tiny_model(), config=GeneratorConfig(painting=painting))
    sizes = []  # the latent width of every UNet call: 4 for 32 px, 8 for 64 px
    unet_wrapped(gen, lambda sample: (sizes.append(sample.shape[-1]), time.sleep(0.005)))
    stopped = [False]
    doomed = request("doomed", seed=1, steps=200, image_size=32)
    doomed.image_only = True  # it asks for its picture at once
    doomed.should_stop = lambda: stopped[0]
    after = request("after", seed=3, steps=40, image_size=64)  # takes the slot the quick one frees
    after.image_only = True

    def progress(kind, index):
        if kind == "document" and index == 0:
            stopped[0] = True

    docs = {}
    gen.run([request("quick", seed=2, max_new_tokens=20, max_images=0), doomed, after], slots=2,
            on_document=lambda i, d: docs.__setitem__(i, d), on_progress=progress)
    assert set(docs) == {0, 2} and not gen.painter.pictures and not painter_threads()
    assert 0 < sizes.count(4) < 200 and sizes.count(8) == 40  # its picture was started, not painted to the end
    assert sizes[sizes.index(8):].count(4) <= 1  # and not painted further once dropped, while the run went on


def test_the_painter_steps_a_small_picture_while_a_big_one_takes_a_step():
    """Fair shares of the painter's time per latent size: a small picture beside a big one is not held to the big
    one's pace (stepping every size each turn would have the big one take as many steps as the small one)."""
    gen = Generator(tiny_model())
    sizes = []

    def costly(sample):  # a step costs in proportion to the latents' area, as on a real UNet
        sizes.append(sample.shape[-1])
        time.sleep(sample.shape[-1] * sample.shape[-2] * 0.0004)  # 32 px: 6 ms, 128 px: 0.1 s

    unet_wrapped(gen, costly)
    cond = torch.zeros(tiny_model().special.num_dream_queries, tiny_model().head.unet.config.cross_attention_dim)
    painter = PainterThread(gen.model, gen.components)
    try:
        with torch.no_grad():
            for key, (size, steps) in enumerate(((128, 12), (32, 6), (32, 6))):
                painter.start(key, ImageRequest(cond=cond, uncond=cond, seed=key, steps=steps, guidance=1.0,
                                                scheduler="ddim", height=size, width=size))
            done = []
            while len(done) < 3:
                done += painter.wait(5.0)
    finally:
        painter.stop()
    assert [item.key for item in done] == [1, 2, 0] and all(isinstance(item, Painted) for item in done)
    small_done = [k for k, s in enumerate(sizes) if s == 4][-1]  # the small pair's last step (one call for both)
    assert sizes.count(4) == 6 and sizes.count(16) == 12
    assert sizes[:small_done].count(16) <= 2  # the big picture took at most two steps meanwhile, not six
    assert not painter.alive


def test_the_painter_thread_never_outlives_a_run():
    before = threading.active_count()
    gen = Generator(tiny_model(), config=GeneratorConfig(painting="overlap"))
    documents("overlap", gen=gen, job=JOB[:4])
    assert threading.active_count() == before and not painter_threads()

    steps = []  # cancelled half way, pictures in flight
    with pytest.raises(GenerationCancelled):
        documents("overlap", gen=gen, should_stop=lambda: len(steps) > 8,
                  on_stats=lambda s: steps.append(gen._painter_thread is not None))
    assert any(steps) and threading.active_count() == before

    # cancelled while every document waits for a picture: the wait looks up, the run ends at once
    calls = []
    unet_wrapped(gen, lambda sample: (calls.append(1), time.sleep(0.01)))
    long_picture = request("a slow picture", seed=3, steps=500, image_size=32)
    long_picture.image_only = True
    started = time.perf_counter()
    with pytest.raises(GenerationCancelled):
        documents("overlap", gen=gen, job=[long_picture], should_stop=lambda: len(calls) > 5)
    assert time.perf_counter() - started < 5 and len(calls) < 100 and threading.active_count() == before

    gen._painter_thread = PainterThread(gen.model, gen.components)  # as one left by a run that never ended
    gen.release()
    assert gen._painter_thread is None and threading.active_count() == before


def test_an_error_in_the_painter_thread_is_the_runs_error():
    gen = Generator(tiny_model(), config=GeneratorConfig(painting="overlap"))
    calls = []

    def breaks(sample):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the UNet broke")

    unet_wrapped(gen, breaks)
    before = threading.active_count()
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match="the UNet broke"):
        documents("overlap", gen=gen)
    assert time.perf_counter() - started < 30 and threading.active_count() == before and not painter_threads()


def test_a_picture_that_cannot_start_fails_its_document_alone(monkeypatch):
    """A request the model's noise schedule cannot paint (start_picture raises ParamsError) fails its own document
    through on_failure; the others are as they would be; without on_failure it is the run's error."""
    real = painter_thread.start_picture

    def start(request, *args):
        if request.seed == 1:
            raise ParamsError("steps=4: this model's noise schedule allows at most 3 steps", name="steps")
        return real(request, *args)

    monkeypatch.setattr(painter_thread, "start_picture", start)
    failures = []
    docs, _ = documents("overlap", on_failure=lambda i, e: failures.append((i, str(e))))
    assert [i for i, _ in failures] == [1] and "at most 3 steps" in failures[0][1]
    reference, _ = documents("gather")
    assert_same_documents(docs, reference[:1] + reference[2:])
    with pytest.raises(ParamsError, match="at most 3 steps"):
        documents("overlap")
    assert not painter_threads()


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
