"""The one exception type users see: its message names the file, node or option at fault."""


class BnnError(Exception):
    pass
