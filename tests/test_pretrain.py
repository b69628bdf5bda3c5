import copy
import json
import math
import os

import pytest
import torch

from asit_embed.checkpoint import load_checkpoint, save_checkpoint
from asit_embed.model import ASiTEncoder, EncoderConfig
from asit_embed.training.pretrain import (ASiTPretrainer, PretrainConfig, build_student_teacher, ema_update, plot_log,
                                 _warn_if_uniform, pretrain)
from asit_embed.training.ssl_objectives import (crop_pair, gmml_corrupt, gmml_mask, koleo_loss, mean_pairwise_cosine,
                                       reconstruction_loss, target_entropy, teacher_log_probs)
from asit_embed.training.runs import read_log
from asit_embed.training.train import TrainConfig, train

TINY = dict(width=64, depth=2, num_heads=2, pool_attention_dim=16, embedding_dim=32, crop_frames=100,
            window_frames=100, hop_frames=50, drop_path=0.0)


@pytest.mark.parametrize("ratio", [(0.5, 0.7), (0.3, 0.3), (0.6, 0.6)])
def test_mask_covers_the_configured_fraction_and_never_everything(ratio):
    g = torch.Generator().manual_seed(0)
    masks = gmml_mask((64, 128, 100), ratio=ratio, max_block=0.3, generator=g)
    frac = masks.float().mean((1, 2))
    assert (frac >= ratio[0] - 0.01).all() and (frac <= ratio[1] + 0.01).all()
    assert (frac < 1).all()
    if ratio[0] != ratio[1]:
        assert frac.std() > 0.01  # the fraction is drawn per sample


def test_blocks_are_bounded():
    g = torch.Generator().manual_seed(1)
    m = gmml_mask((1, 100, 100), ratio=(0.05, 0.05), max_block=0.3, generator=g)[0]
    rows, cols = m.any(1).nonzero(), m.any(0).nonzero()
    assert rows.max() - rows.min() < 100 and cols.max() - cols.min() < 100
    assert m.sum() == 500


def test_corruption_changes_only_the_masked_area():
    torch.manual_seed(0)
    spec = torch.randn(4, 128, 50)
    mask = gmml_mask(tuple(spec.shape), ratio=(0.5, 0.5))
    out = gmml_corrupt(spec, mask, p_replace=0.5)
    assert torch.equal(out[~mask], spec[~mask])
    assert not torch.equal(out[mask], spec[mask])
    replaced = gmml_corrupt(spec, mask, p_replace=1.0)  # every sample takes the next clip's content
    assert torch.equal(replaced[mask], spec.roll(1, 0)[mask])


def test_ema_update_is_exact():
    # dyadic values and momentum: every product and sum is exact in float32, so equality is exact
    g = torch.Generator().manual_seed(0)
    s, t = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    with torch.no_grad():
        for p in list(s.parameters()) + list(t.parameters()):
            p.copy_(torch.randint(-64, 64, p.shape, generator=g).float() / 8)
    before = copy.deepcopy(t)
    ema_update(t, s, 0.75)
    for p_t, p_b, p_s in zip(t.parameters(), before.parameters(), s.parameters()):
        assert torch.equal(p_t, 0.75 * p_b + 0.25 * p_s)
    frozen = copy.deepcopy(t)
    ema_update(t, s, 1.0)  # momentum 1: the teacher does not move
    assert all(torch.equal(a, b) for a, b in zip(t.parameters(), frozen.parameters()))
    ema_update(t, s, 0.0)  # momentum 0: a copy of the student
    assert all(torch.equal(a, b) for a, b in zip(t.parameters(), s.parameters()))


def test_target_entropy_tells_uniform_and_one_hot_collapse_from_health():
    k = 64
    same = torch.randn(1, k).repeat(32, 1)  # every clip gives the same output: centred away to uniform targets
    per_sample, batch = target_entropy(teacher_log_probs(same, same.mean(0), 0.04))
    assert per_sample == pytest.approx(math.log(k), abs=1e-4) and batch == pytest.approx(math.log(k), abs=1e-4)
    winner = torch.zeros(32, k)
    winner[:, 3] = 100.0  # one prototype wins for every clip (no centering)
    assert max(target_entropy(teacher_log_probs(winner, torch.zeros(k), 0.04))) < 1e-3
    distinct = torch.eye(k)[:32] * 10  # sharp and different per clip: low per-sample, high batch entropy
    per_sample, batch = target_entropy(teacher_log_probs(distinct, distinct.mean(0), 0.04))
    assert per_sample < 0.01 and batch == pytest.approx(math.log(32), abs=0.01)


