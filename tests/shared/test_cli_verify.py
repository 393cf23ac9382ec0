"""``sanctum verify``: exit codes and the messages an auditor reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.canonical import canonical_json
from shared.checkpoint import verifier_key
from shared.cli.main import main
from shared.keys import private_pem, public_jwk, public_pem
from tests.shared.conftest import ORIGIN, SampleLedger, fixed_key

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def files(ledger: SampleLedger, tmp_path: Path) -> dict[str, Path]:
    """The files an auditor and a client would have saved."""
    paths = {
        "bundle": tmp_path / "acme-bundle.json",
        "old_head": tmp_path / "head-3.txt",
        "consistency": tmp_path / "consistency.json",
        "held": tmp_path / "held.jws",
        "log_pem": tmp_path / "log.pub",
        "log_jwk": tmp_path / "log.jwk",
        "log_vkey": tmp_path / "log.vkey",
        "log_private": tmp_path / "log.key",
        "other_pem": tmp_path / "other.pub",
    }
    paths["bundle"].write_bytes(ledger.bundle("acme"))
    paths["old_head"].write_text(ledger.checkpoint(3))
    paths["consistency"].write_bytes(ledger.consistency(3))
    paths["held"].write_text(ledger.entries[2].node_jws + "\n")
    public = ledger.log_key.public_key()
    paths["log_pem"].write_bytes(public_pem(public))
    paths["log_jwk"].write_text(json.dumps(public_jwk(public)))
    paths["log_vkey"].write_text(verifier_key(ORIGIN, public) + "\n")
    paths["log_private"].write_bytes(private_pem(ledger.log_key))
    paths["other_pem"].write_bytes(public_pem(fixed_key(42).public_key()))
    return paths


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "verify", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_good_bundle_exits_0(files: dict[str, Path]) -> None:
    result = run_cli(files["bundle"], "--log-key", files["log_pem"])
    assert result.returncode == 0, result.stderr
    assert f"OK: {files['bundle']}: 3 receipt(s) of client acme" in result.stdout
    assert f"in log {ORIGIN} at tree size 5" in result.stdout
    assert "ok    node signatures: 3 of 3" in result.stdout
    assert "ok    inclusion proofs against the checkpoint: 3 of 3" in result.stdout
    assert result.stderr == ""


def test_a_tampered_bundle_exits_1_naming_the_receipt_and_check(
    files: dict[str, Path], tmp_path: Path
) -> None:
    bundle = json.loads(files["bundle"].read_bytes())
    proof = bundle["receipts"][1]["inclusion_proof"]
    assert len(proof) == 3
    proof.reverse()
    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(canonical_json(bundle) + b"\n")
    result = run_cli(tampered)
    assert result.returncode == 1
    assert "FAIL  receipt #1, log index 2: inclusion proof: " in result.stderr
    assert "FAILED: 1 check did not hold" in result.stderr
    assert "OK:" not in result.stdout


def test_one_changed_byte_exits_1(files: dict[str, Path], tmp_path: Path) -> None:
    data = bytearray(files["bundle"].read_bytes())
    data[len(data) // 2] ^= 0x01
    changed = tmp_path / "changed.json"
    changed.write_bytes(bytes(data))
    assert main(["verify", str(changed)]) == 1


def test_the_log_key_may_be_pinned_as_pem_jwk_vkey_but_never_a_private_key(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(files["bundle"])]) == 0
    assert "note  log key taken from the bundle itself" in capsys.readouterr().out
    for key in ["log_pem", "log_jwk", "log_vkey"]:
        assert main(["verify", str(files["bundle"]), "--log-key", str(files[key])]) == 0, key
        assert "note  log key" not in capsys.readouterr().out
    assert main(["verify", str(files["bundle"]), "--log-key", str(files["log_private"])]) == 2
    assert "holds a private key" in capsys.readouterr().err


def test_a_wrong_log_key_exits_1(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(files["bundle"]), "--log-key", str(files["other_pem"])]) == 1
    err = capsys.readouterr().err
    assert "FAIL  log key: the bundle's log key" in err
    assert "FAIL  manifest signature: envelope signed by an untrusted key" in err


def test_a_dropped_receipt_exits_1(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = json.loads(files["bundle"].read_bytes())
    del bundle["receipts"][0]
    dropped = tmp_path / "dropped.json"
    dropped.write_bytes(canonical_json(bundle) + b"\n")
    assert main(["verify", str(dropped)]) == 1
    assert "FAIL  log index 0: receipt list: record " in capsys.readouterr().err


def test_a_held_receipt(files: dict[str, Path], ledger: SampleLedger, tmp_path: Path) -> None:
    result = run_cli("--receipt", files["held"], files["bundle"])
    assert result.returncode == 0, result.stderr
    assert f"OK: held receipt {files['held']} is in the ledger at log index 2" in result.stdout
    other = tmp_path / "other-client.jws"
    other.write_text(ledger.entries[1].node_jws)
    result = run_cli("--receipt", other, files["bundle"])
    assert result.returncode == 1
    assert "is not in the bundle: it is for client 'globex', the bundle for 'acme'" in (
        result.stderr
    )


def test_consistency_of_two_saved_tree_heads(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["verify", "--consistency", str(files["old_head"]), str(files["consistency"])]
    assert main([*args, "--log-key", str(files["log_pem"])]) == 0
    assert f"OK: log {ORIGIN} grew from 3 to 5 consistently" in capsys.readouterr().out
    # A bundle saved earlier serves as OLD too.
    assert main(["verify", "--consistency", str(files["bundle"]), str(files["consistency"])]) == 1
    assert "NEW proves growth from size 3, but OLD has size 5" in capsys.readouterr().err


def test_consistency_with_a_rewritten_log_exits_1(
    files: dict[str, Path], ledger: SampleLedger, tmp_path: Path
) -> None:
    rewritten = SampleLedger()
    for i in [1, 0, 2, 3, 4]:
        rewritten.append(ledger.entries[i])
    new = tmp_path / "rewritten.json"
    new.write_bytes(rewritten.consistency(3))
    result = run_cli("--consistency", files["old_head"], new, "--log-key", files["log_pem"])
    assert result.returncode == 1
    assert "FAIL  consistency proof: consistency proof does not lead to the old root (size 3)" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.json"], "error: can't read bundle missing.json"),
        (["a.json", "b.json"], "error: sanctum verify takes BUNDLE"),
        (["--consistency", "a.json"], "error: sanctum verify takes --consistency OLD NEW"),
        (["--log-key", "missing.pub", "a.json"], "error: can't read log key missing.pub"),
    ],
)
def test_usage_errors_exit_2(
    args: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["verify", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_log_key_file_that_is_not_a_key_exits_2(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.key"
    junk.write_text("hello")
    assert main(["verify", str(files["bundle"]), "--log-key", str(junk)]) == 2
    assert f"error: log key {junk} is not an Ed25519 public key" in capsys.readouterr().err
