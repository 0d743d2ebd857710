"""DDP pretraining is really data parallel: two gloo processes on CPU draw different patches,
average their gradients (so both ranks end with the same weights), and the first step's loss and
gradient equal one process's on the union of the two ranks' batches.

The method is masked inpainting because its objective has no batch-coupled term: the loss is the
mean error over masked voxels, every sample masks exactly the same number of voxels
(``random_block_mask`` picks a fixed count of grid cells per sample) and the 3D U-Net uses
instance norm (per sample). So the loss on the union of two equal batches is the mean of the two
ranks' losses, and its gradient is the mean of their gradients — which is what DDP's all-reduce
computes. (BYOL/SimCLR/DINO couple samples through BatchNorm, negatives or centering, and a
local-batch DDP step legitimately differs from the union step.)

The training runs in a child script (Lightning's popen launcher re-executes it once per rank);
a test-only callback and a wrapper around the mask function record each rank's batches, masks,
first-step gradients and final weights.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

MODEL_OPTIONS = {"features": [4, 8, 16]}
PATCH = (16, 16, 16)

CHILD = textwrap.dedent('''
    import sys
    from pathlib import Path

    import pytorch_lightning as pl
    import torch

    import selma3d.ssl.inpainting as inpainting
    from selma3d.training.pretrain import PretrainConfig, run_pretraining

    data, out, record_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    record = {"images": [], "masks": [], "losses": []}
    original_mask = inpainting.random_block_mask

    def recording_mask(*args, **kwargs):
        mask = original_mask(*args, **kwargs)
        record["masks"].append(mask.clone())
        return mask

    inpainting.random_block_mask = recording_mask

    def weights(module):
        return {k: v.detach().clone() for k, v in module.method.state_dict().items()}

    class Recorder(pl.Callback):
        def on_train_start(self, trainer, module):
            record["initial"] = weights(module)

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            record["images"].append(batch["image"].clone())

        def on_after_backward(self, trainer, module):  # after DDP's gradient all-reduce
            if "grads" not in record:
                record["grads"] = {n: p.grad.detach().clone()
                                   for n, p in module.method.named_parameters() if p.grad is not None}

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            record["losses"].append(float(outputs["loss"]))

        def on_train_end(self, trainer, module):
            record["final"] = weights(module)
            record["rank"] = trainer.global_rank
            record["world_size"] = trainer.world_size
            torch.save(record, record_dir / f"rank{trainer.global_rank}.pt")

    run_pretraining(PretrainConfig(
        method="inpainting", data=data, out=out, model_options={"features": [4, 8, 16]},
        patch_size=(16, 16, 16), batch_size=2, max_steps=3, num_workers=0, fg_fraction=0.02,
        lr=1e-3, accelerator="cpu", devices=int(sys.argv[4]), strategy=sys.argv[5],
        progress=False, health_every=0, checkpoint_every=100), callbacks=[Recorder()])
''')


def _train(tiny_dataset, tmp_path: Path, devices: int, strategy: str) -> list[dict]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    records = tmp_path / f"records{devices}"
    records.mkdir()
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(script), str(tiny_dataset), str(tmp_path / f"run{devices}"),
                             str(records), str(devices), strategy],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(records / f"rank{r}.pt", weights_only=False) for r in range(devices)]


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def _step_on(images, masks, initial, monkeypatch):
    """One process's loss and gradients for ``images`` with the recorded ``masks`` (the
    production ``Inpainting.training_loss``; only the random mask is replayed)."""
    import selma3d.ssl.inpainting as inpainting
    from selma3d.ssl import build_method

    method = build_method("inpainting", model_options=MODEL_OPTIONS, patch_size=PATCH)
    method.load_state_dict(initial)
    monkeypatch.setattr(inpainting, "random_block_mask", lambda *a, **k: masks)
    loss, _ = method.training_loss({"image": images})
    loss.backward()
    return float(loss.detach()), {n: p.grad for n, p in method.named_parameters() if p.grad is not None}


@pytest.mark.slow
def test_ddp_is_data_parallel(tiny_dataset, tmp_path, monkeypatch):
    rank0, rank1 = _train(tiny_dataset, tmp_path, 2, "ddp")
    assert (rank0["rank"], rank1["rank"], rank0["world_size"]) == (0, 1, 2)

    # each rank saw its own patches, at every step
    assert len(rank0["images"]) == len(rank1["images"]) == 3
    for a, b in zip(rank0["images"], rank1["images"]):
        assert a.shape == b.shape == (2, 1, *PATCH)
        assert _digest(a) != _digest(b)
    # ...and drew their own random masks (not the same torch stream on every rank)
    for a, b in zip(rank0["masks"], rank1["masks"]):
        assert not torch.equal(a, b)

    # both started from and ended with the same weights (gradients were synchronised)
    assert set(rank0["final"]) == set(rank1["final"])
    for key in rank0["initial"]:
        assert torch.equal(rank0["initial"][key], rank1["initial"][key]), key
    changed = [k for k in rank0["final"] if not torch.equal(rank0["final"][k], rank0["initial"][k])]
    assert changed, "training did not move the weights"
    for key in rank0["final"]:
        assert torch.equal(rank0["final"][key], rank1["final"][key]), key

    # the first step equals one process on the union of both ranks' batches
    union_images = torch.cat([rank0["images"][0], rank1["images"][0]])
    union_masks = torch.cat([rank0["masks"][0], rank1["masks"][0]])
    loss, grads = _step_on(union_images, union_masks, rank0["initial"], monkeypatch)
    assert loss == pytest.approx((rank0["losses"][0] + rank1["losses"][0]) / 2, rel=1e-5)
    assert set(grads) == set(rank0["grads"]) == set(rank1["grads"])
    for name, grad in grads.items():
        torch.testing.assert_close(rank0["grads"][name], grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(rank1["grads"][name], grad, rtol=1e-4, atol=1e-6)
    # ...and not rank 0's own batch alone (what an unsynchronised rank would have used)
    _, local = _step_on(rank0["images"][0], rank0["masks"][0], rank0["initial"], monkeypatch)
    assert any(not torch.allclose(local[n], grads[n], rtol=1e-3, atol=1e-6) for n in grads)
