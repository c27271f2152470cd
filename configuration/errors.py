"""The one error type a user sees for bad input: its message names the file (or flag), the field and what is allowed."""


class DstackError(Exception):
    """An error whose message is meant for the user: the CLI prints it, without a traceback, and exits with 1."""


class ConfigurationError(DstackError):
    """Bad input from a file, a flag or the environment."""


MISSING_AWS_CREDENTIALS = ("AWS credentials are missing: run `aws configure`, set AWS_PROFILE, or export "
                           "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
