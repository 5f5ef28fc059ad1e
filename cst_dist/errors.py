"""The one base class for errors a user can fix (bad config, bad input row, missing folder, diverged run).

The CLI prints these as one clear line and exits 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    pass
