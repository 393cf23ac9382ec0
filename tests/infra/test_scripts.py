"""infra/: the scripts pass shellcheck and do what they say; the units are valid systemd.

The firewall script is also exercised end to end (tests/e2e/test_wireguard.py); here it
runs in a namespace of its own to show it is atomic and idempotent.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.netns import lab

INFRA = REPO / "infra"
SCRIPTS = sorted((INFRA / "scripts").glob("*.sh"))
IN_CI = bool(os.environ.get("CI"))


def needs(tool: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        shutil.which(tool) is None and not IN_CI, reason=f"{tool} not installed"
    )


@needs("shellcheck")
def test_scripts_pass_shellcheck() -> None:
    assert SCRIPTS
    result = subprocess.run(
        ["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_scripts_are_executable_and_strict() -> None:
    for script in SCRIPTS:
        assert os.access(script, os.X_OK), script
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), script
        assert "set -euo pipefail" in text, script


def test_infra_holds_no_secrets() -> None:
    key_line = re.compile(r"(PrivateKey|PresharedKey)\s*=\s*[A-Za-z0-9+/]{42,43}=")
    for path in INFRA.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "PRIVATE KEY-----" not in text, path
            assert not key_line.search(text), path


def test_rotate_logs_keeps_the_newest_generations(tmp_path: Path) -> None:
    logs = tmp_path / "log"
    logs.mkdir()
    script = INFRA / "scripts" / "rotate-logs.sh"
    env = {**os.environ, "SANCTUM_GW_NGINX__PID_FILE": str(tmp_path / "none.pid")}
    for generation in range(5):
        (logs / "access.log").write_text(f"generation {generation}\n")
        subprocess.run([str(script), str(logs), "3"], env=env, check=True, capture_output=True)
    names = sorted(p.name for p in logs.iterdir())
    assert names == ["access.log", "access.log.1", "access.log.2.gz", "access.log.3.gz"]
    assert (logs / "access.log.1").read_text() == "generation 4\n"
    assert gzip.decompress((logs / "access.log.3.gz").read_bytes()) == b"generation 2\n"
    bad = subprocess.run([str(script), str(logs), "0"], env=env, capture_output=True, check=False)
    assert bad.returncode == 2


SYSTEMD = INFRA / "systemd"
GPU_DROP_IN = SYSTEMD / "sanctum-data-plane.service.d" / "gpu.conf"


@needs("systemd-analyze")
def test_systemd_units_verify(tmp_path: Path) -> None:
    units = sorted(p for p in SYSTEMD.iterdir() if p.is_file())
    names = {u.name for u in units}
    for wanted in (
        "sanctum-data-plane.service",
        "sanctum-cp-web.service",
        "sanctum-cp-worker.service",
        "sanctum-cp-beat.service",
        "sanctum-gateway-agent.service",
    ):
        assert wanted in names
    venv = str(Path(sys.executable).parent.parent)
    for unit in units:
        text = unit.read_text().replace("/opt/sanctum/.venv", venv)
        (tmp_path / unit.name).write_text(text.replace("/opt/sanctum", str(REPO)))
    # Drop-ins go where systemd looks for them: UNIT.d/ beside the unit, which verify
    # reads with the unit (a directive it does not know is reported against the file).
    drop_ins = sorted(SYSTEMD.glob("*.d/*.conf"))
    assert GPU_DROP_IN in drop_ins
    for drop_in in drop_ins:
        assert (SYSTEMD / drop_in.parent.name.removesuffix(".d")).is_file(), drop_in
        (tmp_path / drop_in.parent.name).mkdir(exist_ok=True)
        shutil.copy(drop_in, tmp_path / drop_in.parent.name / drop_in.name)
    copies = sorted(str(p) for p in tmp_path.iterdir() if p.is_file())
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *copies],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert ".conf:" not in result.stderr, result.stderr


def _directives(path: Path) -> list[tuple[str, str]]:
    """The (key, value) lines of a unit file's [Service] section, in order."""
    found: list[tuple[str, str]] = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            found.append((key.strip(), value.strip()))
    return found


