"""The README and the guides in docs/ stay true to the code: every relative link and anchor resolves, every
file of the project they name exists, and every command they show composes and passes the checks its command
makes before any work (so a renamed key, group option or file is caught here, not by a reader)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from src import command_rules as rules
from src.config import build
from tests.helpers import ROOT, compose_entry

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND_CONFIGS = {"train": ("train", rules.TRAIN_RULES), "evaluate": ("eval", rules.EVAL_RULES),
                   "predict": ("predict", rules.PREDICT_RULES), "export": ("export", rules.EXPORT_RULES),
                   "demo": ("demo", rules.DEMO_RULES)}
# Where a command shows a value the reader fills in: `ckpt_path=<run>`, `data.root=PATH`, `images=[...]`.
PLACEHOLDER = re.compile(r"<[^>]*>|\.\.\.|\bPATH\b|\bDIR\b")
# A project path named in prose: `src/...`, `conf/...`, `tests/...`, `tools/...` or a path inside src/
# (`data/loader.py`, `training/trainer.py`), as docs/design.md names modules.
PROJECT_PATH = re.compile(r"`((?:src|conf|tests|tools|docs|data|models|training|evaluation|inference|reporting|"
                          r"runtime)/[\w./-]*\w)`")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.*)$", path.read_text(), re.M)}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_link_and_anchor_resolves(document):
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", document.read_text()):
        if link.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = link.partition("#")
        target = (document.parent / path).resolve() if path else document
        if not target.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link} (no heading with that anchor)")
    assert not broken, f"{document.name}: {broken}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_project_file_named_exists(document):
    """`data/loader.py` in docs/design.md is src/data/loader.py (`models/__main__` a module of it);
    `conf/model/lenet.yaml` is from the root."""
    missing = []
    for name in set(PROJECT_PATH.findall(document.read_text())):
        if "*" in name or "<" in name or "NAME" in name:  # a pattern, not a file
            continue
        candidates = [ROOT / name, ROOT / "src" / name, ROOT / "src" / f"{name}.py"]
        if not any(c.exists() for c in candidates):
            missing.append(name)
    assert not missing, f"{document.name} names files that do not exist: {sorted(missing)}"


def _commands() -> list[tuple[str, str, str]]:
    """(document, command, the text after `python -m src.<command>`) for every command line shown, each
    command once (the first document that shows it)."""
    found, seen = [], set()
    for document in DOCUMENTS:
        text = document.read_text().replace("\\\n", " ")  # shell continuation lines
        for line in text.splitlines():
            for match in re.finditer(r"python -m src\.(train|evaluate|predict|export|demo)\b([^`\n]*)", line):
                key = (match.group(1), re.sub(r"\s+#.*|\s+", " ", match.group(2)).strip())
                if "#" not in line[:match.start()] and key not in seen:  # not a mention inside a comment
                    seen.add(key)
                    found.append((document.name, match.group(1), match.group(2)))
    return found


def _arguments(rest: str) -> list[str] | None:
    """The overrides of a shown command, or None for one that is not a whole command (prose around it)."""
    rest = re.sub(r"\s#\s.*$", "", rest).strip()  # a comment after the command
    rest = re.sub(r"\s{2,}.*$", "", rest)  # a table-like description after wide spacing
    rest = re.sub(r"<[^>]*>", "<x>", rest)  # `<run A>` is one placeholder
    try:
        words = shlex.split(rest)
    except ValueError:
        return None
    return words


def _variants(overrides: list[str]) -> list[list[str]]:
    """A sweep (`-m` with `a=1,2,3 b=x,y`) as single runs: the first and the last value of each swept key,
    the other keys at their first value (the values between are of the same kind: seeds, folds)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    sweeps = [i for i, o in enumerate(parsed) if o.is_sweep_override()]
    if not sweeps:
        return [overrides]

    def values(i: int) -> list[str]:
        o = parsed[i]
        shown = list(o.sweep_string_iterator())
        return [f"{o.get_key_element()}={v}" for v in dict.fromkeys([shown[0], shown[-1]])]

    first = [values(i)[0] if i in sweeps else arg for i, arg in enumerate(overrides)]
    variants = [first[:i] + [v] + first[i + 1:] for i in sweeps for v in values(i)]
    return [list(v) for v in dict.fromkeys(map(tuple, variants))]


def _check_before_work(command: str, overrides: list[str]) -> None:
    """Composes the command's config and runs the checks the command makes before reading any data."""
    config_name, command_rules = COMMAND_CONFIGS[command]
    cfg = compose_entry(config_name, overrides)
    rules.check_values(cfg, command_rules)
    if command == "train":
        rules.check_optimizer_config(cfg.optim)
        build(cfg.aug)
        build(cfg.sched)
        data = build(cfg.data)
        rules.check_model_config(cfg.model, data.channels)


def _runnable(command: str, words: list[str]) -> list[str] | None:
    """The overrides to check, with the reader's placeholders filled in; None for a command this test cannot
    compose: one that reads a user's own --config-dir (docs/plugins.md's example, run by tests/test_plugins.py)."""
    if "--config-dir" in words:
        return None
    overrides = []
    for word in words:
        if word in ("-m", "--multirun", "--help", "--cfg", "job"):
            continue
        if PLACEHOLDER.fullmatch(word):  # `python -m src.train ... tta=tencrop`: "the run's own overrides"
            continue
        key, sep, value = word.partition("=")
        if sep and PLACEHOLDER.search(value):
            value = "'filled in by the reader'"
        overrides.append(f"{key}{sep}{value}")
    if command != "train" and not any(o.startswith("ckpt_path=") for o in overrides):
        overrides.append("ckpt_path='filled in by the reader'")  # `python -m src.demo` named in prose
    return overrides


COMMANDS = _commands()


def test_the_documents_show_commands_of_every_kind():
    shown = {command for _, command, _ in COMMANDS}
    assert shown == set(COMMAND_CONFIGS), shown
    assert len(COMMANDS) > 50


@pytest.mark.parametrize("document,command,rest", COMMANDS, ids=[f"{d}:{c}{r[:60]}" for d, c, r in COMMANDS])
def test_every_command_shown_composes_and_passes_its_checks(document, command, rest, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing a check might write lands in the repository
    words = _arguments(rest)
    overrides = None if words is None else _runnable(command, words)
    if overrides is None:
        pytest.skip("not a whole command, or it reads a user's --config-dir")
    for variant in _variants(overrides):
        _check_before_work(command, variant)
