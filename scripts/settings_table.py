"""Print README's Settings table from dreamgen/settings.py (paste it under "## Settings")."""
from dreamgen import settings

print("| variable | default | what |\n|---|---|---|")
for s in settings.ALL:
    default = f"`{s.default}`" if s.default is not None else "-"
    print(f"| `{s.name}` | {default} | {s.doc} |")