def test_the_gpu_drop_in_opens_the_nvidia_devices_and_nothing_else() -> None:
    unit = dict(_directives(SYSTEMD / "sanctum-data-plane.service"))
    gpu = _directives(GPU_DROP_IN)
    merged = {**unit, **dict(gpu)}
    # The GPU is reachable: the host's /dev, the NVIDIA device groups allowed.
    assert merged["PrivateDevices"] == "false"
    allowed = [value for key, value in gpu if key == "DeviceAllow"]
    assert "char-nvidia-uvm rw" in allowed
    assert {"char-nvidia-frontend rw", "char-nvidia rw"} <= set(allowed)
    assert all(a.startswith(("char-nvidia", "/dev/nvidia")) for a in allowed), allowed
    # Everything else stays closed: the device cgroup admits pseudo devices and those
    # only; what PrivateDevices=true did besides (raw I/O calls, CAP_MKNOD and
    # CAP_SYS_RAWIO) is still done.
    assert merged["DevicePolicy"] == "closed"
    assert merged["SystemCallFilter"] == "~@raw-io"
    assert merged["CapabilityBoundingSet"] == "CAP_NET_ADMIN"
    # The drop-in changes the device settings and no other line of the unit.
    assert {key for key, _ in gpu} == {
        "PrivateDevices",
        "DevicePolicy",
        "DeviceAllow",
        "SystemCallFilter",
    }
    for key, value in {
        "MemorySwapMax": "0",
        "LimitCORE": "0",
        "NoNewPrivileges": "true",
        "ProtectSystem": "strict",
        "ProtectKernelModules": "true",
        "User": "sanctum-dp",
    }.items():
        assert merged[key] == value, key


@pytest.mark.skipif(os.geteuid() != 0 and not IN_CI, reason="needs root (a network namespace)")
def test_firewall_script_is_idempotent_and_validates(tmp_path: Path) -> None:
    script = str(INFRA / "scripts" / "gateway-firewall.sh")
    env = {
        **os.environ,
        "SANCTUM_GW_FIREWALL__PUBLIC_INTERFACE": "eth0",
        "SANCTUM_GW_WG_INTERFACE": "wg0",
        "SANCTUM_GW_WG_PORT": "51999",
    }
    with lab() as the_lab:
        ns = the_lab.namespace("fw")
        for _ in range(2):
            ns.sh(script, "apply", env=env)
        rules = ns.sh("iptables", "-S").stdout
        assert rules.count("-A INPUT -j SANCTUM-INPUT") == 1
        assert "-A SANCTUM-PUBLIC -p udp -m udp --dport 51999 -j ACCEPT" in rules
        assert rules.rstrip().endswith("-A SANCTUM-TUNNEL -j DROP")
        # A port change replaces the rule; nothing else is left behind.
        ns.sh(script, "apply", env={**env, "SANCTUM_GW_WG_PORT": "51820"})
        rules = ns.sh("iptables", "-S").stdout
        assert "51999" not in rules and "--dport 51820 -j ACCEPT" in rules
        bad = ns.sh(script, "apply", env={**env, "SANCTUM_GW_WG_PORT": "70000"}, check=False)
        assert bad.returncode == 2 and "not a port" in bad.stderr
        ns.sh(script, "remove", env=env)
        assert "SANCTUM" not in ns.sh("iptables", "-S").stdout


