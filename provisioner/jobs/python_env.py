"""A `python:` job's virtual environment, as shell text for job.sh: the interpreter asked for, found on the host (or
installed by uv), and a venv of it in the job folder. What is slow to find or make is kept per host in the jobs
folder's HOST_CACHE (provisioner.jobs.layout), each entry valid while what it was made from is unchanged."""

from __future__ import annotations

from typing import Optional

from configuration.fields import SUPPORTED_PYTHON
from provisioner.jobs.layout import HOST_CACHE

# An interpreter that runs and is the version asked for (a pyenv shim of a version not selected exits 127), as
# a path: `python3.12`, else a pyenv-installed 3.12.x, else nothing. With no version: python3. The path is the
# interpreter's own (sys.executable), not a pyenv shim's: the venv is made without the shim's ~0.2 s start.
_FIND_PYTHON = """py_ok() { "$1" -c "import sys; sys.exit(0 if '$2' in ('', '%d.%d' % sys.version_info[:2]) else 1)" \
>/dev/null 2>&1; }
py_path() { "$1" -c "import sys; sys.exit(print(sys.executable) if '$2' in ('', '%d.%d' % sys.version_info[:2]) \
else 1)" 2>/dev/null; }
find_python() {
  for c in ${1:+python$1} python3; do if p=$(py_path "$c" "$1") && [ -n "$p" ]; then echo "$p"; return 0; fi; done
  [ -n "$1" ] && command -v pyenv >/dev/null 2>&1 || return 1
  for v in $(pyenv versions --bare 2>/dev/null | grep -E "^$(echo "$1" | sed 's/[.]/[.]/')[.][0-9]+\\$"); do
    p=$(PYENV_VERSION=$v pyenv which python 2>/dev/null) && py_ok "$p" "$1" && { echo "$p"; return 0; }
  done
  return 1
}
present_pythons() { for v in VERSIONS; do find_python $v >/dev/null && printf ' %s' $v; done; }
""".replace("VERSIONS", " ".join(SUPPORTED_PYTHON))

_INSTALL_UV = """if ! command -v uv >/dev/null 2>&1 && [ ! -x "$HOME/.local/bin/uv" ]; then
    echo "dstack: installing uv to get Python {version}"
    curl -LsSf --max-time 120 https://astral.sh/uv/install.sh | \
env UV_INSTALL_DIR="$HOME/.local/bin" INSTALLER_NO_MODIFY_PATH=1 sh >/dev/null 2>&1 || true
  fi
  PATH="$PATH:$HOME/.local/bin"
"""


