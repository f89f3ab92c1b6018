"""Memory of a training step on any device: the bytes autograd saves, and the peak of live tensors.

Two measurements, both exact and device-agnostic (they count tensor storages, not the operating
system's view of the process, so they work on a CPU where there is no ``max_memory_allocated``):

- :func:`saved_tensor_bytes`: the distinct storages autograd saves for the backward pass while
  ``fn`` runs (``torch.autograd.graph.saved_tensors_hooks``). This is the activation memory a
  forward pass leaves behind.
- :func:`peak_memory`: the peak, over ``fn``'s run, of the bytes of storages that ``fn`` created
  and that are still alive (a ``TorchDispatchMode`` sees every op; a weak reference per storage
  tells when it is freed). Run a forward *and* backward in ``fn`` to see what activation
  checkpointing saves: the peak includes the recomputation during the backward pass.

Storages that existed before ``fn`` (parameters, inputs) and views of them are not counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _storage_key(tensor: torch.Tensor) -> int:
    return StorageWeakRef(tensor.untyped_storage()).cdata


class MemoryTracker(TorchDispatchMode):
    """While active (``with MemoryTracker() as tracker:``), count the bytes of storages ops create.

    Attributes: ``current`` (bytes alive now), ``peak`` (the largest ``current`` seen, checked after
    every op). Outputs that share storage with an op's inputs (views, in-place results) add nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def update(self) -> int:
        """Drop freed storages from the count; return the bytes still alive."""
        dead = [key for key, (ref, _) in self.live.items() if ref.expired()]
        for key in dead:
            self.current -= self.live.pop(key)[1]
        return self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage_key(a) for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            ref = StorageWeakRef(storage)
            if ref.cdata in inputs or ref.cdata in self.live:
                continue
            self.live[ref.cdata] = (ref, storage.nbytes())
            self.current += storage.nbytes()
        self.update()
        self.peak = max(self.peak, self.current)
        return out


def peak_memory(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """Return ``(fn(*args, **kwargs), peak)``: the most bytes of storages created by ``fn`` alive at once.

    Counted after every op, so a temporary that lives between two ops counts; memory allocated
    outside PyTorch's ops (NumPy, Python objects) does not.
    """
    if not callable(fn):
        raise TypeError(f"expected a callable fn, got {type(fn).__name__}")
    tracker = MemoryTracker()
    with tracker:
        result = fn(*args, **kwargs)
    return result, tracker.peak


def saved_tensor_bytes(fn: Callable[..., Any], *args: Any, exclude: Iterable[torch.Tensor] = (),
                       **kwargs: Any) -> tuple[Any, int]:
    """Return ``(fn(*args, **kwargs), nbytes)``: the bytes of the distinct storages autograd saves during ``fn``.

    A tensor saved by two ops (a ReLU's output, which the next Linear saves too) counts once.
    Tensors sharing storage with one of ``exclude`` (pass ``model.parameters()`` to count only
    activations: a Linear saves a view of its weight) do not count, and neither do those that
    ``torch.utils.checkpoint`` keeps out of the graph.
    """
    if not callable(fn):
        raise TypeError(f"expected a callable fn, got {type(fn).__name__}")
    excluded = set()
    for tensor in exclude:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"exclude should hold tensors, got {type(tensor).__name__}")
        excluded.add(_storage_key(tensor))
    seen: dict[int, int] = {}
    keep: list[torch.Tensor] = []  # keeps the keys valid: a freed storage's address may be reused

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in excluded:
            seen.setdefault(key, tensor.untyped_storage().nbytes())
        keep.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn(*args, **kwargs)
    return result, sum(seen.values())
