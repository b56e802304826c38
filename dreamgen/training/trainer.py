"""The I-GPT training run: build or load a DreamLLM, train it on interleaved documents, save it in the released
layout (loadable by `load_model` and every dreamgen command), resumable from its last checkpoint."""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ParamsError, TrainingError
from ..model.checkpoint import save_checkpoint
from ..model.dreamllm import DreamLLM
from ..model.loader import load_model
from ..model.tokenizer import build_tokenizer
from ..params import DEFAULT_FIELDS, GenerationParams
from ..prompts.templates import CHAT_TEMPLATES
from .architecture import apply_freeze, build_model, build_vae
from .config import IGPTConfig, VAEArchitectureConfig
from .data import ImageRef, InterleavedDataset, SequenceBuilder, batch_indices, collate, read_documents
from .loop import OnEvent, StepLog, lr_at, make_optimizer, open_run, step_generator, update
from .objective import IGPTObjective, ImageInputs, word_token_weights
from .readout import Readout

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output: Path  # the final model's folder
    steps: int
    seconds: float
    metrics: dict  # the last log window


def tokenizer_corpus(files: list[str], chat_template: str) -> list[str]:
    """The text a new model's tokenizer learns from: every prompt in its chat format and every text block."""
    lines = []
    for file in files:
        for doc in read_documents(file):
            if doc.prompt is not None:
                lines.append(chat_template.format(instruction=doc.prompt))
            lines += [b for b in doc.blocks if not isinstance(b, ImageRef)]
    return lines


def load_vae(path: str):
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.from_pretrained(path, low_cpu_mem_usage=False)  # (True needs `accelerate`)
    except (OSError, ValueError) as e:
        raise TrainingError(f"model.vae: cannot load a VAE from {path} ({e})") from None


def initial_model(config: IGPTConfig) -> DreamLLM:
    """The model a fresh run starts from: new (tokenizer trained on the data) or a checkpoint to fine-tune."""
    m = config.model
    if m.init == "new":
        chat = CHAT_TEMPLATES[config.data.chat]
        t = m.tokenizer
        try:
            tokenizer = build_tokenizer(tokenizer_corpus(config.data.train, chat), base_vocab=t.base_vocab,
                                        merges_vocab=t.merges_vocab, split_punctuation=t.split_punctuation)
        except ValueError as e:
            raise TrainingError(f"model.tokenizer: {e}") from None
        if m.vae:
            vae = load_vae(m.vae)
        else:
            log.warning("model.vae is not set: the new model gets an untrained VAE (train one with a vae stage)")
            vae = build_vae(VAEArchitectureConfig(image_size=m.architecture.latent_size * 8))
        model = build_model(m.architecture, tokenizer, vae, seed=config.seed, name=m.name)
    else:
        model = load_model(m.init)
        model.info.name = m.name
        if m.vae:
            model.head.vae = load_vae(m.vae)
    return model


def replace_vae(checkpoint: str, vae_dir: str, out_dir: str, dtype: str = "fp32",
                guidance: float | None = None, defaults: dict | None = None) -> Path:
    """Write `checkpoint` again with the VAE of `vae_dir` (e.g. a decoder sharpened after the I-GPT stage: its
    encoder, hence every latent the UNet learned, must be the one the model was trained with), and with
    `guidance`, where given, as the scale it paints with when a request names none; `defaults` likewise names
    others of its defaults (params.ModelDefaults: steps, cache_interval, ...)."""
    model = load_model(checkpoint)
    given = {**(defaults or {}), **({"guidance": float(guidance)} if guidance is not None else {})}
    if given:
        unknown = sorted(set(given) - set(DEFAULT_FIELDS))
        if unknown:
            raise ParamsError(f"defaults: {', '.join(unknown)} is not a model default ({', '.join(DEFAULT_FIELDS)})")
        GenerationParams(**given)  # the same bounds a request's values have
        model.info.defaults = dataclasses.replace(model.info.defaults, **given)
    vae = load_vae(vae_dir)
    old = model.head.vae
    same_encoder = all(torch.equal(a, b) for a, b in zip(old.encoder.state_dict().values(),
                                                         vae.encoder.state_dict().values()))
    if old.config.scaling_factor != vae.config.scaling_factor or not same_encoder:
        raise TrainingError(f"{vae_dir}: its encoder or scaling factor differs from {checkpoint}'s; the model's "
                            f"latents would change (only a decoder trained with decoder_only can replace it)")
    model.head.vae = vae
    return _save(model, Path(out_dir), dtype)


