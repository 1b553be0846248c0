#!/usr/bin/env bash
# Installs what Kiln needs on a fresh machine: the Debian packages in apt-packages.txt and a
# virtualenv with the pinned Python packages of pyproject.toml. Idempotent; `make` runs it only
# when pyproject.toml or the package list changed.
set -euo pipefail
venv="${1:-.venv}"
here="$(cd "$(dirname "$0")" && pwd)"

missing=()
while read -r pkg; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < "$here/apt-packages.txt"
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: these Debian packages are missing; install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

python="${PYTHON:-python3}"
if [[ ! -x "$venv/bin/python" ]]; then
  echo "bootstrap: creating $venv"
  "$python" -m venv "$venv"
fi
echo "bootstrap: installing Python packages (pinned in pyproject.toml)"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>/dev/null || true
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]"
