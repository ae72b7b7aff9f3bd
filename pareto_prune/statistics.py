"""Per-neuron activation statistics, accumulated as token-weighted float64 sums.

Sums (not means) are stored so that statistics from several batches, resumed runs or
data-parallel ranks combine by addition, and memory stays O(layers x neurons) whatever
the amount of data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

# The sums kept for each MLP. ``count`` is the number of tokens that entered the sums.
SUM_FIELDS = ("sum", "sum_abs", "sum_sq", "sum_positive")
STATISTIC_NAMES = ("mean_abs", "rms", "mean", "mean_positive")
_FORMAT = "pareto-prune-statistics"


class NeuronStatistics:
    """Token-weighted sums of each neuron's activation, per gated MLP.

    For MLP ``key`` and neuron ``i`` over the counted tokens ``t``:
    ``sum[i] = sum_t a_ti``, ``sum_abs[i] = sum_t |a_ti|``, ``sum_sq[i] = sum_t a_ti^2``,
    ``sum_positive[i] = sum_t max(a_ti, 0)`` and ``count`` = number of tokens. All tensors
    are float64 on the CPU.
    """

    def __init__(self, sizes: dict[str, int]):
        self.sizes = dict(sizes)
        self.count = {key: torch.zeros((), dtype=torch.float64) for key in sizes}
        self.sums = {
            field: {key: torch.zeros(size, dtype=torch.float64) for key, size in sizes.items()}
            for field in SUM_FIELDS
        }

    @property
    def keys(self) -> list[str]:
        """MLP keys in model order."""
        return list(self.sizes)

    @property
    def total_tokens(self) -> int:
        """Tokens counted in the first MLP (a full scan counts the same tokens in every MLP)."""
        return int(next(iter(self.count.values()))) if self.count else 0

    def add_batch(self, key: str, activations: torch.Tensor) -> None:
        """Add a ``[tokens, neurons]`` activation matrix to the sums of MLP ``key``."""
        values = activations.detach().to(torch.float64)
        self.count[key] += values.shape[0]
        self.sums["sum"][key] += values.sum(0).cpu()
        self.sums["sum_abs"][key] += values.abs().sum(0).cpu()
        self.sums["sum_sq"][key] += values.square().sum(0).cpu()
        self.sums["sum_positive"][key] += values.clamp_min(0).sum(0).cpu()

    def statistic(self, name: str) -> dict[str, torch.Tensor]:
        """Return one per-neuron statistic per MLP.

        ``mean_abs`` is the mean absolute activation, ``rms`` the root mean square,
        ``mean`` the signed mean and ``mean_positive`` the mean of ``max(a, 0)``. An MLP
        that saw no tokens gets zeros.
        """
        if name not in STATISTIC_NAMES:
            raise ValueError(f"Unknown statistic {name!r}; choose one of {', '.join(STATISTIC_NAMES)}.")
        result = {}
        for key in self.sizes:
            count = self.count[key].clamp_min(1.0)
            if name == "mean_abs":
                result[key] = self.sums["sum_abs"][key] / count
            elif name == "rms":
                result[key] = (self.sums["sum_sq"][key] / count).sqrt()
            elif name == "mean":
                result[key] = self.sums["sum"][key] / count
            else:
                result[key] = self.sums["sum_positive"][key] / count
        return result

    def merge_(self, other: NeuronStatistics) -> NeuronStatistics:
        """Add ``other``'s sums into this object, in place, and return it."""
        if other.sizes != self.sizes:
            raise ValueError("Cannot merge statistics of different models: their MLP keys or sizes differ.")
        for key in self.sizes:
            self.count[key] += other.count[key]
            for field, tensors in self.sums.items():
                tensors[key] += other.sums[field][key]
        return self

    def all_reduce_(self) -> NeuronStatistics:
        """Sum the statistics over all ranks of the default ``torch.distributed`` group, in place.

        With the NCCL backend the tensors travel through the current CUDA device;
        gloo reduces CPU tensors directly.
        """
        import torch.distributed as dist

        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        for tensors in [self.count, *self.sums.values()]:
            for key in tensors:
                buffer = tensors[key].to(device)
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                tensors[key] = buffer.cpu()
        return self

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flatten into ``{"<key>/<field>": tensor}`` for safetensors."""
        tensors = {f"{key}/count": self.count[key].reshape(1) for key in self.sizes}
        for field, per_key in self.sums.items():
            tensors.update({f"{key}/{field}": value for key, value in per_key.items()})
        return tensors

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write the sums to a safetensors file (float64), with optional string metadata."""
        header = {"format": _FORMAT, "keys": json.dumps(self.keys), **(metadata or {})}
        save_file({name: t.contiguous() for name, t in self.to_tensors().items()}, str(path), metadata=header)

    @classmethod
    def load(cls, path: str | Path) -> tuple[NeuronStatistics, dict[str, str]]:
        """Read a file written by :meth:`save`; return the statistics and the file's metadata."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Statistics file {path} not found; create it with `pareto-prune scan`.")
        try:
            reader = safe_open(str(path), framework="pt")
        except SafetensorError as error:
            raise ValueError(f"{path} is not a pareto-prune statistics file: {error}.") from error
        with reader as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != _FORMAT:
                raise ValueError(f"{path} is not a pareto-prune statistics file (format {metadata.get('format')!r}).")
            keys = json.loads(metadata["keys"])
            stats = cls({key: handle.get_slice(f"{key}/sum").get_shape()[0] for key in keys})
            for key in keys:
                stats.count[key] = handle.get_tensor(f"{key}/count").reshape(())
                for field in stats.sums:
                    stats.sums[field][key] = handle.get_tensor(f"{key}/{field}")
        return stats, metadata

    @classmethod
    def sum(cls, parts: Iterable[NeuronStatistics]) -> NeuronStatistics:
        """Return a new object holding the sum of ``parts``."""
        parts = list(parts)
        total = cls(parts[0].sizes)
        for part in parts:
            total.merge_(part)
        return total
