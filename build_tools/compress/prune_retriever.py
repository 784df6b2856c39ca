"""prune-retriever: see build_tools.compress.prune."""
from build_tools.compress.prune import run


def main(argv: list[str] | None = None) -> None:
    run("retriever", argv)
