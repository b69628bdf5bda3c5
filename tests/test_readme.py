"""Every Python block in README.md runs as written, from the repository root, on the bundled clips."""

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_python_blocks():
    assert BLOCKS


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path, monkeypatch):
    # A copy of the clips in a scratch folder, so the block's registry lands there and not in the checkout.
    shutil.copytree(ROOT / "examples" / "clips", tmp_path / "examples" / "clips")
    shutil.copy(ROOT / "examples" / "conversation.flac", tmp_path / "examples" / "conversation.flac")
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {"__name__": "__readme__"})  # raises if it fails
