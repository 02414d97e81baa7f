#!/usr/bin/env bash
# Packaging check: `python -m build` gives a wheel and an sdist, `twine check` accepts both, and the wheel
# installs into a fresh virtual environment (no system site-packages) where the `metalearn` command runs the
# demo's smoke mode from outside the source tree.
#
#   bash .ci/package_check.sh            # uses .venv/bin/python (build and twine come with the [dev] extra)
#   PY=python3 bash .ci/package_check.sh
#
# Needs the package index (for the isolated build environment and the fresh venv's dependencies); torch is
# installed pinned (torch==2.13.0), as in the Makefile.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PY:-$ROOT/.venv/bin/python}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/metalearn-package.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
say() { printf 'package_check: %s\n' "$*"; }

say "building wheel and sdist into $WORK/dist"
"$PY" -m build --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log"; exit 1; }
shopt -s nullglob
wheels=("$WORK"/dist/*.whl)
sdists=("$WORK"/dist/*.tar.gz)
if [ "${#wheels[@]}" -ne 1 ] || [ "${#sdists[@]}" -ne 1 ]; then
    say "expected one wheel and one sdist, got: $(ls "$WORK/dist")"; exit 1
fi
say "built $(basename "${wheels[0]}") and $(basename "${sdists[0]}")"

"$PY" -m twine check --strict "$WORK"/dist/*

# the typing marker travels in both distributions
"$PY" - "${wheels[0]}" "${sdists[0]}" <<'EOF'
import sys, tarfile, zipfile
wheel, sdist = sys.argv[1:]
names = zipfile.ZipFile(wheel).namelist()
assert "metalearn/py.typed" in names, f"{wheel}: no metalearn/py.typed"
assert "metalearn/cli.py" in names, f"{wheel}: no metalearn/cli.py"
assert "metalearn/kernels/bn_pool_relu.cpp" in names, f"{wheel}: no metalearn/kernels/bn_pool_relu.cpp"
with tarfile.open(sdist) as tf:
    assert any(n.endswith("/metalearn/py.typed") for n in tf.getnames()), f"{sdist}: no metalearn/py.typed"
    assert any(n.endswith("/metalearn/kernels/bn_pool_relu.cpp") for n in tf.getnames()), f"{sdist}: no kernel source"
EOF

say "installing the wheel into a fresh venv ($TORCH_SPEC first)"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
pipi() { "$VPY" -m pip install --quiet --disable-pip-version-check "$@" >>"$WORK/pip.log" 2>&1 \
             || { tail -n 40 "$WORK/pip.log"; exit 1; }; }
pipi "$TORCH_SPEC"
pipi "${wheels[0]}"

# run from an empty folder: the installed package, not the source tree, must answer
mkdir "$WORK/run"
cd "$WORK/run"
"$VPY" - <<'EOF'
import importlib.metadata as md
import pathlib
import metalearn
assert "site-packages" in metalearn.__file__, metalearn.__file__
assert (pathlib.Path(metalearn.__file__).parent / "py.typed").is_file()
assert md.version("torch-metalearn") == metalearn.__version__
missing = [n for n in metalearn.__all__ if not hasattr(metalearn, n)]
assert not missing, f"metalearn.__all__ names missing from the package: {missing}"
print(f"package_check: import metalearn {metalearn.__version__} from {metalearn.__file__}")
EOF
ML="$WORK/venv/bin/metalearn"
"$ML" --help >/dev/null
if "$ML" demo --help | grep -q -- "--smoke"; then
    say "metalearn demo --smoke"
    timeout 600 "$ML" demo --smoke --quiet --out "$WORK/run/demo"
else
    say "this version's demo has no --smoke mode; checked metalearn --help and metalearn demo --help only"
fi
"$ML" data check --root "$WORK/run" >/dev/null || { say "metalearn data check failed"; exit 1; }
say "ok"
