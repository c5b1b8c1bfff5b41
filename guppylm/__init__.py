"""GuppyLM: a tiny chat language model you build end to end, from persona data to chat."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from guppylm import Guppy` without importing torch for commands that do not need it
    if name == "Guppy":
        from guppylm.chat import Guppy

        return Guppy
    raise AttributeError(name)
