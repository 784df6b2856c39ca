"""Compression toolchain for the reader and retriever: distil, prune, quantise, fuse, report.

Every stage is a ``python -m build_tools`` command that reads a model directory and writes a
new one (with manifest.json) under ``build/compress/`` so any number in the report can be
reproduced by rerunning the command named in that directory's manifest.
"""
