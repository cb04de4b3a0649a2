"""The one base class the CLI turns into a one-line `error: ...` instead of a traceback.

Each component keeps its own error type (ManifestError, StoreError, CheckpointError, ...) and
adds `UserError` to its bases when the cause is the user's input, files or settings, so the
message is the whole story. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with inputs, files or settings; the message says what and how to fix it."""
