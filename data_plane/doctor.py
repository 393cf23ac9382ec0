"""``sanctum doctor`` (``python -m data_plane doctor``): a node checked as an operator would.

Run on the node, with its settings (``--env-file /etc/sanctum/data-plane.env``), as root
or as the node's user. It prints one line per finding, ``ok``, ``warn`` or ``FAIL``,
with the reason and, where something is to be done, what; it exits 1 if any line is a
FAIL. It never writes to the node: the applied config is read from a copy of the state
files, and no model is loaded.

The checks, in the order they print (docs/operations.md, "sanctum doctor"):

- **gpu**: NVIDIA device nodes, ``nvidia-smi`` if present; **offload**: whether this
  llama.cpp was built with GPU offload (``llama_supports_gpu_offload``);
- **config**: the last applied signed config, verified as the node verifies it at start
  (``data_plane.config_store``); **model**: each pinned file is there and its sha256 is
  the pin's (the node would refuse it); **gpu layers**: a pin (or the node's
  ``ENGINE__N_GPU_LAYERS``) that asks for GPU layers where there is no offload or no GPU;
- **memory**: RAM, and VRAM with a GPU, against the pinned files' sizes;
- **swap** and **core dumps**: client content lives in RAM only, so neither may copy it
  to disk (docs/security.md);
- **key file**: the node's private keys are 0600 or stricter and owned by its user;
- **listen** and **firewall**: no listener on a wildcard address; the node firewall's
  chain loaded where the backbone carries the client API;
- **clock**: synchronised (expiry of releases and keys is judged by this clock).

Each check is a function over a :class:`Host` (where ``/proc`` and ``/dev`` are, which
unit to ask systemd about), so a test can point it at a deliberately broken node. A
finding names files, settings, sizes and counts: nothing a client sent.
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from data_plane.config_store import ReleaseStore, TrustStore
from data_plane.model_files import model_file_path
from data_plane.settings import Settings
from shared.cli.doctor import SERVICE_USER, UNIT, add_arguments
from shared.config import ConfigBundle, ModelSpec, file_sha256, open_bundle
from shared.keys import KeyFileError
from shared.settings import settings_problems

Status = Literal["ok", "warn", "FAIL"]
FIREWALL_CHAIN = "SANCTUM-NODE"  # infra/scripts/node-firewall.sh
# Addresses that mean every interface (looked for, never bound).
WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})  # noqa: S104
GIB = 1 << 30
COMMAND_TIMEOUT = 10


@dataclass(frozen=True)
class Finding:
    """One line of the report."""

    status: Status
    check: str
    message: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.check}: {self.message}"
        return f"{text}; do: {self.fix}" if self.fix else text


def ok(check: str, message: str) -> Finding:
    return Finding("ok", check, message)


def warn(check: str, message: str, fix: str = "") -> Finding:
    return Finding("warn", check, message, fix)


def fail(check: str, message: str, fix: str) -> Finding:
    return Finding("FAIL", check, message, fix)


@dataclass
class Host:
    """Where the checks look: this machine by default; a test's tree or unit otherwise."""

    proc: Path = Path("/proc")
    dev: Path = Path("/dev")
    unit: str = UNIT
    user: str | None = None  # the node's user (default: sanctum-dp if it exists, else me)

    def service_user(self) -> tuple[str, int]:
        """The node's user and uid: ``user`` if named; else sanctum-dp when that user
        exists and the doctor runs as root (root checks on the node's behalf); else the
        user running the doctor (a development node runs as whoever started it)."""
        name = self.user
        if name is None and os.geteuid() == 0:
            try:
                pwd.getpwnam(SERVICE_USER)
                name = SERVICE_USER
            except KeyError:
                name = None
        if name is None:
            return pwd.getpwuid(os.geteuid()).pw_name, os.geteuid()
        return name, pwd.getpwnam(name).pw_uid


