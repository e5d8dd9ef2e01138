"""The documentation stays true to the code, checked without running anything: every relative
link of README.md, config/README.md and docs/*.md names an existing file (and, with
``#anchor``, an existing heading); every ``python -m nas_core COMMAND`` they show is a
subcommand of the CLI's parser and each ``--option`` on its line is one of that subcommand's;
every stage key they name (``search.epochs``, or a key of a ``search:`` / ``train:`` /
``test:`` / ``select:`` block in a YAML snippet) is in ``nas_core.config.SPECS``; every rule of
the README's "What runs" table is a rule of workflow/rules/*.smk; and .ci/run runs the
README's test command.  Each check is also run once on a broken sample, to show it can fail."""

from __future__ import annotations

import argparse
import fnmatch
import re
import shlex
from pathlib import Path

import yaml

from nas_core.cli import build_parser
from nas_core.config import SPECS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "config" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*```")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SPAN = re.compile(r"`([^`\n]+(?:\n[^`\n]+)*)`")
NAS_CORE = re.compile(r"(?:python3?|\.venv/bin/python)\s+-m\s+nas_core\s+([a-z][\w-]*)(.*)")
OPTION = re.compile(r"(?<![\w-])--[a-zA-Z][\w-]*")
# ``search.epochs``, but not ``datasets.mnist.train.epochz``, ``results/mnist/test.json``
# or a function of a stage module, ``search.search_probe(cfg, ...)``
STAGE_KEY = re.compile(r"(?<![\w./-])(search|train|test|select)\.([a-z_]+)\b(?!\()")
FILE_SUFFIXES = {"json", "py", "pt", "pt2", "log", "tsv", "html", "png", "csv", "yaml", "smk",
                 "onnx", "dot", "nc"}
INLINE_BLOCK = re.compile(r"^(search|train|test|select):\s*\{.*\}$")


# -- reading markdown ---------------------------------------------------------------------------

def split_markdown(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The prose (fenced blocks blanked) and the fenced blocks as ``(info, body)``; indented
    fences (inside list items) count, their indentation is removed from the body."""
    prose, blocks, body, info, indent = [], [], None, "", 0
    for line in text.split("\n"):
        if FENCE.match(line):
            if body is None:
                indent = len(line) - len(line.lstrip())
                info, body = line.strip()[3:].strip(), []
            else:
                blocks.append((info, "\n".join(body)))
                body = None
            prose.append("")
        elif body is not None:
            body.append(line[indent:] if line[:indent].strip() == "" else line)
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), blocks


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a page's headings (a repeated heading gets ``-1``, ``-2``, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in split_markdown(text)[0].split("\n"):
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            s = slug(m.group(1))
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return out


def commands(text: str) -> list[str]:
    """Command lines: the logical lines of fenced blocks (``\\`` continuations joined, comments
    dropped) and the inline code spans of the prose, whitespace collapsed."""
    prose, blocks = split_markdown(text)
    out = []
    for _, body in blocks:
        for line in body.replace("\\\n", " ").split("\n"):
            out.append(re.sub(r"\s#.*", "", line))
    out += SPAN.findall(prose)
    return [" ".join(c.split()) for c in out]


# -- the checks: each returns a list of problems ------------------------------------------------

def link_problems(page: Path, text: str) -> list[str]:
    problems = []
    for target in LINK.findall(split_markdown(text)[0]):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve()
        if path and not dest.exists():
            problems.append(f"{page.name}: link to a missing file: {target}")
        elif anchor and (not path or dest.suffix == ".md"):
            if anchor not in anchors(dest.read_text() if path else text):
                problems.append(f"{page.name}: link to a missing heading: {target}")
    return problems


def subcommand_options(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """Each subcommand of the CLI and its option strings."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: set(p._option_string_actions) for name, p in sub.choices.items()}


def cli_problems(page: Path, text: str, options: dict[str, set[str]]) -> list[str]:
    problems = []
    for line in commands(text):
        for m in NAS_CORE.finditer(line):
            command, rest = m.group(1), m.group(2)
            if command not in options:
                problems.append(f"{page.name}: no subcommand {command!r}: {line}")
                continue
            for opt in OPTION.findall(rest.split("&&")[0].split("|")[0]):
                if opt not in options[command]:
                    problems.append(f"{page.name}: {command} has no option {opt}: {line}")
    return problems


def _block_keys(doc) -> list[tuple[str, str]]:
    """``(stage, key)`` of the stage blocks of a config snippet: top level and under
    ``datasets.<name>``."""
    if not isinstance(doc, dict):
        return []
    blocks = [doc] + [d for d in (doc.get("datasets") or {}).values() if isinstance(d, dict)]
    return [(stage, key) for block in blocks for stage, keys in block.items()
            if stage in SPECS and isinstance(keys, dict) for key in keys if key != "..."]


def config_key_problems(page: Path, text: str) -> list[str]:
    prose, blocks = split_markdown(text)
    found = [(m.group(1), m.group(2)) for m in STAGE_KEY.finditer(text)
             if m.group(2) not in FILE_SUFFIXES]
    for info, body in blocks:
        if info == "yaml":
            found += _block_keys(yaml.safe_load(body))
    for span in SPAN.findall(prose):
        if INLINE_BLOCK.match(span.strip()):
            found += _block_keys(yaml.safe_load(span))
    return [f"{page.name}: no config key {stage}.{key}" for stage, key in found
            if key not in SPECS[stage]]


def table_rules(readme: str) -> list[str]:
    """The rule names (backticked, first column) of the README's "What runs" table."""
    section = readme.split("## What runs", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.split("\n") if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])]


def workflow_rules() -> set[str]:
    return {m for f in (ROOT / "workflow" / "rules").glob("*.smk")
            for m in re.findall(r"^(?:rule|checkpoint)\s+(\w+)\s*:", f.read_text(), re.M)}


def rule_problems(names: list[str], rules: set[str]) -> list[str]:
    return [f"README: no rule matches {name!r}" for name in names
            if not fnmatch.filter(rules, name)]


def _steps(line: str) -> list[tuple[str, list[str]]]:
    """A shell line as ``(tool, arguments)`` steps; ``pip`` and ``python -m pip`` are one tool,
    and output-only flags (``-q``, ``-ra``) are dropped."""
    steps = []
    for part in line.split("&&"):
        words = shlex.split(part)
        if words[1:2] == ["-m"]:
            words = [f"{words[0]} -m {words[2]}"] + words[3:]
        tool = words[0].replace(".venv/bin/python -m pip", ".venv/bin/pip")
        steps.append((tool, [w for w in words[1:] if w not in ("-q", "-ra")]))
    return steps


def readme_test_command(readme: str) -> str:
    """The quick start's command that runs pytest."""
    _, blocks = split_markdown(readme.split("## Quick start", 1)[1])
    return next(body.strip() for _, body in blocks if "pytest" in body)


def ci_problems(readme_command: str, ci: str) -> list[str]:
    ci_steps = [s for line in ci.split("\n") if line.startswith((".venv/bin/", "python3 -m venv"))
                for s in _steps(line)]
    return [f".ci/run does not run the README's step {tool} {' '.join(args)}"
            for tool, args in _steps(readme_command) if (tool, args) not in ci_steps]


# -- the tests ----------------------------------------------------------------------------------

def test_links_point_to_files_and_headings():
    problems = [p for page in PAGES for p in link_problems(page, page.read_text())]
    assert not problems, "\n".join(problems)


def test_cli_commands_and_options_exist():
    options = subcommand_options(build_parser())
    problems = [p for page in PAGES for p in cli_problems(page, page.read_text(), options)]
    assert not problems, "\n".join(problems)


def test_config_keys_exist():
    problems = [p for page in PAGES for p in config_key_problems(page, page.read_text())]
    assert not problems, "\n".join(problems)


def test_readme_rules_exist():
    names = table_rules(README.read_text())
    assert len(names) >= 10, names
    assert not rule_problems(names, workflow_rules())


def test_ci_runs_the_readme_test_command():
    command = readme_test_command(README.read_text())
    assert command == ("python3 -m venv .venv && .venv/bin/pip install -e '.[test]' "
                       "&& .venv/bin/python -m pytest")
    problems = ci_problems(command, (ROOT / ".ci" / "run").read_text())
    assert not problems, "\n".join(problems)


def test_the_checks_catch_mistakes(tmp_path):
    """A page with one mistake of each kind: every check reports it."""
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page = tmp_path / "page.md"
    text = "\n".join([
        "# Page", "",
        "[ok](other.md#a-section) [gone](missing.md) [bad anchor](other.md#no-section)",
        "[local](#page) [bad local](#nowhere)", "",
        "```bash",
        "python -m nas_core search --config c.yaml --dataset mnist --set search.epochs=5",
        "python -m nas_core serch --config c.yaml",
        "python -m nas_core predict results/mnist x.png \\",
        "    --jsn",
        "```", "",
        "`search.epochz`, `results/mnist/test.json`, `datasets.mnist.train.epochz`,",
        "`select: {epochs: 5, layerz: 2}`, `search.search_probe(cfg)`", "",
        "```yaml",
        "search: {epochs: 1}",
        "datasets:",
        "  mnist:",
        "    train: {epochs: 2, widht: 3}",
        "set-resources:",
        "  train: {mpi: srun}",
        "```", ""])
    assert link_problems(page, text) == [
        "page.md: link to a missing file: missing.md",
        "page.md: link to a missing heading: other.md#no-section",
        "page.md: link to a missing heading: #nowhere"]
    cli = cli_problems(page, text, subcommand_options(build_parser()))
    assert len(cli) == 2 and "no subcommand 'serch'" in cli[0] and "no option --jsn" in cli[1]
    assert config_key_problems(page, text) == [
        "page.md: no config key search.epochz", "page.md: no config key train.widht",
        "page.md: no config key select.layerz"]
    rules = workflow_rules()
    assert rule_problems(["train", "report_*"], rules) == []
    assert rule_problems(["trian", "reprot_*"], rules) == [
        "README: no rule matches 'trian'", "README: no rule matches 'reprot_*'"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci_problems("python3 -m venv .venv && .venv/bin/pip install -e '.[test]' "
                       "&& .venv/bin/python -m pytest -x", ci) == [
        ".ci/run does not run the README's step .venv/bin/python -m pytest -x"]
    assert len(ci_problems("python3 -m venv .venv && .venv/bin/pip install -e .", ci)) == 1


def test_architecture_lists_the_keys_that_do_not_change_results():
    """docs/architecture.md names NON_RESULT_KEYS as the code has them (it drifted once)."""
    from nas_core.config import NON_RESULT_KEYS

    text = (ROOT / "docs" / "architecture.md").read_text()
    listed = re.search(r"`NON_RESULT_KEYS` \(left out of checkpoint fingerprints: ([^)]*)\)", text)
    assert listed, "docs/architecture.md: the NON_RESULT_KEYS list is gone"
    assert set(re.findall(r"`(\w+)`", listed.group(1))) == set(NON_RESULT_KEYS)
