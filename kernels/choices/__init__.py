"""The kernels the chooser (babai_kernels.chooser) picks from, one module per family:
base.py (the interface), cpu.py (the C++ kernel and PyTorch's CPU int4/int8 GEMMs), cuda.py (the
Triton/Gluon kernels), reference.py (the torch references, last resort). Engine adapters may add
their own (vllm_babai registers vLLM's mixed-precision kernels)."""
