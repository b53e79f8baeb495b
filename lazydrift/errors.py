"""The kind of error a user fixes by changing what they typed."""

from __future__ import annotations


class UserError(Exception):
    """Bad input the user can fix: a recipe key, an output folder, a size too large for the device.

    The message is one line that names the file, key or argument and says what to do;
    ``lazydrift`` prints it without a traceback and exits with status 2.
    """