def _save(model: DreamLLM, directory: Path, dtype: str = "fp32") -> Path:
    if dtype == "fp16":
        model = copy.deepcopy(model)
        for part in (model.llm, model.vision, model.dream, model.head.unet, model.head.projector):
            part.half()  # the VAE stays fp32, as the loader keeps it
    return save_checkpoint(model, directory, safetensors=True)


def train_igpt(config: IGPTConfig, on_event: OnEvent | None = None, resume: bool = True) -> TrainResult:
    """Run (or finish) the training `config` describes; returns where the final model is."""
    emit = on_event or (lambda kind, info: None)
    out, latest, state = open_run(config.output_dir, config.threads, resume)
    o = config.optim

    # 1. the model: from the last checkpoint, or as the config says
    if latest:
        model = load_model(str(latest))
        model.info.name = config.model.name
        log.info("resuming from %s (step %d)", latest, state["step"])
    else:
        model = initial_model(config)
        if config.model.init != "new":
            # A new model's build seeds torch, so what is drawn after it (the readout heads) repeats; a checkpoint's
            # load draws nothing, and the heads were drawn from wherever the global generator stood: two runs of
            # the binding stage gave other weights (found 2026-12-07, after the shipped run).
            torch.manual_seed(config.seed)
    start = state["step"] if state else 0
    model.train()
    trainable = apply_freeze(model, config.freeze)

    # 2. data and objective
    builder = SequenceBuilder(model.tokenizer, model.special, CHAT_TEMPLATES[config.data.chat],
                              config.data.train_on_prompt)
    dataset = InterleavedDataset(config.data.train, builder, min(config.data.max_length, model.max_positions))
    inputs = ImageInputs(model, cache_clip=config.freeze.vision, cache_latents=config.freeze.vae)
    loss_cfg = config.loss
    readout = None
    if loss_cfg.w_readout > 0:
        labels = [dict(ref.labels) for sample in dataset.samples for _, ref in sample.dreams]
        width = model.special.num_dream_queries * model.head.unet.config.cross_attention_dim  # a flat condition
        readout = Readout.for_labels(labels, width)
        if latest and readout.load_from(latest):
            log.info("readout heads from %s", latest)
        trainable = trainable + [(f"readout.{n}", p) for n, p in readout.named_parameters()]
    try:
        token_weights = word_token_weights(model.tokenizer, loss_cfg.word_weights, model.llm.config.vocab_size)
    except ValueError as e:
        raise TrainingError(f"{config.output_dir}: {e}") from None
    objective = IGPTObjective(model, inputs, w_lm=loss_cfg.w_lm, w_vm=loss_cfg.w_vm,
                              cfg_dropout=loss_cfg.cfg_dropout, noise_samples=loss_cfg.noise_samples,
                              readout=readout, w_readout=loss_cfg.w_readout, token_weights=token_weights)
    optimizer = make_optimizer(trainable, o)
    if state:
        optimizer.load_state_dict(state["optimizer"])
    params = [p for _, p in trainable]
    emit("start", {"stage": "igpt", "step": start, "steps": o.steps, "documents": len(dataset),
                   "skipped": dataset.skipped, "trainable": sum(p.numel() for p in params),
                   "resumed_from": str(latest) if latest else None})

    # 3. the loop
    def save_weights(directory: Path) -> None:
        save_checkpoint(model, directory, safetensors=True)
        if readout is not None:
            readout.save(directory)

    step_log = StepLog(out, config, o.steps, optimizer, save_weights, emit)
    started = time.perf_counter()
    for step in range(start, o.steps):
        lr = lr_at(step, o)
        samples = [dataset.samples[i] for i in batch_indices(len(dataset), o.batch_size, step, config.seed)]
        result = objective(collate(samples, model.special.pad), step_generator(config.seed, step))
        grad_norm = update(optimizer, result.loss, params, lr, o.grad_clip)
        metrics = {"loss": float(result.loss.detach()), "lm": result.lm, "vm": result.vm, "grad_norm": grad_norm}
        if readout is not None:
            metrics["readout"] = result.readout
        step_log.step_done(step + 1, lr, metrics)

    # 4. the final model, in the released layout
    final = _save(model, out / "final", config.save_dtype)
    seconds = time.perf_counter() - started
    emit("done", {"path": str(final), "seconds": seconds, **step_log.last})
    return TrainResult(output=final, steps=o.steps, seconds=seconds, metrics=step_log.last)
