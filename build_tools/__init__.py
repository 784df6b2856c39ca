"""Offline build toolchain: export, train, quantize and evaluate the appliance's models.

May import torch/transformers (the optional ``build`` extra); the runtime never does.
"""
