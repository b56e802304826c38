"""The layout holds: rooms import only rooms below them, no import circles, the library never reaches into
workers/ or cli.py, `import dreamgen` stays light, and the wheel carries what the card lists and nothing else."""
from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Rooms, lowest first. A module may import its own room and rooms of a lower rank; two rooms of one rank may not
# import each other. dreamgen/__init__.py is the public face (lazy names), above everything of the library.
RANKS = {
    "dreamgen.errors": 0,
    "dreamgen.settings": 1, "dreamgen.clock": 1,
    "dreamgen.document": 2, "dreamgen.params": 2, "dreamgen.pictures": 2,  # input pictures read within bounds
    "dreamgen.ids": 2.5,  # document ids hash the parameters
    "dreamgen.prompts": 3, "exporters": 3,
    "dreamgen.model": 4,
    "dreamgen.generation": 5,
    "dreamgen.engines": 6,
    "dreamgen.jobs": 7, "dreamgen.training": 7,
    "dreamgen.distributed": 8, "dreamgen.shapes": 8,
    "workers": 9,
    "cli": 10,
}


def room_of(module: str) -> str | None:
    for room in sorted(RANKS, key=len, reverse=True):
        if module == room or module.startswith(room + "."):
            return room
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    files = [ROOT / "cli.py"]
    for top in ("dreamgen", "workers", "exporters"):
        files += sorted((ROOT / top).rglob("*.py"))
    return files


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in the file (imports inside functions count too), made absolute."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from . import x` names modules
    return found


def project_imports() -> dict[str, set[str]]:
    known = {module_name(p) for p in source_files()}
    graph = {}
    for path in source_files():
        graph[module_name(path)] = {m for m in imports_of(path) if m in known and m != module_name(path)}
    return graph


def test_no_room_imports_a_room_above_it():
    wrong = []
    for module, targets in project_imports().items():
        if module == "dreamgen":
            continue  # the public face names everything, lazily
        room = room_of(module)
        assert room is not None, f"{module} belongs to no room of the layout: add it to RANKS"
        for target in targets:
            other = room_of(target)
            if other is None or other == room:
                continue
            if RANKS[other] >= RANKS[room]:
                wrong.append(f"{module} ({room}, rank {RANKS[room]}) imports {target} ({other}, rank {RANKS[other]})")
    assert not wrong, "imports that run up or across the layout:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    graph = project_imports()
    # Packages' __init__ files that only hold a docstring add no edges; a circle is a strongly connected set.
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                circles.append(sorted(members))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


def test_the_layering_check_catches_an_upward_import(tmp_path):
    """The check itself can fail: a lower room importing a higher one is reported."""
    fake = ROOT / "dreamgen" / "prompts" / "_layout_probe.py"
    fake.write_text("from ..jobs.run import run_job\n")
    try:
        with pytest.raises(AssertionError, match="_layout_probe"):
            test_no_room_imports_a_room_above_it()
    finally:
        fake.unlink()


def test_only_settings_reads_dreamgen_variables():
    """Every DREAMGEN_* variable is read through dreamgen.settings, so each has one default and one doc."""
    import re

    from dreamgen import settings

    readers = []
    for path in source_files():
        if path == ROOT / "dreamgen" / "settings.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"os\.environ(\.get|\[)|os\.getenv|[\"']DREAMGEN_[A-Z_]+[\"']", line):
                readers.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not readers, "environment read outside dreamgen/settings.py:\n" + "\n".join(readers)
    names = [s.name for s in settings.ALL]
    assert len(names) == len(set(names)) and all(s.doc for s in settings.ALL)
    readme = (ROOT / "README.md").read_text()
    assert [n for n in names if f"`{n}`" not in readme] == [], "README's Settings table lacks these"


def test_import_dreamgen_and_the_cli_import_no_torch():
    code = ("import sys, dreamgen, cli, dreamgen.jobs.spec, dreamgen.distributed.submit, dreamgen.distributed.status; "
            "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'celery') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_public_face_names_resolve():
    import dreamgen

    for name in dreamgen.__all__:
        assert getattr(dreamgen, name).__name__ == name
    with pytest.raises(AttributeError):
        dreamgen.no_such_name


@pytest.mark.slow
def test_the_wheel_holds_the_card_layout_and_no_tests(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("dreamgen-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"cli.py", "dreamgen", "workers", "exporters", "templates"}, tops
    assert "dreamgen/model/weights/shapes/model.safetensors" in names  # the default model ships
    assert "templates/prompts/howto.txt" in names and "templates/document.html.j2" in names
    assert "dreamgen/model/configs/sd21-base/unet/config.json" in names
