"""Deferred parameters: vLLM's loader (v2) stores each checkpoint tensor whole; the linear method
slices it for this rank (docs/format.md tensor-parallel rules) in process_weights_after_loading.

Packed SSQR outliers and HPTQ bit streams cannot be cut by vLLM's generic narrow(), so each
parameter keeps, per fused sibling, the full checkpoint tensor and the output rows this rank needs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.model_executor.parameter import BasevLLMParameter

QKV_INDEX = {"q": 0, "k": 1, "v": 2}


@dataclass
class Piece:
    """One checkpoint tensor of one fused sibling, the output rows [start, stop) this rank keeps
    (None: all), and the sibling's full number of output rows that the model expects."""

    tensor: torch.Tensor
    rows: tuple[int, int] | None
    full_rows: int


class DeferredParameter(BasevLLMParameter):
    """Empty placeholder for the checkpoint tensor `name` of a quantized linear layer.

    After loading, `pieces[i]` holds the tensor of fused sibling i (0 when the layer is not fused).
    """

    def __new__(cls, *, dtype: torch.dtype, **kwargs):
        return super().__new__(cls, data=torch.empty(0, dtype=dtype))  # the stored dtype: vLLM warns on a mismatch

    def __init__(self, *, name: str, layer: torch.nn.Module, weight_loader, dtype: torch.dtype):
        super().__init__(data=self.data, weight_loader=weight_loader)
        self.tensor_name = name
        self.tp_rank, self.tp_size = getattr(layer, "tp_rank", 0), getattr(layer, "tp_size", 1)
        self.local_rows = sum(layer.output_partition_sizes)  # this rank's rows of the whole layer
        self.pieces: dict[int, Piece] = {}

    def _store(self, index: int, tensor: torch.Tensor, rows: tuple[int, int] | None, full_rows: int) -> None:
        self.pieces[index] = Piece(tensor.detach().to("cpu", copy=True), rows, full_rows)

    def _store_block(self, index: int, tensor: torch.Tensor, block: int, size: int, full_rows: int) -> None:
        self._store(index, tensor, (block * size, (block + 1) * size), full_rows)

    def load_column_parallel_weight(self, loaded_weight: torch.Tensor):
        self._store_block(0, loaded_weight, self.tp_rank, self.local_rows, self.local_rows * self.tp_size)

    def load_row_parallel_weight(self, loaded_weight: torch.Tensor):
        self._store(0, loaded_weight, None, self.local_rows)  # the linear method splits the input columns

    def load_merged_column_weight(self, loaded_weight: torch.Tensor, **kwargs):
        size = kwargs["shard_size"]
        self._store_block(int(kwargs["shard_id"]), loaded_weight, self.tp_rank, size, size * self.tp_size)

    def load_qkv_weight(self, loaded_weight: torch.Tensor, **kwargs):
        shard_id, size, replicas = kwargs["shard_id"], kwargs["shard_size"], kwargs["num_heads"]
        if shard_id == "q":
            self._store_block(0, loaded_weight, self.tp_rank, size, size * self.tp_size)
        else:  # k/v heads may be replicated over `replicas` ranks
            self._store_block(QKV_INDEX[shard_id], loaded_weight, self.tp_rank // replicas, size,
                              size * self.tp_size // replicas)


def load_replicated(param: DeferredParameter, loaded_weight: torch.Tensor) -> None:
    """Weight loader for ReplicatedLinear layers (which bypass the v2 loader): keep all rows."""
    param._store(0, loaded_weight, None, param.local_rows)
