"""dreamgen: illustrated documents in bulk, written and painted by DreamLLM.

Kept light on purpose: `import dreamgen` does not import torch, so the CLI answers --help at once.
The library's pieces live in their modules: checkpoint (load_model, save_checkpoint), generation (Generator,
DocumentRequest), params (GenerationParams), document (Document), prompts, storage, runner, training (I-GPT
and VAE training), shapes (the toy world the built-in `shapes` model was trained on), evaluation (`dreamgen eval`).
"""
__version__ = "0.1.0"
