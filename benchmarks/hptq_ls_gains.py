"""Least-squares row gains after Babai (issue 23, lever 3), measured at the layer level.

For HPTQ with per-column steps at 3.3 and 4.3 bits on layers 0 and 15 of SmolLM2-135M-Instruct (16 × 512
calibration tokens, the float model's inputs), the gain g_n = q_nᵀHw_n / q_nᵀHq_n (rounded to float16) of
each output row and the layer error Σ_n (w_n − g_n q_n)ᵀ H (w_n − g_n q_n) before and after. A gain costs
16/K bits per weight; the same bits spent on the step lower the error by ≈ 1 − 2^(−2·16/K) at high rate,
the comparison column.

    python -m benchmarks.hptq_ls_gains     (prints the markdown table)
"""
from __future__ import annotations

import torch

from babai_quantizer import assets
from babai_quantizer.calibration import SEQUENTIAL_GROUPS, calibration_windows, decoder_layers, load_causal_lm
from babai_quantizer.formats.hptq import quantize_hptq
from babai_quantizer.hessian_capture import accumulate_grams, catch_layer_inputs, run_layer

LAYERS = (0, 15)
TARGETS = (3.3, 4.3)


def main() -> None:
    model, tok = load_causal_lm(assets.model_dir())
    model.float()
    windows = calibration_windows(tok, assets.text_path("calib").read_text(), 16, 512, 0)
    layers = decoder_layers(model)
    inputs, kwargs = catch_layer_inputs(model, layers, windows, torch.device("cpu"))
    print("| layer | linear | target bits | error | with gains | less | gain bits | same bits on the step |")
    print("|---|---|---|---|---|---|---|---|")
    with torch.no_grad():
        for index in range(max(LAYERS) + 1):
            layer = layers[index]
            if index in LAYERS:
                grams = accumulate_grams(layer, None, SEQUENTIAL_GROUPS, inputs, None, kwargs)
                for group in SEQUENTIAL_GROUPS:
                    name = group[0]
                    W, H = layer.get_submodule(name).weight.data.float(), grams[name][0].double()
                    Hd = H + 0.01 * H.diagonal().mean() * torch.eye(H.shape[0], dtype=H.dtype)
                    for target in TARGETS:
                        Q = quantize_hptq(W, H, target_bits=target, col_steps="ldl").q_dequant.double()
                        Wd = W.double()
                        gain = (((Q @ Hd) * Wd).sum(1) / ((Q @ Hd) * Q).sum(1)).half().double()
                        e0 = float((((Wd - Q) @ Hd) * (Wd - Q)).sum())
                        G = gain[:, None] * Q
                        e1 = float((((Wd - G) @ Hd) * (Wd - G)).sum())
                        bits = 16 / W.shape[1]
                        print(f"| {index} | {name} | {target} | {e0:.4g} | {e1:.4g} | {100 * (1 - e1 / e0):.2f} % "
                              f"| {bits:.3f} | {100 * (1 - 2 ** (-2 * bits)):.1f} % |", flush=True)
            inputs = [run_layer(layer, x, kwargs) for x in inputs]


if __name__ == "__main__":
    main()