def _path_without(tmp_path: Path, missing: str) -> str:
    """A PATH of the tools the firewall script uses, all but ``missing``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "cat", "iptables", "iptables-restore", "ip6tables", "ip6tables-restore"):
        if tool == missing:
            continue
        found = shutil.which(tool)
        assert found, f"{tool} not installed"
        # The link keeps the tool's own name: iptables' multi-call binary goes by argv[0].
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


@pytest.mark.skipif(os.geteuid() != 0 and not IN_CI, reason="needs root (a network namespace)")
def test_firewall_fails_closed_when_it_cannot_filter_ipv6(tmp_path: Path) -> None:
    # The script runs with a PATH that lacks ip6tables-restore (`ip netns exec` itself
    # needs the usual one).
    path = _path_without(tmp_path, "ip6tables-restore")
    script = ("env", f"PATH={path}", str(INFRA / "scripts" / "gateway-firewall.sh"))
    env = {
        **os.environ,
        "SANCTUM_GW_FIREWALL__PUBLIC_INTERFACE": "eth0",
        "SANCTUM_GW_WG_INTERFACE": "wg0",
        "SANCTUM_GW_WG_PORT": "51999",
    }
    with lab() as the_lab:
        ns = the_lab.namespace("fw6")
        assert ns.sh("cat", "/proc/net/if_inet6").stdout.strip(), "no IPv6 in the namespace"
        failed = ns.sh(*script, "apply", env=env, check=False)
        assert failed.returncode == 1
        assert "applied" not in failed.stderr.replace("NOT applied", "")
        assert "has IPv6 but ip6tables-restore is not installed" in failed.stderr
        # IPv4 was closed all the same; IPv6 has none of our rules.
        assert "-A SANCTUM-PUBLIC -p udp -m udp --dport 51999 -j ACCEPT" in (
            ns.sh("iptables", "-S").stdout
        )
        assert "SANCTUM" not in ns.sh("ip6tables", "-S").stdout

        # The same namespace with IPv6 switched off, for new interfaces too: IPv4 alone.
        for scope in ("all", "default"):
            ns.sh("sysctl", "-qw", f"net.ipv6.conf.{scope}.disable_ipv6=1")
        assert not ns.sh("cat", "/proc/net/if_inet6").stdout.strip()
        done = ns.sh(*script, "apply", env=env, check=False)
        assert done.returncode == 0, done.stderr
        assert "gateway-firewall: applied" in done.stderr
        assert "IPv6: absent on this host" in done.stderr

        # Switched on again for new interfaces only: that is IPv6 again, and a failure.
        ns.sh("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=0")
        again = ns.sh(*script, "apply", env=env, check=False)
        assert again.returncode == 1 and "NOT applied" in again.stderr


@pytest.mark.skipif(os.geteuid() != 0 and not IN_CI, reason="needs root (a network namespace)")
def test_firewall_loads_ipv6_rules_where_the_host_has_ipv6() -> None:
    script = str(INFRA / "scripts" / "gateway-firewall.sh")
    env = {**os.environ, "SANCTUM_GW_WG_PORT": "51999"}
    with lab() as the_lab:
        ns = the_lab.namespace("fw6ok")
        done = ns.sh(script, "apply", env=env)
        assert "IPv6 too" in done.stderr
        rules = ns.sh("ip6tables", "-S").stdout
        assert "-A SANCTUM-PUBLIC -p udp -m udp --dport 51999 -j ACCEPT" in rules
        assert rules.count("-A INPUT -j SANCTUM-INPUT") == 1


# --- gateway-provision.sh's checks before the firewall goes on (lib/gateway-preflight.sh) ---
# They run here in the test's own network namespace: `lo` stands in for the public
# interface, and SSH_CONNECTION names an address on it as sshd would.

PREFLIGHT = INFRA / "scripts" / "lib" / "gateway-preflight.sh"


def _preflight(call: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "SSH_CONNECTION"}
    return subprocess.run(
        ["bash", "-c", f'set -euo pipefail; . "$0"; {call}', str(PREFLIGHT)],
        env={**base, **env},
        stdin=subprocess.DEVNULL,  # not a terminal: nobody there to say yes
        capture_output=True,
        text=True,
        check=False,
    )


def test_provisioning_refuses_a_public_interface_that_does_not_exist() -> None:
    check = "require_interface {} SANCTUM_GW_FIREWALL__PUBLIC_INTERFACE /etc/sanctum/gateway.env"
    missing = _preflight(check.format("nosuch0"))
    assert missing.returncode == 1
    assert (
        "the public interface 'nosuch0' (SANCTUM_GW_FIREWALL__PUBLIC_INTERFACE in "
        "/etc/sanctum/gateway.env) does not exist on this machine" in missing.stderr
    )
    assert re.search(r"whose interfaces are: [^.]*\blo\b", missing.stderr)
    assert "the firewall was left as it was" in missing.stderr
    assert _preflight(check.format("lo")).returncode == 0


def test_provisioning_over_ssh_on_the_public_interface_asks_before_the_firewall() -> None:
    on_lo = "192.0.2.9 40022 127.0.0.1 22"
    refused = _preflight("ssh_stays_open 0 lo 51820 wg0 ''", SSH_CONNECTION=on_lo)
    assert refused.returncode == 1
    assert "WARNING: this SSH session came in on lo, the public interface" in refused.stderr
    assert "takes only UDP 51820" in refused.stderr
    assert "the firewall was not turned on" in refused.stderr

    told = _preflight("ssh_stays_open 1 lo 51820 wg0 ''", SSH_CONNECTION=on_lo)
    assert told.returncode == 0
    assert "WARNING" in told.stderr and "going on (--yes)" in told.stderr

    # The tunnel interface is closed to SSH as well.
    tunnel = _preflight("ssh_stays_open 0 eth9 51820 lo ''", SSH_CONNECTION=on_lo)
    assert tunnel.returncode == 1 and "on lo, which the firewall closes to SSH" in tunnel.stderr


def test_provisioning_over_the_management_link_or_locally_goes_ahead() -> None:
    # SSH on an interface the firewall leaves alone, and no SSH at all: not a word.
    for env in ({"SSH_CONNECTION": "192.0.2.9 40022 127.0.0.1 22"}, {}):
        quiet = _preflight("ssh_stays_open 0 eth9 51820 wg0 ''", **env)
        assert (quiet.returncode, quiet.stderr) == (0, "")


def test_provisioning_over_ssh_it_cannot_place_asks_too() -> None:
    unknown = _preflight(
        "ssh_stays_open 0 eth9 51820 wg0 ''", SSH_CONNECTION="192.0.2.9 40022 203.0.113.77 22"
    )
    assert unknown.returncode == 1
    assert "on an interface this script cannot identify" in unknown.stderr
