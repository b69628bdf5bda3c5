"""ONNX export of the encoder network and an ONNX Runtime stand-in for it (the ``backend="onnx"`` fast path).

The exported graph takes ``spec (batch, n_mels, frames)`` and ``lengths (batch,)`` with dynamic batch and
frame axes and returns the un-normalised window embeddings, exactly like :meth:`ASiTEncoder.forward`; the
front-end (fbank), windowing and the whitening of a clip's averaged embedding stay in
:class:`~asit_embed.SpeakerEncoder`, shared by every backend. For other runtimes the graph's metadata holds
the config, the fingerprint and, for a checkpoint with a :class:`~asit_embed.model.Whitening`, its ``mean``
and ``matrix`` (``asit_embed.whitening``, JSON); with a :class:`~asit_embed.model.PreHead`, the graph's
output is the window embedding followed by the head's input (:meth:`ASiTEncoder.forward`), and the
metadata holds that analysis's ``mean``, ``matrix`` and ``share`` (``asit_embed.prehead``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch

from asit_embed.model import ASiTEncoder

log = logging.getLogger(__name__)

OPSET = 17


class BackendUnavailableError(ImportError):
    """The packages a backend needs are not installed."""


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise BackendUnavailableError(
            f"the ONNX backend needs onnx and onnxruntime ({err.name or err} is missing): "
            "pip install 'asit-embed[onnx]'") from err
    return onnx, onnxruntime


@contextlib.contextmanager
def _traceable_length_mask():
    """SpeechBrain's pooling builds its mask with ``length_to_mask``, which sizes it with ``len(lengths)``;
    tracing freezes that Python int to the example batch size. For the export only, swap in the same
    comparison written with broadcasting, so the batch axis stays dynamic."""
    import speechbrain.lobes.models.ECAPA_TDNN as sb_ecapa

    original = sb_ecapa.length_to_mask

    def length_to_mask(length, max_len=None, dtype=None, device=None):
        mask = torch.arange(max_len, device=length.device, dtype=length.dtype)[None, :] < length[:, None]
        return mask.to(dtype or length.dtype)

    sb_ecapa.length_to_mask = length_to_mask
    try:
        yield
    finally:
        sb_ecapa.length_to_mask = original


def export_onnx(model: ASiTEncoder, path: str | os.PathLike, *, fingerprint: str = "") -> Path:
    """Write ``model`` as an ONNX graph (atomically) with its config and fingerprint in the metadata."""
    onnx, _ = _require_onnx()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    c = model.config
    frames = max(c.window_frames, c.min_frames)
    example = (torch.randn(2, c.n_mels, frames), torch.tensor([frames, max(c.min_frames, frames // 2)]))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        with _traceable_length_mask(), torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes about Python ints; the checks below cover them
            torch.onnx.export(model.eval(), example, tmp, input_names=["spec", "lengths"], output_names=["embedding"],
                              dynamic_axes={"spec": {0: "batch", 2: "frames"}, "lengths": {0: "batch"},
                                            "embedding": {0: "batch"}},
                              opset_version=OPSET, dynamo=False)
        graph = onnx.load(tmp)
        metadata = {"asit_embed.config": json.dumps(c.to_dict()), "asit_embed.fingerprint": fingerprint}
        if model.whitening is not None:
            metadata["asit_embed.whitening"] = json.dumps({"mean": model.whitening.mean.tolist(),
                                                           "matrix": model.whitening.matrix.tolist()})
        if model.prehead is not None:
            pre = model.prehead
            metadata["asit_embed.prehead"] = json.dumps({"mean": pre.whitening.mean.tolist(),
                                                         "matrix": pre.whitening.matrix.tolist(),
                                                         "share": float(pre.share)})
        for key, value in metadata.items():
            graph.metadata_props.add(key=key, value=value)
        onnx.save(graph, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class OnnxModel:
    """Runs an exported graph with ONNX Runtime; called like the torch model: ``model(spec, lengths)``."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None):
        _, ort = _require_onnx()
        options = ort.SessionOptions()
        # One pool sized like torch's (the machine's cores by default); no inter-op pool for a sequential graph.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, spec: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None:
            lengths = torch.full((spec.shape[0],), spec.shape[2], dtype=torch.int64)
        out = self.session.run(None, {"spec": spec.detach().cpu().float().numpy(),
                                      "lengths": lengths.detach().cpu().to(torch.int64).numpy()})[0]
        return torch.from_numpy(out)


def cached_onnx(model: ASiTEncoder, fingerprint: str) -> OnnxModel:
    """The ONNX export of ``model``, exported once per fingerprint into the cache directory
    (``$ASIT_EMBED_CACHE``, default ``~/.cache/asit-embed``) and loaded. A cached file that does not load,
    or whose recorded fingerprint is not ``fingerprint``, is exported again."""
    root = Path(os.environ.get("ASIT_EMBED_CACHE", Path.home() / ".cache" / "asit-embed"))
    path = root / f"encoder-{fingerprint}.onnx"
    if path.is_file():
        try:
            loaded = OnnxModel(path)
            if loaded.metadata.get("asit_embed.fingerprint") == fingerprint:
                return loaded
            log.warning("cached %s was exported from another checkpoint; exporting again", path)
        except Exception as err:  # onnxruntime raises its own exception types for a damaged file
            if isinstance(err, BackendUnavailableError):
                raise
            log.warning("cached %s does not load (%s); exporting again", path, str(err).splitlines()[0][:200])
    log.info("exporting the encoder to %s (once per checkpoint)", path)
    export_onnx(model, path, fingerprint=fingerprint)
    return OnnxModel(path)
