"""The model: DreamLLM composed of transformers and diffusers classes, its special tokens, its checkpoints.

    dreamllm.py        the modules, named as the released checkpoint names them
    special_tokens.py  token ids and the fixed-length blocks built from them
    checkpoint.py      the released layout on disk: read and write
    tensors.py         weight files read memory-mapped into meta-built modules, tensor by tensor; key names
    card.py            what a checkpoint says of itself without torch: its CLIP/SD configs, tokenizer, context
    locate.py          where a named model is (directory, built-in, hub id); its card, for checking prompts
    device.py          the device's name checked without torch (cpu, cuda, cuda:N)
    loader.py          load_model: a checkpoint directory, a built-in name or a hub id
    builtin.py         the built-in names (weights/ holds the shipped ones)
    tiny.py            a tiny random model of the same classes, built offline; tokenizer.py its tokenizer
    inspection.py      what a checkpoint holds, without building it
    configs/           the CLIP ViT-L/14 and SD 2.1-base configs a released checkpoint names

May import errors, settings and the shared vocabulary (document, params, ids); nothing of generation or jobs.
"""
