"""The exception types for bad input."""

from __future__ import annotations


class GuppyError(Exception):
    """Bad input (a file, a flag, a folder): the CLI prints the message on one line, exit 2.

    Messages read `<where>: <what is wrong>; <what to do>`.
    """


class ConfigError(GuppyError):
    """A config value that cannot work, named by its dataclass field:

        TrainConfig.preset 'x': unknown; choose one of guppy-9m, ...

    The CLI names the flag that set it instead (`--preset 'x': unknown; ...`).
    """

    def __init__(self, config: str, field: str, value: object, problem: str):
        self.config, self.field, self.value, self.problem = config, field, value, problem
        super().__init__(f"{config}.{field} {value!r}: {problem}")

    def for_flag(self, flag: str) -> str:
        """The message with `flag` (e.g. --preset) where the field's name was."""
        return f"{flag} {self.value!r}: {self.problem}"
