"""babai_quantizer"""