def _run(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    """A read-only tool's output, or None when it is missing or does not answer."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _size(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / (1 << 20):.0f} MiB"


# --- GPU ------------------------------------------------------------------------------


@dataclass
class Gpu:
    """What the GPU checks found: device nodes, and what nvidia-smi said of each GPU."""

    devices: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    vram_total: int | None = None  # bytes, all GPUs together
    vram_free: int | None = None

    @property
    def visible(self) -> bool:
        return bool(self.devices)


def find_gpu(host: Host) -> Gpu:
    gpu = Gpu(
        devices=sorted(
            p.name for p in host.dev.glob("nvidia[0-9]*") if p.name[len("nvidia") :].isdigit()
        )
    )
    if not gpu.visible:
        return gpu
    done = _run(
        [
            "nvidia-smi",
            "--query-gpu=name,memory.total,memory.free",
            "--format=csv,noheader,nounits",
        ]
    )
    if done is None or done.returncode != 0:
        return gpu
    total = free = 0
    for row in done.stdout.strip().splitlines():
        parts = [p.strip() for p in row.split(",")]
        if len(parts) != 3:
            continue
        gpu.names.append(parts[0])
        try:
            total += int(float(parts[1])) << 20  # MiB
            free += int(float(parts[2])) << 20
        except ValueError:
            continue
    if gpu.names:
        gpu.vram_total, gpu.vram_free = total, free
    return gpu


def check_gpu(gpu: Gpu) -> list[Finding]:
    if not gpu.visible:
        return [ok("gpu", "no GPU (no /dev/nvidia0..N): llama.cpp runs on the CPU")]
    devices = ", ".join(f"/dev/{d}" for d in gpu.devices)
    if gpu.names:
        vram = f", {_size(gpu.vram_total or 0)} VRAM" if gpu.vram_total else ""
        return [ok("gpu", f"{len(gpu.names)} GPU ({', '.join(gpu.names)}{vram}) at {devices}")]
    if shutil.which("nvidia-smi") is None:
        return [warn("gpu", f"{devices} present; nvidia-smi not installed, VRAM unknown")]
    return [
        fail(
            "gpu",
            f"{devices} present but nvidia-smi does not answer: the driver is not working",
            "check the NVIDIA driver (dmesg, nvidia-smi) before offloading layers",
        )
    ]


def gpu_offload_supported() -> bool | None:
    """Whether this llama.cpp was built with GPU offload; None if it can't be imported."""
    try:
        import llama_cpp
    except Exception:  # a broken build raises more than ImportError
        return None
    return bool(llama_cpp.llama_supports_gpu_offload())


def check_offload(offload: bool | None, gpu: Gpu) -> list[Finding]:
    rebuild = "SANCTUM_LLAMA_BACKEND=cuda scripts/setup.sh python (docs/engine.md)"
    if offload is None:
        return [
            fail(
                "offload",
                "llama-cpp-python can't be imported",
                "reinstall it: scripts/setup.sh python",
            )
        ]
    if offload:
        if gpu.visible:
            return [ok("offload", "llama.cpp is built with GPU offload")]
        return [warn("offload", "llama.cpp is built with GPU offload, but no GPU is visible")]
    if gpu.visible:
        return [warn("offload", "a GPU is visible but this llama.cpp is a CPU build", rebuild)]
    return [ok("offload", "llama.cpp is a CPU build (no GPU offload)")]


# --- the applied config and its models ----------------------------------------------------


@contextmanager
def _refusals() -> Iterator[list[str]]:
    """What the config store logs while it refuses a saved release (codes, no content)."""
    seen: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    store_logger = logging.getLogger("data_plane.config_store")
    handler, propagate = _Keep(level=logging.WARNING), store_logger.propagate
    store_logger.addHandler(handler)
    store_logger.propagate = False
    try:
        yield seen
    finally:
        store_logger.removeHandler(handler)
        store_logger.propagate = propagate


def load_applied(settings: Settings) -> tuple[ConfigBundle | None, list[Finding]]:
    """The node's last applied config, checked as the node checks it at start (signature,
    target, version floor, trust) but for the model files, which are checked one by one
    below. The store reads a copy of the state files: the doctor never writes the node's."""
    state = settings.data_dir / "state"
    saved = state / "config.jws"
    if not saved.exists():
        return None, [
            warn(
                "config",
                f"no applied config at {saved}: the node serves nothing until the control "
                "plane pushes one",
                "check the node in the control plane (Fleet > Nodes) if it should have one",
            )
        ]
    with tempfile.TemporaryDirectory(prefix="sanctum-doctor-") as tmp:
        copy = Path(tmp)
        for name in ("config.jws", "config.floor", "trust.json"):
            if (state / name).exists():
                shutil.copy(state / name, copy / name)
        try:
            trust = TrustStore(settings.trust_keys_path, copy / "trust.json")
        except KeyFileError as exc:
            return None, [fail("config", str(exc), "install the control plane's key set there")]
        store = ReleaseStore(copy, "config", settings.node_id, trust, open_bundle)
        with _refusals() as refusals:
            loaded = store.load_saved()
    if loaded is None:
        why = "; ".join(refusals) or "it does not verify"
        if trust.problem:
            why = f"{trust.problem}; {why}"
        return None, [
            fail(
                "config",
                f"the saved config {saved} would be refused at start ({why})",
                "roll the node out again from the control plane (POST /api/nodes/ID/rollout/)",
            )
        ]
    bundle = loaded[1]
    findings = [
        ok(
            "config",
            f"config version {bundle.version} for {bundle.node}, {len(bundle.models)} "
            f"model(s), {len(bundle.clients)} client(s)",
        )
    ]
    if store.usable() is None:
        findings.append(
            fail(
                "config",
                f"config version {bundle.version} expired at {bundle.expires_at.isoformat()}: "
                "the node refuses clients",
                "check that the control plane reaches this node (it re-releases before expiry)",
            )
        )
    return bundle, findings


def check_models(bundle: ConfigBundle, models_dir: Path) -> list[Finding]:
    """Each pinned file is where the node looks for it (the pin's path, or
    ``models_dir/<sha256>.gguf`` for a pin by source) and hashes to the pin. Nothing is
    fetched or removed here: a missing file of a pin by source is the node's to fetch."""
    findings = []
    for spec in bundle.models:
        path = model_file_path(spec, models_dir)
        if not os.path.isfile(path):
            if spec.source is not None:
                findings.append(
                    warn(
                        "model",
                        f"{spec.name}: not fetched yet ({path})",
                        "the node fetches it from the pin's source at its next config; "
                        "check its health's model_fetches",
                    )
                )
                continue
            findings.append(
                fail(
                    "model",
                    f"{spec.name}: no file at {path}",
                    "put the pinned GGUF file there, readable by the node's user",
                )
            )
            continue
        try:
            actual = file_sha256(path)
        except OSError as exc:
            findings.append(
                fail("model", f"{spec.name}: can't read {path}: {exc.strerror}", _READABLE)
            )
            continue
        if actual != spec.sha256:
            findings.append(
                fail(
                    "model",
                    f"model {spec.name}: file sha256 is {actual}, the pin says {spec.sha256}",
                    "replace the file with the pinned one (the node refuses this config)",
                )
            )
            continue
        findings.append(ok("model", f"{spec.name}: {path} matches its pin's sha256"))
    return findings


_READABLE = "make it readable by the node's user"


def _layers(n: int) -> str:
    return "all (-1)" if n == -1 else str(n)


def check_gpu_layers(
    models: tuple[ModelSpec, ...], settings: Settings, offload: bool | None, gpu: Gpu
) -> list[Finding]:
    node = settings.engine.n_gpu_layers
    asks = [(f"pin {m.name}", m.gpu_layers if m.gpu_layers is not None else node) for m in models]
    if not models:
        asks = [("SANCTUM_DP_ENGINE__N_GPU_LAYERS", node)]
    findings = []
    for who, n in asks:
        if n == 0:
            findings.append(ok("gpu layers", f"{who}: runs on the CPU (0 GPU layers)"))
        elif not offload:
            findings.append(
                fail(
                    "gpu layers",
                    f"{who} asks for {_layers(n)} GPU layers; this llama.cpp has no GPU offload",
                    "rebuild it: SANCTUM_LLAMA_BACKEND=cuda scripts/setup.sh python, or set "
                    "the pin's gpu_layers (or N_GPU_LAYERS) to 0",
                )
            )
        elif not gpu.visible:
            findings.append(
                fail(
                    "gpu layers",
                    f"{who} asks for {_layers(n)} GPU layers; no GPU is visible",
                    "check the driver and the unit's GPU drop-in "
                    "(infra/systemd/sanctum-data-plane.service.d/gpu.conf)",
                )
            )
        else:
            findings.append(ok("gpu layers", f"{who}: {_layers(n)} layers offloaded"))
    return findings


# --- memory ---------------------------------------------------------------------------------


def _meminfo(host: Host) -> dict[str, int]:
    values = {}
    for line in (host.proc / "meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name] = int(parts[0]) * 1024  # kB
    return values


def check_memory(
    host: Host, models: tuple[ModelSpec, ...], settings: Settings, gpu: Gpu
) -> list[Finding]:
    sizes = {}
    for spec in models:
        if spec.size is not None:  # a pin by source says its size
            sizes[spec.name] = spec.size
            continue
        try:
            sizes[spec.name] = os.path.getsize(model_file_path(spec, settings.models_path))
        except OSError:
            continue  # reported by the model check
    try:
        mem = _meminfo(host)
        total, available = mem["MemTotal"], mem["MemAvailable"]
    except (OSError, KeyError):
        return [warn("memory", f"can't read {host.proc / 'meminfo'}")]
    need = sum(sizes.values())
    findings = []
    if not models:
        return [
            ok("memory", f"{_size(available)} of {_size(total)} RAM available; no model pinned")
        ]
    what = f"{_size(available)} of {_size(total)} RAM available, the pinned models' files "
    if need > total:
        findings.append(
            fail(
                "memory",
                f"{what}take {_size(need)}: they can't all be loaded",
                "unpin a model from this node's pool, or add RAM",
            )
        )
    elif need > available:
        findings.append(
            warn(
                "memory",
                f"{what}take {_size(need)}: tight, unless the node is running with them "
                "loaded (they count as used then)",
            )
        )
    else:
        findings.append(ok("memory", f"{what}take {_size(need)}"))
    node = settings.engine.n_gpu_layers
    offloaded = sum(
        sizes.get(m.name, 0)
        for m in models
        if (m.gpu_layers if m.gpu_layers is not None else node) != 0
    )
    if offloaded and gpu.vram_total is not None:
        vram = f"{_size(gpu.vram_free or 0)} of {_size(gpu.vram_total)} VRAM free, the "
        vram += f"offloaded models' files take up to {_size(offloaded)}"
        if offloaded > gpu.vram_total:
            findings.append(
                fail("memory", f"{vram}: they can't all fit", "offload fewer layers (gpu_layers)")
            )
        elif offloaded > (gpu.vram_free or 0):
            findings.append(warn("memory", f"{vram}: tight, unless the node has them loaded"))
        else:
            findings.append(ok("memory", vram))
    return findings


# --- swap and core dumps -------------------------------------------------------------------


def check_swap(host: Host) -> list[Finding]:
    path = host.proc / "swaps"
    try:
        rows = [r.split() for r in path.read_text().splitlines()[1:] if r.strip()]
    except OSError:
        return [warn("swap", f"can't read {path}")]
    if not rows:
        return [ok("swap", "off")]
    findings = []
    for row in rows:
        device = row[0]
        if device.startswith(("/dev/zram",)):
            findings.append(ok("swap", f"{device} is compressed RAM, not a disk"))
        elif device.startswith(("/dev/mapper/", "/dev/dm-")):
            findings.append(
                warn(
                    "swap",
                    f"on, to {device}: client content may be swapped out; fine only if "
                    "that device is encrypted",
                    "check it is dm-crypt with a key that does not survive a reboot",
                )
            )
        else:
            findings.append(
                fail(
                    "swap",
                    f"on, to {device}: client content in RAM may be written to disk",
                    f"swapoff {device} and take it out of /etc/fstab (or encrypt it)",
                )
            )
    return findings


def _unit_core_limit(unit: str) -> str | None:
    """The unit's LimitCORE as systemd has it loaded, or None (no systemd, no such unit)."""
    done = _run(["systemctl", "show", unit, "-p", "LoadState", "-p", "LimitCORE"])
    if done is None or done.returncode != 0:
        return None
    props = dict(line.partition("=")[::2] for line in done.stdout.splitlines())
    return props.get("LimitCORE") if props.get("LoadState") == "loaded" else None


def check_core_dumps(host: Host) -> list[Finding]:
    unit_limit = _unit_core_limit(host.unit)
    if unit_limit is not None:
        limit, where = unit_limit, f"{host.unit}'s LimitCORE"
    else:
        soft = resource.getrlimit(resource.RLIMIT_CORE)[0]
        limit = "infinity" if soft == resource.RLIM_INFINITY else str(soft)
        where = f"this process's core limit ({host.unit} is not loaded here)"
    findings = []
    if limit != "0":
        findings.append(
            fail(
                "core dumps",
                f"{where} is {limit}: a crash could write client content to disk",
                "LimitCORE=0 in the unit (it is in infra/systemd/sanctum-data-plane.service), "
                "or ulimit -c 0 before starting the node",
            )
        )
    else:
        findings.append(ok("core dumps", f"{where} is 0"))
    pattern_path = host.proc / "sys" / "kernel" / "core_pattern"
    try:
        pattern = pattern_path.read_text().strip()
    except OSError:
        return [*findings, warn("core dumps", f"can't read {pattern_path}")]
    if pattern.startswith("|"):
        handler = pattern[1:].split()[0] if pattern[1:].split() else "?"
        if "systemd-coredump" in handler:
            findings.append(ok("core dumps", "piped to systemd-coredump, which keeps the limit"))
        else:
            findings.append(
                warn(
                    "core dumps",
                    f"the kernel pipes core dumps to {handler}, which may ignore a 0 limit",
                    "check that handler keeps nothing of the node, or set kernel.core_pattern "
                    "to a file pattern",
                )
            )
    return findings


# --- keys -------------------------------------------------------------------------------


def key_files(settings: Settings) -> list[tuple[str, Path, bool]]:
    """(what, path, required) for each private key the node holds."""
    keys = [("node signing key", settings.node_private_key or settings.keys_dir / "node.key", True)]
    if settings.backbone.private_key is not None:
        keys.append(("backbone WireGuard key", settings.backbone.private_key, True))
    keys.append(("management TLS key", settings.tls_path / "management.key", False))
    return keys


def check_keys(host: Host, settings: Settings) -> list[Finding]:
    user, uid = host.service_user()
    findings = []
    for what, path, required in key_files(settings):
        try:
            st = path.stat()
        except FileNotFoundError:
            if not required:
                findings.append(ok("key file", f"{what}: none at {path} (not enrolled yet)"))
            elif settings.environment == "development" and settings.node_private_key is None:
                findings.append(ok("key file", f"{what}: made at {path} on first start"))
            else:
                findings.append(
                    fail(
                        "key file",
                        f"{what}: no file at {path}",
                        "sanctum keys generate --role node --out DIR, as the node's user"
                        if what.startswith("node")
                        else f"put the key at {path}, mode 0600, owned by {user}",
                    )
                )
            continue
        except OSError as exc:
            findings.append(
                fail("key file", f"{what}: {path} unreadable ({type(exc).__name__})", "run as root")
            )
            continue
        mode = stat.S_IMODE(st.st_mode)
        problems, fixes = [], []
        if mode & 0o077:
            problems.append(f"mode {mode:04o} lets others than its owner at it")
            fixes.append(f"chmod 600 {path} and treat the key as exposed (rotate it)")
        if st.st_uid != uid:
            try:
                owner = pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                owner = str(st.st_uid)
            problems.append(f"owned by {owner}, not the node's user {user}")
            fixes.append(f"chown {user}: {path}")
        if problems:
            findings.append(
                fail("key file", f"{what} {path}: {'; '.join(problems)}", "; ".join(fixes))
            )
        else:
            findings.append(ok("key file", f"{what} {path}: mode {mode:04o}, owned by {user}"))
    return findings


# --- listeners, firewall, clock ---------------------------------------------------------------


def check_listeners(settings: Settings) -> list[Finding]:
    listen = settings.listen
    findings = []
    for what, host, port, where in (
        ("client API", listen.api_host, listen.api_port, "the node's backbone address"),
        (
            "management listener",
            listen.management_host,
            listen.management_port,
            "the node's address on the management link",
        ),
    ):
        if host.strip() in WILDCARDS:
            findings.append(
                fail(
                    "listen",
                    f"the {what} binds every interface ({host or '(empty)'}:{port})",
                    f"bind it to {where} (docs/network.md)",
                )
            )
        else:
            findings.append(ok("listen", f"the {what} binds {host}:{port}"))
    return findings


def check_firewall(settings: Settings) -> list[Finding]:
    """The node firewall matters where the client API is off loopback (on the backbone)."""
    if settings.backbone.private_key is None:
        return [ok("firewall", "no backbone here: the client API is on loopback, no rules needed")]
    fix = "systemctl enable --now sanctum-node-firewall (infra/scripts/node-firewall.sh)"
    if os.geteuid() != 0:
        return [warn("firewall", "can't tell: reading iptables needs root", "run as root")]
    done = _run(["iptables", "-w", "-S", FIREWALL_CHAIN])
    if done is None:
        return [warn("firewall", "can't tell: iptables is not installed", fix)]
    port = f"--dport {settings.listen.api_port} "
    if done.returncode != 0 or port not in done.stdout:
        return [
            fail(
                "firewall",
                f"chain {FIREWALL_CHAIN} with the client API's port is not loaded",
                fix,
            )
        ]
    return [ok("firewall", f"chain {FIREWALL_CHAIN} loaded (tcp/{settings.listen.api_port})")]


def check_clock() -> list[Finding]:
    done = _run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
    if done is None or done.returncode != 0 or done.stdout.strip() not in ("yes", "no"):
        return [
            warn(
                "clock",
                "can't tell whether the clock is synchronised (timedatectl does not answer)",
                "check NTP (chrony or systemd-timesyncd) by hand",
            )
        ]
    if done.stdout.strip() == "yes":
        return [ok("clock", "synchronised (NTP)")]
    return [
        fail(
            "clock",
            "not synchronised: release expiry and key retirement are judged by this clock",
            "enable NTP: timedatectl set-ntp true (or chrony)",
        )
    ]


# --- the report -------------------------------------------------------------------------------


def diagnose(
    settings: Settings, host: Host, offload: Callable[[], bool | None] = gpu_offload_supported
) -> list[Finding]:
    """Every finding, in the order they print."""
    gpu = find_gpu(host)
    can_offload = offload()
    findings = [*check_gpu(gpu), *check_offload(can_offload, gpu)]
    bundle, config = load_applied(settings)
    findings += config
    models = bundle.models if bundle is not None else ()
    if bundle is not None:
        findings += check_models(bundle, settings.models_path)
    findings += check_gpu_layers(models, settings, can_offload, gpu)
    findings += check_memory(host, models, settings, gpu)
    findings += check_swap(host)
    findings += check_core_dumps(host)
    findings += check_keys(host, settings)
    findings += check_listeners(settings)
    findings += check_firewall(settings)
    findings += check_clock()
    return findings


def read_env_file(path: Path) -> dict[str, str]:
    """The ``SANCTUM_DP_*`` lines of a systemd EnvironmentFile (comments, blanks and
    every other name skipped: the doctor runs iptables, systemctl and nvidia-smi, maybe
    as root, and a PATH or LD_PRELOAD in that file must not reach them)."""
    values = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if key.strip().startswith("SANCTUM_DP_"):
            values[key.strip()] = value
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sanctum doctor", description="Check this data-plane node as an operator would."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.env_file is not None:
        try:
            os.environ.update(read_env_file(args.env_file))
        except OSError as exc:
            print(f"FAIL  settings: can't read {args.env_file} ({type(exc).__name__})")
            return 1
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"FAIL  settings: {settings_problems(exc)}; do: fix the node's env file")
        return 1
    host = Host(proc=args.proc, dev=args.dev, unit=args.unit, user=args.user)
    try:
        host.service_user()
    except KeyError:
        print(f"FAIL  settings: no user named {args.user} on this machine")
        return 1
    findings = diagnose(settings, host)
    for finding in findings:
        print(finding.line(), flush=True)
    failed = sum(f.status == "FAIL" for f in findings)
    warned = sum(f.status == "warn" for f in findings)
    print(f"{failed} failed, {warned} warning(s), {len(findings) - failed - warned} ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
