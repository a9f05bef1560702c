"""babai_serve"""
