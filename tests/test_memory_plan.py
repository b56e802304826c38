"""The KV pool is sized from a memory budget: a released 7B fits an 80 GB card with room for 32+ whole documents;
on the CPU the pool is no larger than the job's documents can use; generate() keeps its slot count."""
import pytest
from click.testing import CliRunner

from dreamgen.cli import cli
from dreamgen.generation.config import GeneratorConfig
from dreamgen.generation.generator import Generator
from dreamgen.generation.kv import PAGE
from dreamgen.generation.memory import (CUDA_CONTEXT_BYTES, MemoryPlanError, checkpoint_card_plan, model_card_plan,
                                        plan_pool, weights_bytes)
from dreamgen.model.loader import load_model
from dreamgen.model.released_shape import build_released_shape
from tests.helpers import request, tiny_model
from tests.released_checkpoint import TINY, write_released_checkpoint

CARD = 80 * 10 ** 9  # an "80 GB" card, in the smaller of the two readings (an H100 reports 79.6 GiB = 85.5 GB)


def test_a_released_7b_fits_an_80gb_card_with_32_whole_documents():
    model = build_released_shape()
    assert next(model.llm.parameters()).device.type == "meta"  # nothing allocated, nothing downloaded
    plan = model_card_plan(model, CARD, slots=64, fraction=0.9)
    llm = sum(p.numel() for p in model.llm.parameters())
    assert 6.7e9 < llm < 6.8e9  # LLaMA-7B with the released vocabulary
    assert plan.kv_bytes_per_token == 2 * 32 * 4096 * 2  # 0.5 MiB: no grouped-query attention
    assert plan.context == 2048
    assert 15e9 < plan.weights_bytes < 17e9  # 13.5 GB of LLM, CLIP ViT-L, the SD 2.1 UNet and the fp32 VAE
    assert plan.full_documents >= 32
    assert plan.limit == "memory"  # 64 slots of a whole context would not fit: the budget decides
    spent = plan.weights_bytes + CUDA_CONTEXT_BYTES + plan.step_bytes + plan.pool_bytes
    assert spent <= CARD and plan.pool_bytes <= plan.budget_bytes
    assert plan.budget_bytes <= 0.9 * (CARD - plan.weights_bytes - CUDA_CONTEXT_BYTES - plan.step_bytes) + 1


def test_the_pool_is_the_least_of_slots_documents_and_memory():
    facts = dict(device="cpu", weights_bytes=0, kv_bytes_per_token=1000, context=1000, slots=8)
    assert plan_pool(**facts, budget_bytes=10 ** 9).limit == "slots"
    by_job = plan_pool(**facts, budget_bytes=10 ** 9, job_tokens=70, least_tokens=70)
    assert (by_job.limit, by_job.pool_tokens) == ("documents", 80)  # whole pages
    by_memory = plan_pool(**facts, budget_bytes=3_000_000)
    assert by_memory.limit == "memory" and by_memory.pool_tokens == 3000 // PAGE * PAGE
    fixed = plan_pool(**facts, budget_bytes=1, fixed_tokens=500)
    assert (fixed.limit, fixed.pool_tokens) == ("fixed", 512) and "fixed by DREAMGEN_KV_TOKENS" in fixed.lines()[-1]
    with pytest.raises(MemoryPlanError, match="less than one document's 1,008 .fewer slots"):
        plan_pool(**facts, budget_bytes=900_000)


def test_one_picture_takes_a_pool_of_its_own_prompt_not_slots_times_context():
    gen = Generator(tiny_model())
    job = [request("a red circle on a blue background", seed=1, steps=2)]
    job[0].image_only = True
    doc = gen.generate(job)[0]
    assert doc.stop_reason == "image_only"
    assert gen.stats.kv.pool_pages * PAGE == -(-gen.encoder.length(job[0]) // PAGE) * PAGE
    assert gen.encoder.length(job[0]) == gen.encode_prompt(job[0]).shape[0]


def test_generate_keeps_its_slots_whatever_the_number_of_requests():
    gen = Generator(tiny_model(), config=GeneratorConfig(slots=2))
    docs = gen.generate([request(f"topic {i}", seed=i, max_new_tokens=4, max_images=0) for i in range(5)])
    assert len(docs) == 5 and gen.stats.slots == 2
    assert {d.timings["slots"] for d in docs} == {2}


def test_a_plan_read_from_files_is_the_plan_of_the_loaded_model(tmp_path):
    ckpt = write_released_checkpoint(tmp_path / "ckpt", sizes=TINY, picture_rate=None)
    from_files = checkpoint_card_plan(str(ckpt), CARD, slots=4, fraction=0.9)
    model = load_model(str(ckpt), dtype="bf16")
    loaded = model_card_plan(model, CARD, slots=4, fraction=0.9)
    assert from_files.kv_bytes_per_token == loaded.kv_bytes_per_token and from_files.context == loaded.context
    assert from_files.step_bytes == loaded.step_bytes
    # the loaded model also holds the buffers no file has (rotary frequencies, position ids)
    assert 0 <= weights_bytes(model) - from_files.weights_bytes < 0.01 * from_files.weights_bytes


def test_model_plan_prints_the_plan_for_a_given_card():
    result = CliRunner().invoke(cli, ["model", "plan", "shapes", "--device-memory", "80GiB"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("memory plan on a card of 80.0 GiB: weights ")
    assert "one peak step (estimated)" in result.output and "documents of the full" in result.output
    bad = CliRunner().invoke(cli, ["model", "plan", "shapes", "--device-memory", "eighty"])
    assert bad.exit_code == 2 and "'eighty' is not a size such as 80GiB" in bad.output


def test_run_prints_the_plan_at_start(tmp_path, installed_tiny):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a walk by the river\nthe old mill\n")
    result = CliRunner().invoke(cli, ["run", str(prompts), "--out", str(tmp_path / "out"), "--model", "tiny-random",
                                      "--slots", "4", "--steps", "1", "--max-new-tokens", "4", "--max-images", "0"])
    assert result.exit_code == 0, result.output
    assert "memory plan on cpu: weights" in result.output
    # two documents of the tiny model's 1024-token context, not 4 slots' worth
    assert "KV pool: 2,048 tokens" in result.output and "(what the job's documents can use)" in result.output
