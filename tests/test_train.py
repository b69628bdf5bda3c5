"""Tiny training runs on the bundled real clips (6 speakers)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asit_embed.training.augment import AugmentConfig
from asit_embed.checkpoint import load_checkpoint
from asit_embed.model import ASiTEncoder
from asit_embed.training.train import TrainConfig, random_length, train

TINY = dict(width=64, depth=2, num_heads=2, pool_attention_dim=16, embedding_dim=32, crop_frames=100,
            window_frames=100, hop_frames=50, drop_path=0.0)
NO_AUG = AugmentConfig(p_noise=0, p_speed=0, p_drop_chunk=0, p_drop_freq=0, p_gain=0, p_specaug=0)


def config(tmp_path, clips_manifest, **kw):
    base = dict(data=str(clips_manifest), out_dir=str(tmp_path / "run"), train_role=None, dev_role=None,
                encoder=TINY, augment=NO_AUG, epochs=12, batch_size=12, lr=3e-3, warmup_epochs=1,
                margin=0.1, margin_start=2, margin_ramp=2, seed=0)
    return TrainConfig(**{**base, **kw})


def read_log(out_dir):
    return [json.loads(line) for line in Path(out_dir, "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_tiny_run_overfits_real_clips(tmp_path, clips_manifest):
    cfg = config(tmp_path, clips_manifest)
    train(cfg)
    log = read_log(cfg.out_dir)
    assert len(log) == 12
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    assert log[-1]["train_acc"] > log[0]["train_acc"] and log[-1]["train_acc"] >= 0.8
    ckpt = load_checkpoint(os.path.join(cfg.out_dir, "best.pt"))
    assert ckpt.metadata["speakers"] == sorted({"0036", "0070", "1027", "1418", "3020", "9611"})
    final = load_checkpoint(os.path.join(cfg.out_dir, "final.pt"))  # the network the schedule ended with
    assert final.metadata["dev"]["final_epoch"] == 12 and final.config == ckpt.config


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(tmp_path, clips_manifest):
    # On some CPUs (seen on AMD EPYC) multi-threaded float32 kernels add up in a varying order, so two fresh
    # runs differ in the last bits; one thread makes runs comparable bit for bit, which is what resume promises.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _resume_equals_uninterrupted_run(tmp_path, clips_manifest)
    finally:
        torch.set_num_threads(threads)


def _resume_equals_uninterrupted_run(tmp_path, clips_manifest):
    aug = AugmentConfig(p_noise=0.5, p_speed=0.5, p_drop_chunk=0.5, p_drop_freq=0.5, p_specaug=0.5)
    full = config(tmp_path / "a", clips_manifest, epochs=3, augment=aug, min_crop_frames=60)
    train(full)
    part = config(tmp_path / "b", clips_manifest, epochs=3, augment=aug, min_crop_frames=60)
    train(TrainConfig.from_dict({**part.to_dict(), "max_minutes": 0.0}))  # stops after the first epoch
    assert len(read_log(part.out_dir)) == 1
    train(TrainConfig.from_dict({**part.to_dict(), "max_minutes": 0.0}), resume=True)  # the budget is spent
    assert len(read_log(part.out_dir)) == 1
    train(part, resume=True)
    a = torch.load(os.path.join(full.out_dir, "last.pt"), weights_only=True)["model"]
    b = torch.load(os.path.join(part.out_dir, "last.pt"), weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in read_log(full.out_dir)] == [r["loss"] for r in read_log(part.out_dir)]


@pytest.mark.slow
def test_train_crop_frames_feeds_longer_crops_to_the_same_table(tmp_path, clips_manifest, monkeypatch):
    seen = []
    forward = ASiTEncoder.forward_features

    def spy(self, spec, lengths=None):
        if self.training:
            seen.append(spec.shape[2])
        return forward(self, spec, lengths)

    monkeypatch.setattr(ASiTEncoder, "forward_features", spy)
    cfg = config(tmp_path, clips_manifest, epochs=1, train_crop_frames=160)
    train(cfg)
    assert seen and set(seen) == {160}  # TINY's own crop is 100 frames
    ckpt = load_checkpoint(os.path.join(cfg.out_dir, "final.pt"))
    assert ckpt.config.crop_frames == 100  # the positional table keeps its size; longer inputs stretch it
    with pytest.raises(ValueError, match="train_crop_frames"):
        TrainConfig(data="x.csv", train_crop_frames=-1)


def test_class_centroids_are_unit_means_without_a_graph(clips_manifest):
    from asit_embed.model import EncoderConfig
    from asit_embed.training.data import CropDataset, SpeakerLabels, load_sources
    from asit_embed.training.finetune import class_centroids
    from asit_embed.training.train import asit_network

    items = load_sources(str(clips_manifest), role=None)
    labels = SpeakerLabels([it.speaker for it in items])
    data = CropDataset(items, labels, crop_samples=16000, sample_rate=16000)
    network = asit_network(ASiTEncoder(EncoderConfig.from_dict(TINY)).train())
    torch.manual_seed(0)
    weights = class_centroids(network, data, torch.device("cpu"), crops=2, batch_size=4)
    assert weights.shape == (len(labels), 32) and not weights.requires_grad  # no graph kept over the batches
    assert torch.allclose(weights.norm(dim=1), torch.ones(len(labels)), atol=1e-5)
    assert network.module.training  # left in the mode it was in


def test_random_length_cuts_the_whole_batch_to_one_stretch():
    spec = torch.arange(2 * 3 * 200, dtype=torch.float32).view(2, 3, 200)
    assert random_length(spec, 0) is spec and random_length(spec, 200) is spec
    torch.manual_seed(0)
    lengths = set()
    for _ in range(50):
        cut = random_length(spec, 100)
        n = cut.shape[-1]
        lengths.add(n)
        assert 100 <= n <= 200 and cut.shape[:2] == (2, 3)
        start = int(cut[0, 0, 0])  # the frames are numbered: a contiguous stretch, the same one for every row
        assert torch.equal(cut, spec[..., start:start + n])
    assert len(lengths) > 10  # lengths vary from batch to batch
    with pytest.raises(ValueError, match="min_crop_frames"):
        TrainConfig(data="x.csv", min_crop_frames=-1)


@pytest.mark.slow
def test_dev_evaluation_and_best_checkpoint(tmp_path, clips_manifest):
    # train on 4 speakers, evaluate on the other 2 (unseen) with 3 enrollment clips each
    import csv

    rows = list(csv.DictReader(open(clips_manifest)))
    dev = {"3020", "9611"}
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "speaker", "role"])
        w.writeheader()
        for r in rows:
            w.writerow({"path": str(clips_manifest.parent / r["path"]), "speaker": r["speaker"],
                        "role": "dev" if r["speaker"] in dev else "train"})
    cfg = config(tmp_path, manifest, train_role="train", dev_role="dev", epochs=2, batch_size=8)
    cfg = TrainConfig.from_dict({**cfg.to_dict(), "n_enroll": 3})
    train(cfg)
    log = read_log(cfg.out_dir)
    assert {"dev_eer", "dev_top1", "dev_min_dcf", "lr", "wall_seconds"} <= set(log[-1])
    best = load_checkpoint(os.path.join(cfg.out_dir, "best.pt")).metadata["dev"]
    assert best["dev_eer"] == min(r["dev_eer"] for r in log)


def test_dev_speakers_must_be_unseen(tmp_path, clips_manifest):
    cfg = config(tmp_path, clips_manifest, dev_role=None, dev_data=str(clips_manifest))
    with pytest.raises(ValueError, match="unseen"):
        train(cfg)


@pytest.mark.slow
def test_two_process_ddp_stays_in_sync(tmp_path, clips_manifest):
    cfg = config(tmp_path, clips_manifest, epochs=2, batch_size=6)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    # Each rank writes a checksum of its weights after every epoch: DDP must keep them identical.
    script = ("import json, os, sys\n"
              "from asit_embed.training.train import TrainConfig, train\n"
              "def on_epoch(record, module):\n"
              "    total = sum(float(p.detach().double().sum()) for p in module.parameters())\n"
              "    with open(sys.argv[2] + os.environ['RANK'], 'a') as f:\n"
              "        f.write(repr(total) + '\\n')\n"
              "train(TrainConfig.from_dict(json.load(open(sys.argv[1]))), on_epoch=on_epoch)\n")
    (tmp_path / "run_ddp.py").write_text(script)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "run_ddp.py"), str(tmp_path / "cfg.json"), str(tmp_path / "sum")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(read_log(cfg.out_dir)) == 2
    rank0, rank1 = ((tmp_path / f"sum{r}").read_text().split() for r in (0, 1))
    assert len(rank0) == 2 and rank0 == rank1
    assert rank0[0] != rank0[1]  # the weights did change between the epochs
    assert json.load(open(os.path.join(cfg.out_dir, "config.json")))["world_size"] == 2


def test_head_warmup_leaves_the_network_untouched(tmp_path, clips_manifest):
    from asit_embed.checkpoint import save_checkpoint
    from asit_embed.model import ASiTEncoder, asit_tiny

    torch.manual_seed(0)
    init = save_checkpoint(tmp_path / "init.pt", ASiTEncoder(asit_tiny(**TINY)))
    cfg = config(tmp_path, clips_manifest, init=str(init), encoder={}, epochs=3, head_warmup_epochs=1)
    train(TrainConfig.from_dict({**cfg.to_dict(), "epochs": 3, "max_minutes": 0.0}))  # stops after epoch 1
    state = torch.load(os.path.join(cfg.out_dir, "last.pt"), weights_only=True)["model"]
    before = load_checkpoint(init).state_dict
    # After the warm-up epoch only the AAM head moved; the network's weights are those it started from (its
    # batch-norm statistics follow the new data, as in any training epoch).
    weights = [k for k, v in before.items() if v.is_floating_point() and ".running_" not in k]
    assert len(weights) > 20 and all(torch.equal(state[f"encoder.{k}"], before[k]) for k in weights)
    train(cfg, resume=True)
    state = torch.load(os.path.join(cfg.out_dir, "last.pt"), weights_only=True)["model"]
    assert not torch.equal(state["encoder.blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])


def test_a_folder_of_speaker_folders_trains_out_of_the_box(tmp_path, clips_manifest):
    """Default roles: the folder holds some speakers out as dev, so training selects on unseen speakers."""
    import shutil

    root = tmp_path / "mine"
    for spk in ("0036", "0070", "1027", "1418", "3020", "9611"):
        shutil.copytree(clips_manifest.parent / spk, root / spk)
    cfg = TrainConfig(data=str(root), out_dir=str(tmp_path / "run"), encoder=TINY, augment=NO_AUG, epochs=1,
                      batch_size=8, n_enroll=3)
    record = train(cfg)
    assert 0 <= record["dev_eer"] <= 1
    from asit_embed.training.data import load_items

    info = json.load(open(tmp_path / "run" / "config.json"))
    assert info["train_speakers"] == 6 - len({it.speaker for it in load_items(root, role="dev")}) == 4
