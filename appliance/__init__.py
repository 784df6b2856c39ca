"""Offline voice question answering over a local knowledge base (runtime package).

The runtime imports only onnxruntime, tokenizers, faiss, numpy and parsing/audio/UI libraries:
never torch, transformers or anything that reaches the network.
"""

__version__ = "0.1.0"
