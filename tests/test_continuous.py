"""Continuous batching: a document's result depends only on its own prompt, parameters and seed,
whatever its slot, neighbours, slot count or place in the job; slots refill; the KV cache is paged in place."""
import random
import threading

import torch

from dreamgen.generation.config import GeneratorConfig
from dreamgen.generation.generator import NOTHING_YET, Generator
from dreamgen.generation.kv import PAGE
from dreamgen.generation.lm import Run
from dreamgen.generation.runner import ModelRunner
from tests.helpers import max_pixel_diff, request, tiny_model

# Mixed lengths, pictures and stopping rules: slots free at different steps, so documents enter mid-way.
JOB = [request(f"topic number {i}", seed=i, temperature=(0.0, 0.9, 1.2)[i % 3], max_new_tokens=(12, 60, 30)[i % 3],
               max_images=(0, 2, 1)[i % 3], steps=2, top_p=(1.0, 0.9)[i % 2]) for i in range(9)]


def structure(doc):
    return [(b.type, b.text if b.type == "text" else (b.width, b.height, b.seed)) for b in doc.blocks]


def stream(gen: Generator, requests, **kwargs) -> list:
    docs = {}
    gen.run(requests, on_document=lambda i, d: docs.__setitem__(i, d), **kwargs)
    return [docs[i] for i in range(len(docs))]


def assert_same(a, b):
    assert structure(a) == structure(b) and a.stop_reason == b.stop_reason
    assert len(a.images) == len(b.images)
    for x, y in zip(a.images, b.images):
        assert max_pixel_diff(x.image, y.image) <= 1


def assert_same_job(docs, reference):
    assert len(docs) == len(reference) > 0
    for a, b in zip(docs, reference):
        assert_same(a, b)


def test_a_document_is_the_same_whatever_the_slots_and_the_order_of_the_job():
    gen = Generator(tiny_model())
    reference = stream(gen, JOB, slots=1)  # one at a time
    assert sum(len(d.images) for d in reference) >= 3 and len({d.stop_reason for d in reference}) >= 2
    assert any(r.params.temperature > 0 and r.params.top_p < 1 for r in JOB)  # sampled, nucleus too
    for slots in (3, None):  # None: the device's default
        assert_same_job(stream(gen, JOB, slots=slots), reference)
    order = list(range(len(JOB)))
    random.Random(4).shuffle(order)
    shuffled = stream(gen, [JOB[i] for i in order], slots=3)
    assert_same_job(shuffled, [reference[i] for i in order])


def test_slots_refill_as_documents_end_and_lockstep_does_not():
    gen = Generator(tiny_model())
    busy = []
    continuous = stream(gen, JOB, slots=3, on_stats=lambda s: busy.append(s.busy))
    cont = gen.stats
    assert max(busy) == 3 and cont.documents == len(JOB)
    assert cont.occupancy == 1.0  # while documents waited, every slot held one

    gen = Generator(gen.model, config=GeneratorConfig(batching="lockstep"))
    lockstep = stream(gen, JOB, slots=3)
    lock = gen.stats
    assert_same_job(lockstep, continuous)  # the same documents: only when they run changes
    assert lock.occupancy < 0.9 and lock.steps > cont.steps


def test_the_kv_cache_is_written_in_place_and_its_pages_go_to_the_next_document():
    gen = Generator(tiny_model(), config=GeneratorConfig(slots=3))
    pools = []
    original = gen._runner_for

    def runner_for(kv_tokens):
        made = original(kv_tokens)
        pools.append(made.pool.kv.data_ptr())
        return made

    gen._runner_for = runner_for
    assert len(stream(gen, JOB)) == len(JOB)
    kv = gen.stats.kv
    assert kv.pages_in_use == 0 and kv.live_tokens == 0  # every page back in the pool
    assert kv.peak_ratio <= 1.25  # pages in use vs the live tokens at the peak: at most a page each is partial
    assert kv.peak_live_tokens > kv.pool_pages * PAGE / 20  # the pool's pages were really used, and reused
    assert len(pools) == 1  # allocated once for the whole run
    stream(gen, JOB[:3])
    assert pools[1] == pools[0]  # and kept for the next run of the same size


