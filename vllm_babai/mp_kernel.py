"""vLLM's own mixed-precision kernels as a babai kernel (registered into the chooser when the
plugin loads): the dense 4-bit codes as uint4b8 with group scales through
`choose_mp_linear_kernel` (CPUWNA16 on CPU; Marlin/Machete/... on GPUs), plus the residual."""
from __future__ import annotations

import torch

from babai_kernels.choices.base import DenseResidualKernel
from babai_kernels.layer_spec import LinearSpec


class VllmMixedPrecision(DenseResidualKernel):
    """On CUDA only for layers with no residual (the residual would run as extra torch launches)."""

    platforms = ("cpu", "cuda")
    dense_bits = 4

    @classmethod
    def _mp_config(cls, spec: LinearSpec):
        from vllm.model_executor.kernels.linear.mixed_precision.MPLinearKernel import MPLinearLayerConfig
        from vllm.scalar_type import scalar_types

        n, k = spec.shape
        return MPLinearLayerConfig(full_weight_shape=(k, n), partition_weight_shape=(k, n),
                                   weight_type=scalar_types.uint4b8, act_type=spec.act_dtype,
                                   group_size=spec.dense_layout(4).group_size, zero_points=False)

    @classmethod
    def can_implement(cls, spec):
        if spec.act_dtype not in (torch.float16, torch.bfloat16):
            return False, f"vLLM's mixed-precision kernels take 16-bit activations, the model runs {spec.act_dtype}"
        layout = spec.dense_layout(4)
        if layout.bits != 4:
            return False, f"needs 4-bit dense codes, the layout has {layout.bits}"
        if spec.device.type == "cuda" and layout.residual.nnz:
            return False, (f"the layout's {layout.residual.nnz} residual entries would run as extra torch "
                           "launches on the GPU")
        from vllm.model_executor.kernels.linear import choose_mp_linear_kernel
        try:
            choose_mp_linear_kernel(cls._mp_config(spec))
        except (ValueError, NotImplementedError) as e:
            return False, f"vLLM has no mixed-precision kernel for it: {e}"
        return True, None

    def __init__(self, spec: LinearSpec):
        # what pack/dense need, not the spec itself (its cache holds the checkpoint tensors and layouts)
        self.config, self.device, self.act_dtype = self._mp_config(spec), spec.device, spec.act_dtype
        super().__init__(spec)

    def pack(self, layout):
        from vllm.model_executor.kernels.linear import choose_mp_linear_kernel
        from vllm.model_executor.parameter import GroupQuantScaleParameter, PackedvLLMParameter

        from babai_kernels.gptq import pack_rows

        config = self.config
        self.kernel = choose_mp_linear_kernel(config)(config, "qweight", "scales")
        self.holder = torch.nn.Module()
        unused = lambda *a, **k: None  # noqa: E731
        qweight = pack_rows((layout.codes.to(torch.int64) + 8).T, 4).to(self.device)  # (K/8, N), GPTQ layout
        self.holder.register_parameter("qweight", PackedvLLMParameter(
            data=qweight, input_dim=0, output_dim=1, packed_dim=0, packed_factor=8, weight_loader=unused))
        self.holder.register_parameter("scales", GroupQuantScaleParameter(
            data=layout.scales.T.to(self.device, self.act_dtype).contiguous(), input_dim=0, output_dim=1,
            weight_loader=unused))
        self.holder.bias = None
        self.kernel.process_weights_after_loading(self.holder)
        self.name = f"{type(self).__name__}[{type(self.kernel).__name__}]"
        return dict(self.holder.named_parameters())

    def dense(self, x):
        return self.kernel.apply_weights(self.holder, x.to(self.act_dtype)).float()
