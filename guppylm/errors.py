"""The one exception type for bad input."""


class GuppyError(Exception):
    """Bad input (a file, a flag, a folder): the CLI prints the message on one line, exit 2.

    Messages read `<where>: <what is wrong>; <what to do>`.
    """
