import json
import warnings

import numpy as np
import pytest

from asit_embed import encoder as encoder_module
from asit_embed import load_encoder
from asit_embed.cli import main as cli
from enroll.cli import main as enroll_main


@pytest.fixture(scope="module")
def bf16_encoder():
    if not encoder_module.native_bfloat16():
        pytest.skip("this CPU has no native bfloat16 kernels")
    return load_encoder(precision="bfloat16")


def test_bfloat16_matches_float32(encoder, bf16_encoder, clip_rows):
    assert bf16_encoder.precision == "bfloat16" and encoder.precision == "float32"
    paths = [r["path"] for r in clip_rows]  # every bundled clip: short ones padded and masked, long ones windowed
    ref = encoder.embed_batch(paths, batch_size=8)
    waves = [encoder.prepare(p) for p in paths[:4]]
    long = np.concatenate(waves * 3)  # tens of seconds: many windows averaged
    for batch in (1, 16):
        out = bf16_encoder.embed_batch(paths, batch_size=batch)
        assert out.dtype == np.float32 and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
        assert (np.sum(out * ref, axis=1) >= 0.999).all(), np.sum(out * ref, axis=1).min()
    cos = float(bf16_encoder.embed(long, encoder.sample_rate) @ encoder.embed(long, encoder.sample_rate))
    assert cos >= 0.999
    assert bf16_encoder.fingerprint == encoder.fingerprint  # same model: registries are interchangeable


def test_bfloat16_without_native_support_falls_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(encoder_module, "native_bfloat16", lambda: False)
    with pytest.warns(UserWarning, match="no native bfloat16 support; using float32"):
        enc = load_encoder(precision="bf16")
    assert enc.precision == "float32"


def test_auto_precision_is_bfloat16_only_where_native(monkeypatch):
    native = encoder_module.native_bfloat16()
    assert load_encoder().precision == ("bfloat16" if native else "float32")
    monkeypatch.setattr(encoder_module, "native_bfloat16", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto falls back silently: float32 is the right choice there
        assert load_encoder().precision == "float32"
    monkeypatch.setattr(encoder_module, "native_bfloat16", lambda: True)
    assert load_encoder().precision == "bfloat16"
    assert load_encoder(precision="float32").precision == "float32"


def test_precision_errors():
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        load_encoder(precision="int4")
    with pytest.raises(ValueError, match="needs backend='torch', not 'onnx'"):
        load_encoder(backend="onnx", precision="bfloat16")


def test_cli_embed_in_bfloat16(tmp_path, clip_rows, encoder):
    if not encoder_module.native_bfloat16():
        pytest.skip("this CPU has no native bfloat16 kernels")
    out = tmp_path / "e.npy"
    assert cli(["embed", clip_rows[0]["path"], "--precision", "bfloat16", "--out", str(out)]) == 0
    assert float(np.load(out)[0] @ encoder.embed(clip_rows[0]["path"])) >= 0.999


def test_registry_built_in_one_precision_serves_the_other(cli_registry, capsys):
    if not encoder_module.native_bfloat16():
        pytest.skip("this CPU has no native bfloat16 kernels")
    reg, a, b = cli_registry  # enrolled with the default precision: bfloat16 on this CPU
    capsys.readouterr()
    assert enroll_main(reg + ["--precision", "float32", "--json", "identify", a[4], b[4]]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["matches"][0]["name"] for r in result] == ["alice", "bob"]
