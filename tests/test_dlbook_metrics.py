"""dlbook.metrics: headline numbers are printed and merged atomically into $DLBOOK_METRICS_FILE."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dlbook import metrics, record_metric


def test_prints_and_returns_without_file(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("DLBOOK_METRICS_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert record_metric("test_accuracy", 0.875) == 0.875
    assert capsys.readouterr().out == "[dlbook metric] test_accuracy = 0.875\n"
    assert list(tmp_path.iterdir()) == []


def test_writes_and_merges_json(monkeypatch, tmp_path, capsys):
    target = tmp_path / "sub" / "dir" / "metrics.json"
    monkeypatch.setenv("DLBOOK_METRICS_FILE", str(target))
    record_metric("test_accuracy", 0.9)
    record_metric("wall_time_s", np.float32(12.5))
    record_metric("test_accuracy", 0.95)  # overwrites its own key, keeps the others
    assert json.loads(target.read_text()) == {"test_accuracy": 0.95, "wall_time_s": 12.5}
    assert metrics.read_metrics(target) == {"test_accuracy": 0.95, "wall_time_s": 12.5}
    # Atomic write: no temporary file is left beside the target.
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]
    assert capsys.readouterr().out.count("[dlbook metric]") == 3


def test_keeps_keys_written_by_others(monkeypatch, tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text(json.dumps({"episode_return": 200.0}))
    monkeypatch.setenv("DLBOOK_METRICS_FILE", str(target))
    record_metric("loss", 0.25)
    assert json.loads(target.read_text()) == {"episode_return": 200.0, "loss": 0.25}


def test_write_goes_through_rename(monkeypatch, tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text(json.dumps({"a": 1.0}))
    monkeypatch.setenv("DLBOOK_METRICS_FILE", str(target))
    replaced = []
    real_replace = metrics.os.replace

    def spy(src, dst):
        # At the moment of the rename the target still holds the old, complete JSON.
        assert json.loads(target.read_text()) == {"a": 1.0}
        replaced.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(metrics.os, "replace", spy)
    record_metric("b", 2.0)
    assert replaced and replaced[0][1] == str(target) and replaced[0][0] != str(target)
    assert json.loads(target.read_text()) == {"a": 1.0, "b": 2.0}


def test_failed_write_keeps_the_old_file(monkeypatch, tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text(json.dumps({"a": 1.0}))
    monkeypatch.setenv("DLBOOK_METRICS_FILE", str(target))

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(metrics.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        record_metric("b", 2.0)
    assert json.loads(target.read_text()) == {"a": 1.0}


def test_failed_write_leaves_no_temporary_file(monkeypatch, tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("{}")
    monkeypatch.setenv("DLBOOK_METRICS_FILE", str(target))

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(metrics.json, "dump", broken_dump)
    with pytest.raises(OSError):
        record_metric("b", 2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float64("nan")])
def test_rejects_non_finite(monkeypatch, tmp_path, value):
    target = tmp_path / "m.json"
    monkeypatch.setenv("DLBOOK_METRICS_FILE", str(target))
    with pytest.raises(ValueError, match="only finite numbers"):
        record_metric("loss", value)
    assert not target.exists()


@pytest.mark.parametrize("name", ["test-accuracy", "1st", "", "a b", None, 3])
def test_rejects_bad_names(monkeypatch, tmp_path, name):
    monkeypatch.setenv("DLBOOK_METRICS_FILE", str(tmp_path / "m.json"))
    with pytest.raises(ValueError, match="identifier"):
        record_metric(name, 1.0)
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("value", [None, "abc", [1.0, 2.0], {"a": 1}])
def test_rejects_non_numbers(monkeypatch, tmp_path, value):
    monkeypatch.setenv("DLBOOK_METRICS_FILE", str(tmp_path / "m.json"))
    with pytest.raises(TypeError, match="must be a number"):
        record_metric("loss", value)
    assert not (tmp_path / "m.json").exists()


def test_rejects_numeric_strings(monkeypatch, tmp_path):
    monkeypatch.setenv("DLBOOK_METRICS_FILE", str(tmp_path / "m.json"))
    with pytest.raises(TypeError):
        record_metric("loss", "0.5")


def test_read_metrics(tmp_path):
    assert metrics.read_metrics(tmp_path / "missing.json") == {}
    bad = tmp_path / "list.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        metrics.read_metrics(bad)


def test_a_learner_does_not_see_the_metric_line(tmp_path, monkeypatch, capsys) -> None:
    """In a learner workspace the value goes to the progress file; the tools' line is not printed."""
    from dlbook import metrics, progress_log

    monkeypatch.delenv(metrics.METRICS_ENV, raising=False)
    monkeypatch.setattr(progress_log, "active_workspace", lambda: None)
    metrics.record_metric("test_accuracy", 0.5)
    assert "[dlbook metric] test_accuracy = 0.5" in capsys.readouterr().out
    recorded = []
    monkeypatch.setattr(progress_log, "active_workspace", lambda: tmp_path)
    monkeypatch.setattr(progress_log, "record_metric_value", lambda *args: recorded.append(args))
    metrics.record_metric("test_accuracy", 0.75)
    assert "[dlbook metric]" not in capsys.readouterr().out
    assert recorded and recorded[0][1:3] == ("test_accuracy", 0.75)
