"""The Resemblyzer teacher: cached utterance embeddings and the distillation term of fine-tuning."""

import sys

import numpy as np
import pytest
import torch

from asit_embed.training.runs import read_log
from asit_embed.training.teacher import TeacherHead, relational_loss
from asit_embed.training.train import TrainConfig, train
from test_train import NO_AUG, TINY


def test_distillation_is_off_by_default_and_needs_no_teacher(tmp_path, clips_manifest, monkeypatch):
    assert TrainConfig(data="x").w_teacher == 0.0
    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # as if the [train] extra were not installed
    cfg = TrainConfig(data=str(clips_manifest), out_dir=str(tmp_path / "run"), train_role=None, dev_role=None,
                      encoder=TINY, augment=NO_AUG, epochs=1, batch_size=12)
    train(cfg)
    assert "distill" not in read_log(tmp_path / "run")[0]
    with pytest.raises(ImportError, match=r"asit-embed\[train\]"):
        train(TrainConfig.from_dict({**cfg.to_dict(), "w_teacher": 1.0, "out_dir": str(tmp_path / "t")}))


def test_teacher_head_loss_and_mask():
    head = TeacherHead(4, 3)
    student, teacher = torch.randn(5, 4), torch.randn(5, 3)
    loss = head(student, teacher)
    assert 0 <= float(loss.detach()) <= 2
    with torch.no_grad():
        aligned = head(student, head.proj(student))  # targets along the projection: no loss
    assert float(aligned) == pytest.approx(0.0, abs=1e-6)
    mask = torch.tensor([True, False, False, False, False])
    assert float(head(student, teacher, mask)) == pytest.approx(float(head(student[:1], teacher[:1])))
    assert float(head(student, teacher, torch.zeros(5, dtype=torch.bool))) == 0.0


def test_relational_term_matches_the_teachers_pairwise_cosines():
    torch.manual_seed(0)
    teacher = torch.randn(6, 3)
    mean = torch.tensor([2.0, -1.0, 0.5])
    rotation = torch.linalg.qr(torch.randn(3, 3))[0]
    # A student whose cosines are the centred teacher's (a rotation and a scale of it) has nothing to learn.
    same_geometry = 3 * (teacher @ rotation)
    assert float(relational_loss(same_geometry, teacher)) == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(6, 4, requires_grad=True)
    assert float(relational_loss(student, teacher)) > 0.01
    plain, relational = TeacherHead(4, 3), TeacherHead(4, 3, relation=2.0, teacher_mean=mean)
    relational.load_state_dict(plain.state_dict())  # the mean is not saved: it comes from the cache
    extra = relational(student, teacher + mean) - plain(student, teacher + mean)
    assert float(extra) == pytest.approx(2.0 * float(relational_loss(student, teacher)), rel=1e-5)
    extra.backward()
    assert student.grad.abs().sum() > 0  # it shapes the student's embeddings themselves


@pytest.mark.slow
def test_teacher_embeddings_are_cached_and_distillation_decreases(tmp_path, clips_manifest, clip_rows):
    pytest.importorskip("resemblyzer")
    from asit_embed.training.teacher import teacher_embeddings

    paths = [r["path"] for r in clip_rows]
    cache = tmp_path / "teacher.npz"
    emb = teacher_embeddings(paths[:4], cache)
    assert emb.shape == (4, 256) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    with np.load(cache) as z:
        assert z["paths"].tolist() == paths[:4]
    assert np.array_equal(teacher_embeddings(paths[:4], cache), emb)  # read back, not recomputed
    # The teacher tells the bundled speakers apart: same-speaker pairs score above different-speaker pairs.
    emb = teacher_embeddings(paths, cache)
    speakers = np.array([r["speaker"] for r in clip_rows])
    sim = emb @ emb.T
    same = speakers[:, None] == speakers[None, :]
    off = ~np.eye(len(paths), dtype=bool)
    assert sim[same & off].mean() > sim[~same].mean() + 0.1

    cfg = TrainConfig(data=str(clips_manifest), out_dir=str(tmp_path / "run"), train_role=None, dev_role=None,
                      encoder=TINY, augment=NO_AUG, epochs=8, batch_size=12, lr=3e-3, warmup_epochs=1,
                      w_teacher=1.0, w_relation=1.0, teacher_cache=str(cache), speed_speakers=(0.9,))
    train(cfg)
    log = read_log(tmp_path / "run")
    assert all("distill" in r for r in log)
    assert log[-1]["distill"] < 0.9 * log[0]["distill"]