def test_uniform_targets_are_reported(caplog):
    cfg = PretrainConfig(data="x", global_dim=64, local_dim=32)
    with caplog.at_level("WARNING", logger="asit_embed.training.pretrain"):
        _warn_if_uniform({"global_target_entropy": 0.99 * math.log(64), "local_target_entropy": 1.0}, cfg)
    assert len(caplog.records) == 1 and "global distillation targets are near-uniform" in caplog.text
    assert "not progress" in caplog.text


def test_reconstruction_loss_counts_only_the_corrupted_area():
    target = torch.zeros(1, 4, 4)
    recon = torch.zeros(1, 4, 4)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2] = True
    recon[0, 2:] = 100.0  # errors outside the mask do not count
    assert reconstruction_loss(recon, target, mask) == 0
    recon[0, 0, 0] = 8.0
    assert reconstruction_loss(recon, target, mask) == pytest.approx(1.0)  # 8 / 8 masked cells


@pytest.mark.parametrize("patch,stride", [((128, 2), (128, 2)), ((16, 16), (16, 16)), ((16, 16), (16, 10))])
def test_reconstruction_head_covers_the_spectrogram(patch, stride):
    cfg = EncoderConfig.from_dict({**TINY, "patch_size": patch, "patch_stride": stride})
    model = ASiTPretrainer(cfg, PretrainConfig(data="x", global_dim=16, local_dim=8))
    spec = torch.randn(2, 128, 100)
    recon, covered = model.reconstruct(model.tokens(spec)[:, 1:], (128, 100))
    assert recon.shape == (2, 128, 100) and covered.shape == (128, 100)
    assert covered[:, :90].all()


@pytest.mark.slow
def test_short_run_lowers_every_loss_and_fine_tunes(tmp_path, clips_manifest):
    cfg = PretrainConfig(data=str(clips_manifest), out_dir=str(tmp_path / "pt"), role=None, encoder=TINY,
                         epochs=8, batch_size=12, lr=2e-3, warmup_epochs=1, global_dim=64, local_dim=32,
                         teacher_temp_epochs=2, ema_start=0.9)
    pretrain(cfg)
    log = read_log(tmp_path / "pt")
    assert len(log) == 8
    for term in ("global", "local", "recon"):
        assert min(r[term] for r in log[-3:]) < log[0][term], term
    for term, dim in (("global", 64), ("local", 32)):  # the collapse diagnostics are logged, in range
        assert all(0 <= r[f"{term}_target_entropy"] <= math.log(dim) + 1e-4 for r in log), term
    fig = plot_log(tmp_path / "pt" / "log.jsonl", tmp_path / "losses.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:4] == ["global loss", "local loss", "recon loss", "total loss"]
    assert list(fig.axes[2].lines[0].get_ydata()) == [r["recon"] for r in log]  # each panel plots its term
    assert (tmp_path / "losses.png").stat().st_size > 1000

    pre = load_checkpoint(tmp_path / "pt" / "encoder.pt")
    ft = TrainConfig(data=str(clips_manifest), out_dir=str(tmp_path / "ft"), train_role=None, dev_role=None,
                     epochs=1, batch_size=12, init=str(tmp_path / "pt" / "encoder.pt"), layer_decay=0.75, lr=0.0,
                     min_lr=0.0, warmup_epochs=0)
    train(ft)
    state = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)["model"]
    # with lr 0 every transferred weight is exactly where pretraining put it (BatchNorm statistics still move)
    assert {f"encoder.{k}" for k in pre.state_dict} <= set(state)
    for k, v in pre.state_dict.items():
        if "num_batches_tracked" in k or "running_" in k:
            continue
        assert torch.equal(state[f"encoder.{k}"], v), k


def test_init_with_mismatched_shapes_is_a_clear_error(tmp_path, clips_manifest):
    other = ASiTEncoder(EncoderConfig.from_dict({**TINY, "width": 32, "num_heads": 2}))
    save_checkpoint(tmp_path / "other.pt", other)
    ft = TrainConfig(data=str(clips_manifest), out_dir=str(tmp_path / "ft"), train_role=None, dev_role=None,
                     epochs=1, batch_size=12, init=str(tmp_path / "other.pt"), encoder={"width": 64})
    with pytest.raises(ValueError, match="does not fit this encoder"):
        train(ft)


