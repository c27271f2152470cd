"""`dstack apply --dry-run` on many files in one process: the CLI's own entry point, run once per file with its
output caught at the file descriptors, so the imports and the catalogues are paid for once.

    python -m tests.dry_run_many CASES.json RESULTS.json

CASES.json: a list of argument lists (what follows `dstack`); RESULTS.json gets one {"args", "code", "stdout",
"stderr"} per case."""

import json
import os
import sys
import tempfile


def run_case(args):
    from cli.main import main

    captured = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    for fd, file in zip((1, 2), captured):
        os.dup2(file.fileno(), fd)
    sys.argv = ["dstack", *args]
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
    texts = []
    for file in captured:
        file.seek(0)
        texts.append(file.read().decode(errors="replace"))
        file.close()
    return {"args": args, "code": code, "stdout": texts[0], "stderr": texts[1]}


if __name__ == "__main__":
    cases_path, results_path = sys.argv[1:3]  # run_case sets sys.argv
    cases = json.loads(open(cases_path).read())
    results = [run_case(args) for args in cases]
    with open(results_path, "w") as out:
        json.dump(results, out)
