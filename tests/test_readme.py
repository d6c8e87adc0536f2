"""Every Python snippet of the README runs as written (each in a fresh namespace, from the repository root), and the
README's shell commands name CLIs and options that exist."""

from __future__ import annotations

import os
import pathlib
import re
import shlex

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_python_snippets():
    assert len(SNIPPETS) >= 2, "the README's usage section lost its Python snippets"


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_python_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # snippets refer to shipped files by repository-relative paths
    monkeypatch.setenv("FMJAX_README_TMP", str(tmp_path))
    code = compile(SNIPPETS[index], f"README.md python snippet {index}", "exec")
    exec(code, {"__name__": "__readme__"})  # noqa: S102 (the README's own code)


def _commands():
    """``(target, rest)`` of every ``python -m X ...`` / ``python path.py ...`` in the README's bash blocks (one
    command per line, continuation lines joined, ``&&`` chains split)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").split("\n"):
            for part in line.split("&&"):
                m = re.search(r"python (-m [\w.]+|[\w/]+\.py)(.*)", part.strip())
                if m:
                    out.append((m.group(1), m.group(2)))
    return out


def test_readme_commands_use_existing_options():
    """Each ``python -m X --opt`` in the README's bash blocks: ``X --help`` lists ``--opt``."""
    import subprocess
    import sys

    seen = {}
    for target, rest in _commands():
        if target.endswith(".py") and not (ROOT / target).exists():
            pytest.fail(f"README runs {target}, which does not exist")
        words = shlex.split(rest.split("#")[0])
        if target == "-m fmjax.cli" and words and not words[0].startswith("-"):
            target, words = f"{target} {words[0]}", words[1:]  # a subcommand: its own --help
        opts = [t.split("=")[0] for t in words if t.startswith("--")]
        if not opts:
            continue
        if target not in seen:
            cmd = [sys.executable] + (target.split() if target.startswith("-m") else [target]) + ["--help"]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)))
            assert proc.returncode == 0, f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}"
            seen[target] = proc.stdout
        for opt in opts:
            assert opt in seen[target], f"README: `python {target}` has no option {opt}"
