"""dlbook.plot: image grids, learning curves, computation graphs (Agg backend, figures closed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from dlbook import plot  # noqa: E402
from dlbook.autograd import Value  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _images_on(fig):
    return [ax for ax in fig.axes if ax.images]


@pytest.mark.parametrize(
    ("images", "n_axes"),
    [
        (np.random.default_rng(0).random((12, 28, 28)), 20),
        (np.random.default_rng(0).random((5, 64)), 5),
        (np.random.default_rng(0).random((4, 1, 8, 8)), 4),
        (np.random.default_rng(0).random((3, 3, 8, 8)), 3),
        (torch.rand(7, 1, 6, 6), 7),
        (np.random.default_rng(0).random((1, 5, 5)), 1),
    ],
    ids=["NHW", "N64", "N1HW", "N3HW", "torch", "single"],
)
def test_show_images_grid(images, n_axes):
    fig = plot.show_images(images, ncols=10)
    assert isinstance(fig, plt.Figure)
    assert len(fig.axes) == n_axes
    assert len(_images_on(fig)) == len(images)


def test_show_images_shapes_and_titles():
    x = np.random.default_rng(0).random((4, 1, 8, 6))
    fig = plot.show_images(x, labels=[0, 2, 1, 2], ncols=3, class_names=["a", "b", "c"])
    assert len(fig.axes) == 6
    shown = _images_on(fig)
    assert [ax.images[0].get_array().shape for ax in shown] == [(8, 6)] * 4
    assert [ax.get_title() for ax in shown] == ["a", "c", "b", "c"]
    fig = plot.show_images(np.zeros((2, 3, 4, 5)))
    assert _images_on(fig)[0].images[0].get_array().shape == (4, 5, 3)


@pytest.mark.parametrize("shape", [(5, 63), (64,), (2, 1, 3, 4, 5), (5, 10)])
def test_show_images_bad_shapes_raise(shape):
    with pytest.raises(ValueError, match="expected"):
        plot.show_images(np.zeros(shape))


def test_plot_history():
    hists = {"sgd": {"val_accuracy": [0.5, 0.7, 0.8]}, "adam": {"val_accuracy": [0.6, 0.9]}}
    ax = plot.plot_history(hists)
    assert [line.get_label() for line in ax.lines] == ["sgd", "adam"]
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), [0.6, 0.9])
    assert ax.get_ylabel() == "val_accuracy"


def test_plot_history_missing_metric_raises():
    with pytest.raises(KeyError, match="no 'val_loss'"):
        plot.plot_history({"run": {"train_loss": [1.0]}}, metric="val_loss")


def _boxes(ax):
    return [t for t in ax.texts if t.get_bbox_patch() is not None]


def test_draw_graph_one_box_per_node():
    a, b, c = Value(2.0, label="a"), Value(-3.0, label="b"), Value(10.0, label="c")
    e = a * b
    e.label = "e"
    d = e + c
    d.label = "d"
    L = d * e  # e is reused: still one node
    L.label = "L"
    L.backward()
    ax = plot.draw_graph(L)
    assert isinstance(ax, plt.Axes)
    boxes = _boxes(ax)
    assert len(boxes) == 6  # a, b, c, e, d, L
    texts = sorted(t.get_text() for t in boxes)
    # L = (a*b + c) * (a*b): dL/da = b * (2ab + c) = 6, dL/de = 2e + c = -2.
    assert "L | data -24\ngrad 1" in texts
    assert "a | data 2\ngrad 6" in texts
    assert "e | data -6\ngrad -2" in texts
    # Inputs on the left, the output on the right.
    x_of = {t.get_text().split(" |")[0]: t.get_position()[0] for t in boxes}
    assert x_of["a"] == x_of["b"] == x_of["c"] < x_of["e"] < x_of["d"] < x_of["L"]
    ops = sorted(t.get_text() for t in ax.texts if t.get_bbox_patch() is None and t.get_text())
    assert ops == ["*", "*", "+"]


def test_draw_graph_counts_constants_and_single_nodes():
    x = Value(0.5)
    ax = plot.draw_graph((x * 2).tanh())  # x, the constant 2, x*2, tanh
    assert len(_boxes(ax)) == 4
    fig, ax2 = plt.subplots()
    assert plot.draw_graph(Value(1.0), ax=ax2) is ax2
    assert len(_boxes(ax2)) == 1