# find_python's answer (a pyenv shim's start alone is ~0.1 s of CPU) is kept per host, keyed by the version asked
# for, PATH, PYENV_VERSION and what decides the answer: the `python*` names in each PATH folder and where those that
# are links point, pyenv's global version file, its versions folder (an install or uninstall changes it) and
# ~/.python-version. (Not the folders' or shims' times: every login's `pyenv rehash` rewrites the shims.) PATH is
# taken without the job's own bin folder in front (a cluster's `ssh`, `docker: true`'s `docker`, never a python):
# its name is the run's, and with it in the key every multi-node job missed and left one more entry behind.
# A venv of the interpreter with --without-pip is a few files and links; it is made once per host and interpreter
# (the interpreter's path, inode, size and time in the key) as a template, and each job gets a copy with the
# template's path in its activate scripts and pyvenv.cfg replaced by its own: what `python -m venv` would have made,
# without an interpreter's start (the paths as venv writes them: absolute, `..` resolved; a copy whose activate
# does not name its own folder is not used). CACHE is empty (nothing kept) where the jobs folder is not the user's own (a job
# that became root through sudo), and anything that fails there falls back to finding and making anew.
_CACHED = """CACHE=""
if [ -O "$JOB_DIR/.." ] && mkdir -p "$JOB_DIR/../HOST_CACHE" 2>/dev/null; then CACHE=$(cd "$JOB_DIR/../HOST_CACHE" && pwd); fi
cached_python() {
  [ -n "$CACHE" ] || { find_python "$1"; return; }
  k=${PATH#"$JOB_DIR/bin:"}
  c="$CACHE/python-$({ echo "$1|$k|${PYENV_VERSION:-}"; (IFS=:; set --; for d in $k; do set -- "$@" "$d"/python*
done; stat -c %N "$@"); r=${PYENV_ROOT:-$HOME/.pyenv}; stat -c '%n %i %y' "$r/version" "$r/versions" \
"$HOME/.python-version"; } 2>/dev/null | cksum | tr ' ' -)"
  p=; { IFS= read -r p < "$c"; } 2>/dev/null; if [ -n "$p" ] && [ -x "$p" ]; then echo "$p"; return 0; fi
  p=$(find_python "$1") || return 1
  printf '%s\\n' "$p" > "$c.$$" && mv "$c.$$" "$c"
  echo "$p"
}
venv_from_template() {
  [ -n "$CACHE" ] || return 1
  t="$CACHE/venv-$(stat -L -c '%n %i %s %y' "$1" | cksum | tr ' ' -)"
  if [ ! -f "$t/made-at" ]; then
    rm -rf "$t.$$"
    "$1" -m venv --without-pip --system-site-packages "$t.$$" >/dev/null 2>&1 && printf '%s' "$t.$$" > "$t.$$/made-at" \
&& mv -T "$t.$$" "$t" 2>/dev/null
    rm -rf "$t.$$"
  fi
  from=$(cat "$t/made-at" 2>/dev/null) && [ -n "$from" ] || return 1
  case "$from$JOB_DIR" in *'|'*|*'&'*|*'\\'*) return 1 ;; esac
  if cp -a "$t" "$JOB_DIR/venv" && rm -f "$JOB_DIR/venv/made-at" && \
sed -i "s|$from|$JOB_DIR/venv|g" "$JOB_DIR/venv/pyvenv.cfg" "$JOB_DIR"/venv/bin/activate* && \
grep -qF "$JOB_DIR/venv" "$JOB_DIR/venv/bin/activate"; then return 0; fi
  rm -rf "$JOB_DIR/venv"; return 1
}
""".replace("HOST_CACHE", HOST_CACHE)


def python_setup(version: Optional[str], may_install: bool) -> str:
    """A virtual environment for the run. The interpreter asked for, found on the host (PATH or pyenv), or else
    installed by uv (uv itself installed first where the job may download). Never another version instead: the job
    fails naming the versions the host has. uv makes the venv where present; else the system's Python does, seeing
    the host's site packages, with `pip` as `python -m pip` (milliseconds where ensurepip takes seconds)."""
    wanted = version or ""
    get_uv = _INSTALL_UV.format(version=version) if version and may_install else ""
    cannot = "and uv could not install it" if may_install else "(the local backend installs nothing)"
    return f"""{_FIND_PYTHON}{_CACHED}if [ ! -x "$JOB_DIR/venv/bin/python" ]; then
  PY=$(cached_python {wanted}) || PY=""
  if [ -z "$PY" ]; then
  {get_uv}  if ! command -v uv >/dev/null 2>&1 || ! uv venv -q --seed --python {wanted or 3} "$JOB_DIR/venv" >/dev/null 2>&1; then
      echo "dstack: Python {wanted or 3} is not installed on this host {cannot}; present:$(present_pythons)" >&2
      exit 1
    fi
  elif command -v uv >/dev/null 2>&1 && uv venv -q --seed --python "$PY" "$JOB_DIR/venv" >/dev/null 2>&1; then :
  else
    venv_from_template "$PY" || "$PY" -m venv --without-pip --system-site-packages "$JOB_DIR/venv"
    for shim in pip pip3; do
      printf '#!/bin/sh\\nexec "%s/bin/python" -m pip "$@"\\n' "$JOB_DIR/venv" > "$JOB_DIR/venv/bin/$shim"
    done
    chmod +x "$JOB_DIR/venv/bin/pip" "$JOB_DIR/venv/bin/pip3"
  fi
fi
unset CACHE c k t from
. "$JOB_DIR/venv/bin/activate"
"""
