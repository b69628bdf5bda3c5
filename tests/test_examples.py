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
    assert re.search(r"identify threshold -?\d+\.\d+: lets 1% of strangers through with 5 speakers", proc.stdout)
    named = re.search(r"enrolled speakers named first (\d+)/15", proc.stdout)
    rejected = re.search(r"un-enrolled speaker rejected (\d+)/3", proc.stdout)
    assert named and int(named.group(1)) >= 13 and rejected and int(rejected.group(1)) == 3
    assert (ROOT / "out" / "demo_scores.png").stat().st_size > 1000


def test_plot_training_log(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 1, "loss": 3.0, "train_acc": 0.2}\n'
                   '{"epoch": 2, "loss": 2.0, "train_acc": 0.5, "dev_top1": 0.6, "dev_eer": 0.1}\n')
    subprocess.run([sys.executable, str(ROOT / "examples" / "plot_training.py"), str(log), str(tmp_path / "t.png")],
                   check=True, capture_output=True, timeout=120)
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "t.png")
    assert image.shape[:2] == (round(3.8 * 110), 14 * 110) and image.std() > 0.05
    sys.path.insert(0, str(ROOT / "examples"))
    from plot_training import main

    fig = main(str(log), str(tmp_path / "t2.png"))
    loss, acc, eer = fig.axes
    assert list(loss.lines[0].get_ydata()) == [3.0, 2.0]
    assert list(acc.lines[1].get_xdata()) == [2] and list(eer.lines[0].get_ydata()) == [10.0]