def test_admission_respects_the_kv_budget():
    model = tiny_model()
    job = [request(f"topic {i}", seed=i, max_new_tokens=40, max_images=1, steps=2) for i in range(5)]
    probe = Generator(model)
    worst = max(probe.encode_prompt(r).shape[0] for r in job) + 40 + model.special.image_cost - 1  # prompt + growth
    worst = -(-worst // PAGE) * PAGE  # reservations are whole pages
    # room for two documents' worst cases, not three
    gen = Generator(model, config=GeneratorConfig(slots=6, kv_tokens=2 * worst + PAGE))
    busy = []
    docs = stream(gen, job, on_stats=lambda s: busy.append(s.busy))
    assert len(docs) == 5 and max(busy) == 2


def test_chunked_prefill_changes_no_document():
    model = tiny_model()
    long = [request("a much longer prompt " * 12 + str(i), seed=i, max_new_tokens=20, max_images=1, steps=2)
            for i in range(3)]
    whole = stream(Generator(model, config=GeneratorConfig(prefill_chunk=512, step_tokens=2048)), long, slots=3)
    chunked = stream(Generator(model, config=GeneratorConfig(prefill_chunk=8, step_tokens=8)), long, slots=3)
    assert_same_job(chunked, whole)


def test_flex_attention_and_fixed_shape_buckets_give_the_same_documents():
    """The GPU's way (flex attention over the pool in place, decode steps padded to buckets, compiled there) run
    here eagerly: the same documents as the CPU's gather + SDPA."""
    model = tiny_model()
    sdpa = stream(Generator(model), JOB[:5], slots=3)
    flex = Generator(model, config=GeneratorConfig(attention="flex", compile=False))
    flex_docs = stream(flex, JOB[:5], slots=3)
    assert_same_job(flex_docs, sdpa)
    bucketed = Generator(model, config=GeneratorConfig(attention="flex"))
    runners = []
    original = bucketed._runner_for

    def runner_for(kv_tokens):
        runner = original(kv_tokens)
        runner.buckets_on = True  # buckets without compiling: the same fixed-shape function, run eagerly
        runners.append(runner)
        return runner

    bucketed._runner_for = runner_for
    assert_same_job(stream(bucketed, JOB[:5], slots=3), sdpa)
    assert set(runners[0].buckets) == {8}  # decode steps of 1 to 3 rows went through the smallest bucket


def test_a_stopped_request_is_dropped_and_the_others_go_on():
    gen = Generator(tiny_model())
    stopped = [False]
    doomed = request("doomed", seed=1, max_new_tokens=60, max_images=0)
    doomed.should_stop = lambda: stopped[0]
    events = []

    def progress(kind, index):
        events.append((kind, index))
        if kind == "document":
            stopped[0] = True  # the first document to end cancels the doomed one

    docs = {}
    gen.run([request("quick", seed=2, max_new_tokens=3, max_images=0), doomed, JOB[0]],
            on_document=lambda i, d: docs.__setitem__(i, d), on_progress=progress, slots=3)
    assert ("dropped", 1) in events and set(docs) == {0, 2}


def test_a_live_source_with_gaps_is_served_as_it_fills():
    gen = Generator(tiny_model())

    def source():
        for req in JOB[:4]:
            yield NOTHING_YET
            yield NOTHING_YET
            yield req

    assert_same_job(stream(gen, source(), slots=2), stream(gen, JOB[:4], slots=2))


def test_paged_step_equals_transformers_forward():
    model = tiny_model()
    llm, cfg = model.llm, model.llm.config
    H = cfg.hidden_size
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(n, H, generator=g) for n in (40, 23, 5))
    for attention in ("sdpa", "flex"):
        runner = ModelRunner(model, 40 * PAGE, GeneratorConfig(attention=attention))
        for slot in range(3):
            runner.open(slot, 200)
        with torch.no_grad():
            first, _ = runner.forward(torch.cat([a[:20], b, c]), [Run(0, 0, 20), Run(1, 0, 23), Run(2, 0, 5)], [])
            # a prefill beside a decode
            second, logits = runner.forward(torch.cat([a[20:], c[:1]]), [Run(0, 20, 20), Run(2, 5, 1)], [0, 1])
            reference = llm.model(inputs_embeds=a[None]).last_hidden_state[0]
            torch.testing.assert_close(torch.cat([first[:20], second[:20]]), reference, rtol=1e-5, atol=1e-5)
            reference_c = llm.model(inputs_embeds=torch.cat([c, c[:1]])[None]).last_hidden_state[0]
            torch.testing.assert_close(second[20], reference_c[5], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(logits, llm.lm_head(torch.stack([reference[-1], reference_c[5]])),
                                       rtol=1e-5, atol=1e-5)
        runner.close(1)
        pool = runner.pool
        assert pool.stats.live_tokens == 46 and sorted(pool._free)[:2] == [2, 3]  # slot 1's pages are free again


def test_a_shared_engine_serves_several_callers_in_one_pool():
    """Two chunk tasks of a worker feed one slot pool from their own threads; each gets its own documents."""
    from dreamgen.distributed.pool import SharedPool
    from dreamgen.jobs.spec import WorkItem
    from dreamgen.prompts.files import PromptSpec

    pool = SharedPool(Generator(tiny_model()), slots=4)
    results = {0: {}, 1: {}}

    def caller(n):
        items = []
        for k in range(3):
            req = JOB[3 * n + k]
            spec = PromptSpec(line=k, id=f"{n}-{k}", custom_id=None, prompt=req.prompt, title=None, params=req.params)
            items.append(WorkItem(spec, done=lambda doc, k=k: results[n].__setitem__(k, doc),
                                  fail=lambda e, m=None: None))
        pool.run_items(items)

    threads = [threading.Thread(target=caller, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    pool.close()  # its run ends, and with it the run's painter thread
    alone = stream(Generator(tiny_model()), JOB[:6], slots=1)
    for n in (0, 1):
        assert sorted(results[n]) == [0, 1, 2]
        for k in range(3):
            assert_same(results[n][k], alone[3 * n + k])


def test_a_prompt_longer_than_the_context_fails_alone():
    model = tiny_model()
    failures, docs = [], {}
    too_long = request("word " * (model.max_positions + 10), seed=1)
    Generator(model).run([JOB[0], too_long, JOB[1]], on_document=lambda i, d: docs.__setitem__(i, d),
                         on_failure=lambda i, e: failures.append((i, str(e))), slots=3)
    assert set(docs) == {0, 2} and failures[0][0] == 1 and "context 1024" in failures[0][1]


def test_a_run_cancelled_half_way_leaves_the_next_run_a_whole_pool():
    from dreamgen.errors import GenerationCancelled

    gen = Generator(tiny_model(), config=GeneratorConfig(kv_tokens=4096))
    steps = []
    try:
        gen.run(JOB, on_document=lambda i, d: None, slots=3, should_stop=lambda: len(steps) > 5,
                on_stats=lambda s: steps.append(s.steps))
    except GenerationCancelled:
        pass
    assert len(steps) > 5 and gen._runner.pool.table  # it stopped with documents holding pages
    assert_same_job(stream(gen, JOB[:4], slots=3), stream(Generator(tiny_model()), JOB[:4], slots=3))
    assert gen.stats.kv.pages_in_use == 0
