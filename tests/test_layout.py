"""The layout holds: rooms import only rooms below them, no import circles, the library never reaches into
workers/ or cli.py, `import dreamgen` stays light, and the wheel carries what the card lists, inside dreamgen, and
nothing else."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
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
    "dreamgen.prompts": 3, "dreamgen.exporters": 3,
    "dreamgen.model": 4,
    "dreamgen.generation": 5,
    "dreamgen.engines": 6,
    "dreamgen.jobs": 7, "dreamgen.training": 7,
    "dreamgen.distributed": 8, "dreamgen.shapes": 8,
    "dreamgen.workers": 9,
    "dreamgen.cli": 10,
    "dreamgen.__main__": 11,  # `python -m dreamgen`: the command
}
# The card's folders at the repository's top, installed inside dreamgen (dreamgen/ links each): their modules'
# names are dreamgen.<folder>..., and nothing may import them by their bare top-level names.
CARD_FOLDERS = ("cli", "workers", "exporters", "templates")


def room_of(module: str) -> str | None:
    for room in sorted(RANKS, key=len, reverse=True):
        if module == room or module.startswith(room + "."):
            return room
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] in CARD_FOLDERS:
        parts.insert(0, "dreamgen")
    return ".".join(parts)


def source_files() -> list[Path]:
    """Each module once: the card's folders where they are, not again through dreamgen/'s links to them."""
    files = [ROOT / "cli.py"]
    for top in ("dreamgen", "workers", "exporters"):
        files += sorted(p for p in (ROOT / top).rglob("*.py") if not p.is_symlink())
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


def test_the_card_folders_are_imported_inside_dreamgen_only():
    """`from exporters import x` would load the module a second time (beside dreamgen.exporters) in a checkout, and
    fail where the wheel is installed (it has no top-level exporters)."""
    bare = []
    for path in source_files() + sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "bench").glob("*.py")):
        bare += [f"{path.relative_to(ROOT)}: {m}" for m in imports_of(path) if m.split(".")[0] in CARD_FOLDERS]
    assert bare == []
    for folder in CARD_FOLDERS:  # and dreamgen/ links them (the wheel installs them there; a checkout imports so)
        link = ROOT / "dreamgen" / (f"{folder}.py" if folder == "cli" else folder)
        assert link.is_symlink() and link.resolve() == (ROOT / link.name).resolve(), link


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
    code = ("import sys, dreamgen, dreamgen.cli, dreamgen.jobs.spec, dreamgen.distributed.submit, "
            "dreamgen.distributed.status; "
            "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'celery') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_public_face_names_resolve():
    import dreamgen

    for name in dreamgen.__all__:
        assert getattr(dreamgen, name).__name__ == name
    with pytest.raises(AttributeError):
        dreamgen.no_such_name


def build_wheel(into: Path) -> Path:
    """The wheel of this checkout as a fresh clone builds it: from a copy of its files (what git tracks, and what
    it does not ignore), links kept, so no build/ left in the checkout by an older layout leaks into it."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    tree = into / "tree"
    for name in filter(None, listed):
        source, target = ROOT / name, tree / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        elif source.is_file():
            shutil.copy2(source, target)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(into), str(tree)], check=True, capture_output=True)
    return next(into.glob("dreamgen-*.whl"))


@pytest.mark.slow
def test_the_wheel_holds_the_card_layout_inside_dreamgen_and_runs_from_a_fresh_virtualenv(tmp_path):
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs a git checkout (the wheel is built from its files)")
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"dreamgen"}, tops  # issue 34: no site-packages/cli.py, workers/, ... to collide with
    assert "dreamgen/model/weights/shapes/model.safetensors" in names  # the default model ships
    assert "dreamgen/cli.py" in names and "dreamgen/workers/tasks.py" in names and "dreamgen/__main__.py" in names
    assert "dreamgen/templates/prompts/howto.txt" in names and "dreamgen/templates/document.html.j2" in names
    assert "dreamgen/model/configs/sd21-base/unet/config.json" in names
    assert not any(name.startswith(("tests/", "dreamgen/tests/", "bench/")) for name in names)

    # A fresh virtualenv outside the repository: the wheel alone, its dependencies read from this environment's
    # site-packages (a path, so no .pth of it runs: nothing of the checkout's editable install comes along)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the checkout must not be seen
    env.update(OMP_NUM_THREADS="1", DREAMGEN_HOME=str(tmp_path / "home"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, cwd=tmp_path, env=env)
    (site / "deps-of-the-test.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    def run(*args):
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    where = run(str(python), "-c", "import dreamgen, dreamgen.cli, importlib.util as u; print(dreamgen.__file__); "
                "print([n for n in ('cli', 'workers', 'exporters', 'templates') if u.find_spec(n)])")
    assert where.splitlines() == [str(site / "dreamgen" / "__init__.py"), "[]"]
    assert run(str(python), "-m", "dreamgen", "--help").startswith("Usage: python -m dreamgen [OPTIONS] COMMAND")
    dreamgen = str(venv / "bin" / "dreamgen")  # the console script, as the wheel installs it
    assert "Prompt template: none, article, howto, news" in " ".join(run(dreamgen, "run", "--help").split())
    prompts = tmp_path / "prompts.jsonl"
    shutil.copy(ROOT / "examples" / "prompts.jsonl", prompts)
    said = run(dreamgen, "run", str(prompts), "--out", str(tmp_path / "out"), "--job-id", "w",
               "--steps", "5")
    assert "Job w: 4 done, 0 failed, 4 in the file" in said  # the packaged shapes model, the packaged templates
    assert (tmp_path / "out" / "w" / "index.html").is_file()
