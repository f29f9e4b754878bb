"""Hatchling build hook: builds libgraphalloc.so with cargo and ships it in the wheel.

The library is a plain C-ABI `cdylib` loaded through ctypes, not a Python
extension module, so the wheel is tagged `py3-none-<platform>`: one wheel
serves every Python 3 of the platform. maturin has no binding kind for such
a library (pyo3, pyo3-ffi, cffi, uniffi, bin), hence this hook.

Environment:
  GRAPHALLOC_WHEEL_LIB   ship this already built library instead of running cargo
  CARGO                  the cargo to run (default: cargo)
  CARGO_TARGET_DIR       honoured by cargo as usual
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

LIB_NAME = "libgraphalloc.so"


def _cargo_build(root: Path) -> Path:
    """`cargo build --release --lib`; returns the cdylib's path."""
    cmd = [
        os.environ.get("CARGO", "cargo"),
        "build",
        "--release",
        "--lib",
        "--message-format=json-render-diagnostics",
    ]
    proc = subprocess.run(cmd, cwd=root, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}); see above")
    for line in proc.stdout.splitlines():
        msg = json.loads(line) if line.startswith("{") else {}
        target = msg.get("target", {})
        if msg.get("reason") == "compiler-artifact" and "cdylib" in target.get("kind", []):
            for name in msg.get("filenames", []):
                if name.endswith(LIB_NAME):
                    return Path(name)
    raise RuntimeError(f"cargo built no {LIB_NAME}")


class CargoBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        given = os.environ.get("GRAPHALLOC_WHEEL_LIB")
        built = Path(given) if given else _cargo_build(root)
        if not built.is_file():
            raise RuntimeError(f"{built} does not exist")
        # Release builds carry debug info (profile.release debug = 1): ship a stripped copy.
        staging = Path(self.directory) / "graphalloc-lib"
        staging.mkdir(parents=True, exist_ok=True)
        shipped = staging / LIB_NAME
        shutil.copyfile(built, shipped)
        if shutil.which("strip"):
            subprocess.run(["strip", "--strip-debug", str(shipped)], check=False)
        build_data["force_include"][str(shipped)] = f"graphalloc/{LIB_NAME}"
        build_data["pure_python"] = False
        platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
        build_data["tag"] = f"py3-none-{platform}"
