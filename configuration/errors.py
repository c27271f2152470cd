"""The one error type a user sees for bad input: its message names the file (or flag), the field and what is allowed."""


class ConfigurationError(Exception):
    """Bad input from a file, a flag or the environment; the CLI prints the message and exits with status 1."""


MISSING_AWS_CREDENTIALS = ("AWS credentials are missing: run `aws configure`, set AWS_PROFILE, or export "
                           "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
