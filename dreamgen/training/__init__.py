"""Training DreamLLM: the I-GPT objective on interleaved documents, and a VAE stage for a model from scratch.

    config = load_config("configs/my-run.yaml")      # stage: igpt | vae
    result = train(config, on_event=print)           # resumes from the run's last checkpoint
    load_model(str(result.output))                   # the released layout, as every dreamgen command loads it

May import model, generation (the diffusion schedulers), prompts (the chat formats) and the shared vocabulary.
"""
from __future__ import annotations

from .config import IGPTConfig, VAEConfig, load_config
from .data import Batch, InterleavedDocument, SequenceBuilder, collate, read_documents
from .objective import IGPTObjective, ImageInputs, LossOutput
from .trainer import TrainResult, train_igpt
from .vae import train_vae

__all__ = ["IGPTConfig", "VAEConfig", "load_config", "train", "train_igpt", "train_vae", "TrainResult",
           "IGPTObjective", "ImageInputs", "LossOutput", "Batch", "InterleavedDocument", "SequenceBuilder",
           "collate", "read_documents"]


def train(config: IGPTConfig | VAEConfig, on_event=None, resume: bool = True) -> TrainResult:
    """Run the stage the config names."""
    if isinstance(config, VAEConfig):
        return train_vae(config, on_event, resume)
    return train_igpt(config, on_event, resume)