def test_config_checks():
    with pytest.raises(ValueError, match="mask_ratio"):
        PretrainConfig(data="x", mask_ratio=(0.7, 0.5))
    with pytest.raises(ValueError, match="ema_start"):
        PretrainConfig(data="x", ema_start=1.5)
    with pytest.raises(ValueError, match="nothing to train"):
        PretrainConfig(data="x", w_global=0, w_local=0, w_recon=0)
    assert os.path.basename(PretrainConfig(data="x").out_dir) == "pretrain"


def test_crop_pairs_share_content_up_to_the_shift():
    wave = torch.arange(16000.0)
    torch.manual_seed(0)
    for shift in (0, 800):
        for _ in range(50):
            a, b = crop_pair(wave, 4000, shift)
            assert a.shape == b.shape == (4000,)
            assert abs(int(a[0]) - int(b[0])) <= shift
    gaps = [abs(int(a[0]) - int(b[0])) for a, b in (crop_pair(wave, 4000) for _ in range(50))]
    assert max(gaps) > 800  # independent crops by default
    a, b = crop_pair(torch.arange(1000.0), 4000, 0)  # shorter than a crop: tiled
    assert a.shape == (4000,) and torch.equal(a, b)


def test_koleo_rewards_spread_and_its_gradient_separates_neighbours():
    torch.manual_seed(0)
    spread = torch.eye(8)
    clustered = torch.ones(8, 8) + 0.01 * torch.randn(8, 8)
    assert koleo_loss(spread) < koleo_loss(clustered)
    assert torch.isfinite(koleo_loss(torch.ones(4, 8)))  # duplicates: large but finite
    x = clustered.clone().requires_grad_(True)
    koleo_loss(x).backward()
    with torch.no_grad():
        moved = torch.nn.functional.normalize(x - 0.01 * x.grad, dim=-1)
        before = torch.nn.functional.normalize(clustered, dim=-1)
        nearest = lambda y: (torch.cdist(y, y) + torch.eye(8) * 4).min(1).values.mean()  # noqa: E731
    assert nearest(moved) > nearest(before)


def test_mean_pairwise_cosine():
    assert mean_pairwise_cosine(torch.ones(5, 3)) == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.eye(4)) == pytest.approx(0.0)


def test_teacher_is_frozen_and_deterministic():
    cfg = EncoderConfig.from_dict({**TINY, "drop_path": 0.5})
    student, teacher = build_student_teacher(cfg, PretrainConfig(data="x", global_dim=16, local_dim=8))
    assert student.training and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    spec = torch.randn(2, 128, 100)
    assert torch.equal(teacher.tokens(spec), teacher.tokens(spec))  # no stochastic depth in the targets


def test_koleo_and_view_shift_run_and_are_logged(tmp_path, clips_manifest):
    cfg = PretrainConfig(data=str(clips_manifest), out_dir=str(tmp_path / "pt"), role=None, encoder=TINY,
                         epochs=2, batch_size=12, warmup_epochs=1, global_dim=64, local_dim=32, w_koleo=0.3,
                         view_shift=0.25, max_minutes=0.0)
    record = pretrain(cfg)  # stops after one epoch: the budget is spent
    assert pretrain(cfg, resume=True) == {}  # and stays spent on resuming
    assert len((tmp_path / "pt" / "log.jsonl").read_text().splitlines()) == 1
    assert math.isfinite(record["koleo"]) and record["koleo"] > 0
    assert -1 <= record["teacher_cls_cosine"] <= 1
    assert math.isfinite(record["total"])
    with pytest.raises(ValueError, match="view_shift"):
        PretrainConfig(data="x", view_shift=-1)


