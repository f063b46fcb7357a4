"""The Python examples of the READMEs, run as printed (from a directory whose configs/ are
the test federation's, as the repository root's are `sagefed up`'s)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def example(readme: Path) -> str:
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    return next(b for b in blocks if 'FederationClient("Thor")' in b)


def run(federation, code: str) -> list:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=federation.configs.parent, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()


def test_the_sage_loop_of_python_readme(federation):
    loop = example(ROOT / "python" / "README.md")
    assert len(loop.strip().splitlines()) <= 10, "the loop is ten lines"
    lines = run(federation, loop)
    assert [l.split(":")[0] for l in lines[:3]] == ["frame 0", "frame 1", "frame 2"], lines
    assert all(" paid, quality " in l for l in lines[:3]), lines
    assert lines[3].startswith("Thor: ") and "0 tasks running" in lines[3], lines


def test_the_example_of_the_main_readme(federation):
    lines = run(federation, example(ROOT / "README.md"))
    assert lines[0].startswith("True "), lines
    assert lines[1].startswith("LctStatus(lct='lct:web4:agent:dp@Thor#consciousness', active=True"), lines
