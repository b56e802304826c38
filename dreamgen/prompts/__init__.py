"""Prompt files: reading (.txt, .jsonl, .csv, .yaml), checking every line, and the prompt and chat templates.

    files.py      validate_prompt_file, iter_prompt_file -> PromptSpec
    readers.py    one reader per format: items with their lines
    openai_batch.py  OpenAI Batch API request lines -> items
    templates.py  topic -> instruction (templates/prompts/*.txt), instruction -> chat text

No torch. May import errors, params and ids only.
"""
