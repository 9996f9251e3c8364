"""A weight delta in factor form, ΔW = U Vᵀ: the maths type an adapter post's delta is kept in, so that
projections and Gram statistics cost O((d_out + d_in)·r²) instead of O(d_out·d_in·k)."""

from __future__ import annotations

from dataclasses import dataclass

from rwedit.lazy import as_dtype, torch


@dataclass(frozen=True)
class LowRankDelta:
    """ΔW = U Vᵀ (U: d_out × r, V: d_in × r, float64)."""

    U: torch.Tensor
    V: torch.Tensor

    @classmethod
    def zero(cls, shape: tuple[int, int]) -> "LowRankDelta":
        """An exact zero delta of ``shape`` (a role an adapter does not target)."""
        return cls(torch.zeros(shape[0], 1, dtype=torch.float64), torch.zeros(shape[1], 1, dtype=torch.float64))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.U.shape[0], self.V.shape[0])

    @property
    def device(self) -> torch.device:
        return self.U.device

    @property
    def T(self) -> "LowRankDelta":
        return LowRankDelta(self.V, self.U)

    def block(self, axis: int, index: slice | torch.Tensor) -> "LowRankDelta":
        """``ΔW[index, :]`` (axis 0) or ``ΔW[:, index]`` (axis 1), still in factor form."""
        return LowRankDelta(self.U[index], self.V) if axis == 0 else LowRankDelta(self.U, self.V[index])

    def dense(self, dtype: torch.dtype | str | None = "float64") -> torch.Tensor:
        d = self.U @ self.V.T
        return d if dtype is None else d.to(as_dtype(dtype))
