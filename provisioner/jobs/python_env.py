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


# find_python's answer (a pyenv shim's start alone is ~0.1 s of CPU) is kept per host and version asked for, in one
# file: the key, compared as a string (no checksum program started), the interpreter, and what `stat` said of it then
# (its venv template's name, below). The key is PATH, without the job's own bin folder in front (a cluster's `ssh`,
# `docker: true`'s `docker`, never a python: its name is the run's, and with it every multi-node job would miss),
# PYENV_VERSION, the texts of pyenv's global version file and ~/.python-version and the names in pyenv's versions
# folder, all read by the shell's builtins. The `python*` names on PATH are covered by times instead (no `stat` of
# each name, no glob of each folder): a name added, removed, renamed or re-linked changes its folder's time (dpkg
# installs by rename, `ln -sf` makes a new link), so the answer holds while each PATH folder and pyenv's versions
# folder (a version reinstalled) is missing or strictly older than the kept file (`-nt`, a builtin; a folder made later
# is newer). Strictly older: a change in the clock tick of the file's writing (in its second, where the shell's test
# compares seconds, as busybox's does) gets the file's own time; and an answer is kept only where no such folder
# changed since its search began (a marker file made then), so that one found before a change never carries a later
# time. Not pyenv's shims folder: every `pyenv rehash` (each login's `pyenv init`) rewrites it, and its names follow
# the versions'.
# A venv of the interpreter with --without-pip (and `pip`, `pip3` as `python -m pip`) is a few files and links; it is
# made once per host and interpreter, as a template: `venv` in a folder named by the interpreter's path, inode, size
# and time, beside `made-at`, the path the venv was made at (one without the time's `:`, which venv refuses), its time
# the interpreter's (`touch -r`, before the venv is made). A job uses the template its kept answer names, without a
# `stat`, while the interpreter's time is still made-at's (neither -nt nor -ot: one written in place has a new time,
# another renamed over it another time, or a new folder time above); else `stat` names it anew. Each job
# gets a copy with that path in its activate scripts, pyvenv.cfg and pip shims replaced by its own (one `cp`, then one
# `awk` that writes those files again from the template's, the path replaced as text: in place, keeping their inodes
# and modes, where `sed -i` made a new file for each and removed the old one; on a file system without a journal, as
# the development machine's, ext4 then skips each inode removed in the last 30 s when it makes a new file, which 16
# hosts' jobs made the hot spot of their start): what `python -m venv` would have made, without an interpreter's
# start (the paths as venv writes them: absolute, `..` resolved). A template whose activate does not name the path it
# was made at is not kept, and paths with characters that a tool could read otherwise (`|`, `&`, `\\`, `[`, `*`, a
# newline: awk's -v reads backslash escapes) are not copied.
# __dstack_cache is empty (nothing kept) where the jobs folder is not the user's own (a job that became root through
# sudo), and anything that fails there falls back to finding and making anew. The shell's own variables are
# __dstack_*: a task's env may name any other.
_CACHED = """__dstack_cache="" __dstack_nl='
'
__dstack_swap='function swap(s,  out, i) { out = ""; while ((i = index(s, from)) > 0) { out = out substr(s, 1, i - 1) to;
s = substr(s, i + length(from)) } return out s }
{ print swap($0) > (to substr(FILENAME, length(made) + 1)) }'
if [ -O "$JOB_DIR/.." ] && { [ -d "$JOB_DIR/../HOST_CACHE" ] || mkdir -p "$JOB_DIR/../HOST_CACHE" 2>/dev/null; }; then
  __dstack_cache="${JOB_DIR%/*}/HOST_CACHE"
fi
pip_shims() {
  for __dstack_shim in pip pip3; do
    printf '#!/bin/sh\\nexec "%s/bin/python" -m pip "$@"\\n' "$1" > "$1/bin/$__dstack_shim"
  done
  chmod +x "$1/bin/pip" "$1/bin/pip3"
}
# interpreter_id PYTHON: what names PYTHON's venv template (its inode, size and time, through links).
interpreter_id() { stat -L -c '%i %s %y' "$1"; }
# unchanged_since FILE: each folder whose names decide find_python's answer (PATH's, but pyenv's shims, and pyenv's
# versions) is missing or strictly older than FILE.
unchanged_since() {
  __dstack_ifs=$IFS; IFS=:
  for __dstack_dir in $__dstack_path "$__dstack_root/versions"; do
    case $__dstack_dir in "$__dstack_root/shims") continue ;; esac
    if [ -e "$__dstack_dir" ] && ! [ "$1" -nt "$__dstack_dir" ]; then IFS=$__dstack_ifs; return 1; fi
  done
  IFS=$__dstack_ifs
}
# cached_python VERSION: __dstack_py set to find_python's answer, kept per host, and __dstack_made to what `stat`
# said of it then (empty where not known); fails where there is none.
cached_python() {
  __dstack_made=
  [ -n "$__dstack_cache" ] || { __dstack_py=$(find_python "$1"); return; }
  __dstack_version=$1 __dstack_path=${PATH#"$JOB_DIR/bin:"} __dstack_root=${PYENV_ROOT:-$HOME/.pyenv}
  __dstack_key="$__dstack_version|$__dstack_path|${PYENV_VERSION:-}|"
  for __dstack_file in "$__dstack_root/version" "$HOME/.python-version"; do
    if [ -f "$__dstack_file" ]; then
      while IFS= read -r __dstack_line || [ -n "$__dstack_line" ]; do __dstack_key="$__dstack_key $__dstack_line"
      done 2>/dev/null < "$__dstack_file"
    fi
    __dstack_key="$__dstack_key|"
  done
  for __dstack_file in "$__dstack_root"/versions/*; do __dstack_key="$__dstack_key ${__dstack_file##*/}"; done
  while :; do case $__dstack_key in
    *"$__dstack_nl"*) __dstack_key="${__dstack_key%%"$__dstack_nl"*} ${__dstack_key#*"$__dstack_nl"}" ;; *) break ;;
  esac; done
  __dstack_kept="$__dstack_cache/interpreter-$__dstack_version" __dstack_line= __dstack_py=
  { IFS= read -r __dstack_line && IFS= read -r __dstack_py && IFS= read -r __dstack_made; } 2>/dev/null \\
< "$__dstack_kept"
  if [ "$__dstack_line" = "$__dstack_key" ] && [ -n "$__dstack_py" ] && [ -x "$__dstack_py" ] \\
&& unchanged_since "$__dstack_kept"; then
    return 0
  fi
  true 2>/dev/null > "$__dstack_kept.$$.at"
  if __dstack_py=$(find_python "$__dstack_version"); then
    __dstack_made=$(interpreter_id "$__dstack_py" 2>/dev/null)
    printf '%s\\n%s\\n%s\\n' "$__dstack_key" "$__dstack_py" "$__dstack_made" > "$__dstack_kept.$$" \\
&& unchanged_since "$__dstack_kept.$$.at" && mv "$__dstack_kept.$$" "$__dstack_kept"
    rm -f "$__dstack_kept.$$" "$__dstack_kept.$$.at"; return 0
  fi
  rm -f "$__dstack_kept.$$.at"; return 1
}
# venv_from_template PYTHON [STAT]: the job's venv, a copy of the template kept for PYTHON (made first where missing);
# STAT, what `stat` said of PYTHON when it was found, names the template while PYTHON's time is still its made-at's.
venv_from_template() {
  [ -n "$__dstack_cache" ] || return 1
  case $1 in /*) ;; *) return 1 ;; esac
  case $1 in */../*|*/./*|*/..|*/.) return 1 ;; esac
  case $1$JOB_DIR in *'|'*|*'&'*|*'\\'*|*'['*|*'*'*|*"$__dstack_nl"*) return 1 ;; esac
  __dstack_template="$__dstack_cache/venvs$1/$2"
  if [ -z "$2" ] || [ ! -f "$__dstack_template/made-at" ] || [ "$1" -nt "$__dstack_template/made-at" ] \\
|| [ "$1" -ot "$__dstack_template/made-at" ]; then
    __dstack_template="$__dstack_cache/venvs$1/$(interpreter_id "$1")" || return 1
  fi
  if [ ! -f "$__dstack_template/made-at" ]; then
    __dstack_new="$__dstack_cache/venv.$$"
    rm -rf "$__dstack_new"
    mkdir -p "$__dstack_new" "${__dstack_template%/*}" \\
&& printf '%s\\n' "$__dstack_new/venv" > "$__dstack_new/made-at" && touch -r "$1" "$__dstack_new/made-at" \\
&& "$1" -m venv --without-pip --system-site-packages "$__dstack_new/venv" >/dev/null 2>&1 \\
&& pip_shims "$__dstack_new/venv" && grep -qF "$__dstack_new/venv" "$__dstack_new/venv/bin/activate" \\
&& mv -T "$__dstack_new" "$__dstack_template" 2>/dev/null
    rm -rf "$__dstack_new"
  fi
  __dstack_from=; { IFS= read -r __dstack_from < "$__dstack_template/made-at"; } 2>/dev/null
  [ -n "$__dstack_from" ] || return 1
  if cp -a "$__dstack_template/venv" "$JOB_DIR/venv" && awk -v from="$__dstack_from" -v to="$JOB_DIR/venv" \\
-v made="$__dstack_template/venv" "$__dstack_swap" "$__dstack_template/venv/pyvenv.cfg" \\
"$__dstack_template"/venv/bin/activate* "$__dstack_template/venv/bin/pip" "$__dstack_template/venv/bin/pip3"; then
    return 0
  fi
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
  cached_python {wanted} || __dstack_py=""
  if [ -z "$__dstack_py" ]; then
  {get_uv}  if ! command -v uv >/dev/null 2>&1 || ! uv venv -q --seed --python {wanted or 3} "$JOB_DIR/venv" >/dev/null 2>&1; then
      echo "dstack: Python {wanted or 3} is not installed on this host {cannot}; present:$(present_pythons)" >&2
      exit 1
    fi
  elif command -v uv >/dev/null 2>&1 && uv venv -q --seed --python "$__dstack_py" "$JOB_DIR/venv" >/dev/null 2>&1; then :
  elif ! venv_from_template "$__dstack_py" "$__dstack_made"; then
    "$__dstack_py" -m venv --without-pip --system-site-packages "$JOB_DIR/venv"
    pip_shims "$JOB_DIR/venv"
  fi
fi
unset __dstack_swap __dstack_cache __dstack_nl __dstack_shim __dstack_version __dstack_key __dstack_ifs __dstack_dir __dstack_root \\
__dstack_path __dstack_made __dstack_file __dstack_line __dstack_kept __dstack_template __dstack_new __dstack_from __dstack_py
. "$JOB_DIR/venv/bin/activate"
"""
