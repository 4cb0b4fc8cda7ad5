"""The loop need not remember (issue 17 item 4): Lightning's callback and mmengine's hook call
``set_epoch`` at every training epoch's start, tested with the real frameworks on the CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lossdsl
from lossdsl.integrations.epochs import set_loss_epochs

EXPR = "ce() + steps([0, 1], at=[2]) * focal(head=softmax, gamma=ramp(0, 2, end=2))"


def batches(count=2):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, generator=generator), torch.randint(0, 3, (4,), generator=generator))
            for _ in range(count)]


class Recorder:
    """What the loss saw at each training call: (epoch, step, terms computed)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, tuple[str, ...]]] = []

    def record(self, loss) -> None:
        self.seen.append((loss.clock.host_epoch, int(loss.clock.step), tuple(loss.last_terms)))


# The step is counted once a training call has succeeded; focal() is switched on from epoch 2.
FOCAL = "focal(gamma=ramp(0, 2, end=2), head=softmax)"
EXPECTED = [(0, 1, ("ce()", "total")), (0, 2, ("ce()", "total")),
            (1, 3, ("ce()", "total")), (1, 4, ("ce()", "total")),
            (2, 5, ("ce()", FOCAL, "total")), (2, 6, ("ce()", FOCAL, "total"))]


def test_set_loss_epochs_reaches_every_loss_in_a_model_tasks_and_adapters_included():
    model = nn.Module()
    model.head = nn.Linear(3, 3)
    model.loss = lossdsl.compile(EXPR)
    model.inner = nn.Sequential(nn.Identity(), lossdsl.compile("{a: ramp(0, 1, end=4) * ce(), b: l1()}"))
    assert set_loss_epochs(model, 3) == 4  # two owners and the two tasks of the second
    assert model.loss.clock.host_epoch == 3 and model.inner[1].clock.host_epoch == 3
    assert model.inner[1].tasks["a"].silent == (False,)


def test_the_lightning_callback_sets_the_epoch_at_each_epochs_start(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from lossdsl.integrations.lightning import SetLossEpoch

    recorder = Recorder()

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(3, 3)
            self.loss = lossdsl.compile(EXPR)

        def training_step(self, batch, index):
            x, y = batch
            value = self.loss(self.net(x), y)
            return value

        def on_train_batch_end(self, outputs, batch, index):
            recorder.record(self.loss)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    module = Module()
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[SetLossEpoch()])
    inputs, labels = (torch.cat(parts) for parts in zip(*batches()))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, labels), batch_size=4)
    trainer.fit(module, train_dataloaders=loader)
    assert recorder.seen == EXPECTED
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert (int(state["loss.clock.epoch"]), int(state["loss.clock.step"])) == (2, 6)


def test_the_mmengine_hook_sets_the_epoch_before_each_training_epoch(tmp_path):
    pytest.importorskip("mmengine")
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    import lossdsl.integrations.mmengine  # noqa: F401  (registers SetLossEpochHook)

    recorder = Recorder()

    class Model(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(3, 3)
            self.loss = lossdsl.compile(EXPR)

        def forward(self, inputs, labels, mode="tensor"):
            value = self.loss(self.net(inputs), labels)
            recorder.record(self.loss)
            return {"loss": value}

    def collate(items):
        return {"inputs": torch.stack([x for x, _ in items]), "labels": torch.stack([y for _, y in items])}

    samples = [(x[i], y[i]) for x, y in batches() for i in range(4)]
    runner = Runner(
        model=Model(), work_dir=str(tmp_path),
        train_dataloader=dict(dataset=samples, batch_size=4, shuffle=False, collate_fn=collate,
                              sampler=dict(type="DefaultSampler", shuffle=False)),
        train_cfg=dict(by_epoch=True, max_epochs=3), optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01)),
        custom_hooks=[dict(type="SetLossEpochHook")],
        default_hooks=dict(checkpoint=None, logger=None), default_scope=None,
    )
    runner.train()
    assert recorder.seen == EXPECTED
