"""Run names for configurations that give none: two words and a number, valid as a run name and a cloud label."""

import secrets

_ADJECTIVES = ("brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "kind", "lucky", "mighty", "nice",
               "proud", "quick", "silly", "swift", "witty")
_ANIMALS = ("badger", "bear", "beaver", "crab", "eagle", "falcon", "fox", "heron", "lemur", "lynx", "otter", "owl",
            "panda", "seal", "tiger", "wolf")


def generate_run_name() -> str:
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_ANIMALS)}-{secrets.randbelow(1000)}"
