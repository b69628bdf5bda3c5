"""Plot a training run's log (loss, accuracy, dev EER / top-1 per epoch) to a PNG.

    python examples/plot_training.py runs/ft_d15_full/log.jsonl [out.png]
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from asit_embed.training.runs import read_log  # noqa: E402


def main(log_path: str, out: str | None = None):
    """Plot ``log_path`` into ``out`` (default: ``training.png`` beside it); returns the closed figure."""
    records = read_log(log_path)
    if not records:
        sys.exit(f"{log_path} holds no epochs yet")
    epochs = [r["epoch"] for r in records]
    dev = [r for r in records if "dev_eer" in r]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].plot(epochs, [r["loss"] for r in records])
    axes[0].set_title("training loss (AAM-softmax)")
    axes[1].plot(epochs, [r["train_acc"] for r in records], label="train accuracy")
    axes[1].plot([r["epoch"] for r in dev], [r["dev_top1"] for r in dev], "o-", label="dev top-1 (unseen speakers)")
    axes[1].set_ylim(0, 1)
    axes[1].legend()
    axes[1].set_title("accuracy")
    axes[2].plot([r["epoch"] for r in dev], [100 * r["dev_eer"] for r in dev], "o-", color="C3")
    axes[2].set_title("dev EER (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = out or str(Path(log_path).with_name("training.png"))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")
    return fig


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(*sys.argv[1:3])
