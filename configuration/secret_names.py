"""Which env names hold secrets by their look, so that a literal `API_TOKEN=ghp_...` in a file prints as `[secret]`.

The rule: the name is cut into words at `_`, digits and lowercase-to-uppercase changes (`AWS_SECRET_ACCESS_KEY` ->
AWS, SECRET, ACCESS, KEY; `apiKey` -> api, Key), and it looks secret when one of its words, in any case, is one of
SECRET_WORDS or its plural. Whole words only: `KEYBOARD`, `MONKEY`, `TOKENIZERS_PARALLELISM` and `GIT_AUTHOR_NAME`
do not match.
"""

from __future__ import annotations

import re

SECRET_WORDS = frozenset({"TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "APIKEY", "CREDENTIAL", "CREDS", "AUTH",
                          "PASS"})
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def looks_secret(name: str) -> bool:
    for word in _WORD.findall(name):
        word = word.upper()
        if word in SECRET_WORDS or (word.endswith("S") and word[:-1] in SECRET_WORDS):
            return True
    return False