def test_cli_passes_the_global_target_flags(tmp_path, clips_manifest):
    from asit_embed.cli import main

    out = tmp_path / "pt"
    assert main(["pretrain", "--data", str(clips_manifest), "--role", "all", "--out", str(out), "--epochs", "1",
                 "--batch-size", "12", "--warmup-epochs", "1", "--depth", "1", "--w-koleo", "0.3",
                 "--view-shift", "0.5", "--teacher-temp", "0.02", "--teacher-temp-end", "0.02"]) == 0
    cfg = json.loads((out / "config.json").read_text())["pretrain"]
    assert (cfg["w_koleo"], cfg["view_shift"], cfg["teacher_temp"], cfg["teacher_temp_end"]) == (0.3, 0.5, 0.02, 0.02)
    record = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert record["koleo"] > 0 and (out / "losses.png").is_file()


def test_pretraining_continues_from_an_encoder_on_several_corpora(tmp_path, clip_rows):
    """``init``: the student and the teacher start as the given encoder (its config and feature statistics);
    two corpora are drawn by speakers (``epoch_clips``), and clips shorter than a crop join others of their
    speaker."""
    import csv

    import soundfile as sf

    start = ASiTEncoder(EncoderConfig.from_dict({**TINY, "feat_mean": 0.5, "feat_std": 2.0}))
    save_checkpoint(tmp_path / "start.pt", start)
    manifests = []
    for corpus, seconds in (("long", None), ("short", 0.6)):   # "short": 0.6 s clips, under the 1 s crop
        rows = []
        for r in clip_rows[:12]:
            wave, rate = sf.read(r["path"], dtype="float32")
            path = tmp_path / corpus / f"{r['speaker']}_{len(rows)}.wav"
            path.parent.mkdir(exist_ok=True)
            sf.write(path, wave if seconds is None else wave[int(rate): int(rate * (1 + seconds))], rate)
            rows.append({"path": str(path), "speaker": r["speaker"], "role": "train"})
        manifests.append(tmp_path / corpus / "manifest.csv")
        with open(manifests[-1], "w", newline="") as f:
            csv.DictWriter(f, ["path", "speaker", "role"]).writeheader()
            csv.DictWriter(f, ["path", "speaker", "role"]).writerows(rows)
    cfg = PretrainConfig(data=tuple(map(str, manifests)), out_dir=str(tmp_path / "pt"), epochs=1, batch_size=6,
                         warmup_epochs=0, lr=0.0, min_lr=0.0, global_dim=64, local_dim=32, epoch_clips=12,
                         first_corpus_share=0.5, init=str(tmp_path / "start.pt"))
    record = pretrain(cfg)
    assert math.isfinite(record["total"])
    saved = json.loads((tmp_path / "pt" / "config.json").read_text())
    assert saved["encoder"]["feat_mean"] == 0.5 and saved["encoder"]["feat_std"] == 2.0  # the encoder's own
    assert saved["pretrain"]["epoch_clips"] == 12
    out = load_checkpoint(tmp_path / "pt" / "encoder.pt")
    for k, v in start.state_dict().items():  # lr 0: the encoder is where it started (EMA rounding aside)
        if "num_batches_tracked" not in k and "running_" not in k:
            assert torch.allclose(out.state_dict[k], v, atol=1e-6), k


def test_cli_continues_an_encoder_with_another_band(tmp_path, clips_manifest):
    """``pretrain --init CKPT --max-freq-hz 0``: a band-limited encoder continues on the full band (the
    checkpoint's other settings kept); ``train`` takes the same encoder options."""
    from asit_embed.cli import main

    save_checkpoint(tmp_path / "start.pt", ASiTEncoder(EncoderConfig.from_dict({**TINY, "max_freq_hz": 3800.0})))
    out = tmp_path / "pt"
    assert main(["pretrain", "--data", str(clips_manifest), "--role", "all", "--out", str(out), "--epochs", "1",
                 "--batch-size", "12", "--warmup-epochs", "0", "--global-dim", "64", "--local-dim", "32",
                 "--init", str(tmp_path / "start.pt"), "--max-freq-hz", "0"]) == 0
    config = load_checkpoint(out / "encoder.pt").config
    assert config.max_freq_hz == 0.0 and config.width == TINY["width"] and config.depth == TINY["depth"]
    assert main(["train", "--data", str(clips_manifest), "--train-role", "all", "--dev-role", "none",
                 "--out", str(tmp_path / "ft"), "--epochs", "1", "--batch-size", "12", "--init", str(out / "encoder.pt"),
                 "--max-freq-hz", "3800"]) == 0
    assert load_checkpoint(tmp_path / "ft" / "final.pt").config.max_freq_hz == 3800.0
