"""dlbook.train: seeded loaders, evaluation, the training loop and its text-mode live plot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dlbook import train


@pytest.fixture(autouse=True)
def cpu(monkeypatch):
    monkeypatch.setenv("DLBOOK_DEVICE", "cpu")


def blobs(n=96, seed=0):
    """Three well-separated Gaussian blobs in 2-D: (X float64 (n, 2), y int64 (n,))."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centers = np.array([[3.0, 0.0], [-3.0, 3.0], [0.0, -3.0]])
    return centers[y] + rng.standard_normal((n, 2)), y.astype(np.int64)


# ----------------------------------------------------------------------------- make_loader


def _order(loader):
    return torch.cat([yb for _, yb in loader]).tolist()


def test_make_loader_batches_and_dtypes():
    X, y = blobs(10)
    loader = train.make_loader(X, y, batch_size=4, shuffle=False)
    batches = list(loader)
    assert [len(yb) for _, yb in batches] == [4, 4, 2]
    xb, yb = batches[0]
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64  # float64 data is made float32
    np.testing.assert_allclose(torch.cat([b[0] for b in batches]).numpy(), X.astype(np.float32))


def test_make_loader_shuffling_is_seeded():
    X = np.arange(50, dtype=np.float32).reshape(50, 1)
    y = np.arange(50)
    a = train.make_loader(X, y, batch_size=8, seed=3)
    b = train.make_loader(X, y, batch_size=8, seed=3)
    c = train.make_loader(X, y, batch_size=8, seed=4)
    a1, a2 = _order(a), _order(a)
    assert a1 == _order(b) and a2 == _order(b)  # every epoch repeats across runs
    assert a1 != a2  # but epochs differ from each other
    assert a1 != _order(c)
    assert sorted(a1) == list(range(50))
    assert _order(train.make_loader(X, y, shuffle=False)) == list(range(50))


def test_make_loader_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="X has 5 rows but y has 4"):
        train.make_loader(np.zeros((5, 2)), np.zeros(4))


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_matches_direct_computation():
    X, y = blobs(30)
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3)
    model.train()
    loader = train.make_loader(X, y, batch_size=7, shuffle=False)
    loss, acc = train.evaluate(model, loader)
    with torch.no_grad():
        out = model(torch.tensor(X, dtype=torch.float32))
        expected_loss = float(F.cross_entropy(out, torch.tensor(y)))
        expected_acc = float((out.argmax(1) == torch.tensor(y)).float().mean())
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert acc == pytest.approx(expected_acc)
    assert model.training  # the mode is restored


def test_evaluate_empty_loader_raises():
    with pytest.raises(ValueError, match="empty"):
        train.evaluate(torch.nn.Linear(2, 3), [])


# ----------------------------------------------------------------------------- fit


def _fit(capsys, live, **kwargs):
    X, y = blobs(96)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hist = train.fit(
        model,
        train.make_loader(X, y, batch_size=16),
        epochs=5,
        optimizer=opt,
        val_loader=train.make_loader(X, y, batch_size=32, shuffle=False),
        live=live,
        title="blobs",
        **kwargs,
    )
    return hist, capsys.readouterr(), opt


@pytest.mark.parametrize("live", [False, True])
def test_fit_learns_and_reports(capsys, live):
    hist, out, _ = _fit(capsys, live)
    assert set(hist) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"}
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert len(hist[key]) == 5
    assert hist["train_loss"][-1] < 0.5 * hist["train_loss"][0]
    assert hist["val_accuracy"][-1] > 0.9
    assert len(hist["seconds"]) == 1 and 0 < hist["seconds"][0] < 60
    # Outside a notebook the live plot is text: one line per epoch.
    lines = [line for line in out.out.splitlines() if line.startswith("blobs [")]
    assert len(lines) == 5
    assert lines[-1].startswith("blobs [5] train_loss=") and "val_accuracy=" in lines[-1]
    assert "30/30" in out.err  # tqdm's progress bar: 5 epochs x 6 batches


def test_fit_is_reproducible(capsys):
    h1, _, _ = _fit(capsys, False)
    h2, _, _ = _fit(capsys, False)
    assert h1["train_loss"] == h2["train_loss"]


def test_fit_steps_the_scheduler_each_epoch(capsys):
    X, y = blobs(32)
    model = torch.nn.Linear(2, 3)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train.fit(model, train.make_loader(X, y, batch_size=16), epochs=3, optimizer=opt,
              scheduler=sched, live=False)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.125)


def test_fit_gives_plateau_scheduler_the_validation_loss(capsys, monkeypatch):
    X, y = blobs(32)
    model = torch.nn.Linear(2, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    seen = []
    monkeypatch.setattr(sched, "step", lambda metric: seen.append(metric))
    hist = train.fit(model, train.make_loader(X, y, batch_size=16), epochs=2, optimizer=opt,
                     val_loader=train.make_loader(X, y, shuffle=False), scheduler=sched, live=False)
    assert seen == hist["val_loss"]


def test_fit_rejects_zero_epochs():
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        train.fit(torch.nn.Linear(2, 3), [], epochs=0, optimizer=None, live=False)


# ----------------------------------------------------------------------------- LivePlot


def test_in_notebook_false_under_pytest():
    assert train.in_notebook() is False


def test_liveplot_text_mode_prints_a_line_per_update(capsys):
    live = train.LivePlot(["loss", "accuracy"], title="run")
    assert live.notebook is False
    live.update({"train_loss": 0.9, "val_loss": 1.0})
    live.update({"train_loss": 0.5, "val_loss": 0.75})
    live.update({"train_loss": np.float32(0.25), "val_loss": torch.tensor(0.5)})
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "run [1] train_loss=0.9  val_loss=1",
        "run [2] train_loss=0.5  val_loss=0.75",
        "run [3] train_loss=0.25  val_loss=0.5",
    ]
    assert live.close() == {"train_loss": [0.9, 0.5, 0.25], "val_loss": [1.0, 0.75, 0.5]}


def test_liveplot_without_title(capsys):
    live = train.LivePlot(enabled=False)
    live.update({"loss": 2.0})
    assert capsys.readouterr().out == "[1] loss=2\n"


def test_liveplot_close_releases_its_figure(monkeypatch):
    import IPython.display
    import matplotlib.pyplot as plt

    shown = []

    class Handle:
        def update(self, fig):
            shown.append(fig)

    monkeypatch.setattr(IPython.display, "display", lambda fig, display_id: shown.append(fig) or Handle())
    live = train.LivePlot(["loss"], title="run")
    live.notebook = True  # as in a Jupyter kernel
    live.update({"train_loss": 1.0})
    live.update({"train_loss": 0.5})
    fig = live._fig
    assert shown == [fig, fig], "the first update displays the figure, later ones update it in place"
    assert live.close() == {"train_loss": [1.0, 0.5]}
    assert live._fig is None and live._handle is None, "close() should release the figure"
    assert not plt.fignum_exists(fig.number), "the figure should be closed"
