"""Scripts outside the package (benchmarks, side-by-side harness, maintenance scripts) are not imported by any other
test: each must at least compile, so a syntax slip cannot sit unnoticed until someone runs it."""

from __future__ import annotations

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.relative_to(ROOT).as_posix() for d in ("benchmarks", "scripts") for p in (ROOT / d).rglob("*.py"))


def test_there_are_scripts():
    assert any(s.startswith("benchmarks/bench_") for s in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_compiles(script):
    source = (ROOT / script).read_text()
    compile(source, script, "exec")  # SyntaxError names the file and line
