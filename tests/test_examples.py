import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_demo_runs_and_reports(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r"accuracy (\d+)/(\d+)", proc.stdout)
    assert m and int(m.group(2)) == 18
    assert "un-enrolled speaker rejected" in proc.stdout
    assert (ROOT / "out" / "demo_scores.png").stat().st_size > 1000


def test_plot_training_log(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 1, "loss": 3.0, "train_acc": 0.2}\n'
                   '{"epoch": 2, "loss": 2.0, "train_acc": 0.5, "dev_top1": 0.6, "dev_eer": 0.1}\n')
    subprocess.run([sys.executable, str(ROOT / "examples" / "plot_training.py"), str(log), str(tmp_path / "t.png")],
                   check=True, capture_output=True, timeout=120)
    assert (tmp_path / "t.png").stat().st_size > 1000
