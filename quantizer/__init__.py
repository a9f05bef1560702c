"""quantizer"""
