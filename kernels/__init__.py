"""babai_kernels"""
