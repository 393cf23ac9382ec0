"""``sanctum verify``: exit codes and the messages an auditor reads."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from shared.canonical import canonical_json
from shared.checkpoint import verifier_key
from shared.cli.main import main
from shared.commitment import TurnCommitment, answer_from_response
from shared.keys import private_pem, public_jwk, public_pem
from shared.ledger import make_log_entry
from shared.usage import sign_usage_record
from tests.shared.conftest import ORIGIN, T0, SampleLedger, fixed_key, make_record

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


# --- content commitments ------------------------------------------------------------------

NONCE = base64.urlsafe_b64encode(bytes(range(100, 132))).rstrip(b"=").decode()
REQUEST = {
    "model": "smollm2-135m",
    "messages": [{"role": "user", "content": "Quelle heure est-il ?"}],
    "sanctum": {"commitment_nonce": NONCE},
}
RESPONSE = {
    "object": "chat.completion",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Midi."},
            "finish_reason": "stop",
        }
    ],
}
STREAM = (
    'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    'data: {"choices":[{"index":0,"delta":{"content":"Mi"}}]}\n\n'
    'data: {"choices":[{"index":0,"delta":{"content":"di."}}]}\n\n'
    'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    "data: [DONE]\n\n"
)


@pytest.fixture
def committed(tmp_path: Path) -> dict[str, Path]:
    """A held record whose turn 1 commits to REQUEST and RESPONSE, in a bundle."""
    ledger = SampleLedger()
    ledger.add("acme")
    held = TurnCommitment(base64.urlsafe_b64decode(NONCE + "="), REQUEST).answered(
        1, answer_from_response(RESPONSE)
    )
    record = make_record(1, "acme", "node-a").model_copy(update={"commitments": (held,)})
    token = sign_usage_record(record, ledger.node_keys["node-a"])
    ledger.append(make_log_entry(token, ledger.node_public_keys, T0 + timedelta(minutes=5)))
    paths = {
        name: tmp_path / name
        for name in ("held.jws", "req.json", "ans.json", "stream.txt", "nonce", "node.pub")
    }
    paths["bundle"] = tmp_path / "bundle.json"
    paths["bundle"].write_bytes(ledger.bundle("acme"))
    paths["held.jws"].write_text(token + "\n")
    paths["req.json"].write_text(json.dumps(REQUEST, indent=2))
    paths["ans.json"].write_text(json.dumps(RESPONSE))
    paths["stream.txt"].write_text(STREAM)
    paths["nonce"].write_text(NONCE + "\n")
    paths["node.pub"].write_bytes(public_pem(ledger.node_keys["node-a"].public_key()))
    paths["node.jwk"] = tmp_path / "node.jwk"
    paths["node.jwk"].write_text(json.dumps(public_jwk(ledger.node_keys["node-a"].public_key())))
    return paths


def commitment_args(p: dict[str, Path], *more: str | Path, **change: str | Path) -> list[str]:
    args: dict[str, str | Path] = {
        "--commitment": p["held.jws"],
        "--request": p["req.json"],
        "--answer": p["ans.json"],
        "--nonce": NONCE,
        "--turn": "1",
        **change,
    }
    return ["verify", *[str(x) for kv in args.items() for x in kv], *map(str, more)]


def test_a_commitment_opens_with_the_transcript_and_the_nonce(
    committed: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for extra in (["--node-key", committed["node.pub"]], ["--node-key", committed["node.jwk"]]):
        assert main(commitment_args(committed, *extra)) == 0
        assert f"OK: turn 1 of session sess-1 (record {uuid.UUID(int=2, version=4)!s})" in (
            capsys.readouterr().out
        )
    # the streamed answer as saved, the nonce from a file, the record checked in a bundle
    args = commitment_args(committed, committed["bundle"], **{"--answer": committed["stream.txt"]})
    args[args.index(NONCE)] = f"@{committed['nonce']}"
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "held receipt" in out and "is the ledger's entry at log index 1" in out
    assert "OK: turn 1 of session sess-1" in out


def test_one_changed_byte_of_request_answer_or_nonce_exits_1(
    committed: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = ["--node-key", str(committed["node.pub"])]
    request = tmp_path / "req2.json"
    request.write_text(committed["req.json"].read_text().replace("heure", "heurE"))
    answer = tmp_path / "ans2.json"
    answer.write_text(committed["ans.json"].read_text().replace("Midi.", "Midi!"))
    nonce = NONCE[:-2] + ("A" if NONCE[-2] != "A" else "B") + NONCE[-1]
    for change, message in [
        ({"--request": request}, "turn 1: the request does not match the commitment"),
        ({"--answer": answer}, "turn 1: the answer does not match the commitment"),
        ({"--nonce": nonce}, "turn 1: the request does not match the commitment"),
        ({"--turn": "0"}, "sess-1 holds no commitment for turn 0 (it holds turns: 1)"),
    ]:
        assert main(commitment_args(committed, *node, **change)) == 1
        err = capsys.readouterr().err
        assert message in err and "FAIL  " in err and "FAILED: the commitment does not hold" in err
    other = tmp_path / "other.pub"
    other.write_bytes(public_pem(fixed_key(42).public_key()))
    assert main(commitment_args(committed, "--node-key", str(other))) == 1
    assert "signed by an untrusted key" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("--request", "--commitment needs --request and --answer"),
        ("--nonce", "--commitment and --statement need --nonce"),
    ],
)
def test_a_commitment_check_without_its_inputs_exits_2(
    committed: dict[str, Path], drop: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = commitment_args(committed, "--node-key", committed["node.pub"])
    at = args.index(drop)
    del args[at : at + 2]
    assert main(args) == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert main(commitment_args(committed)) == 2  # neither a node key nor a bundle
    assert "either --node-key or one BUNDLE" in capsys.readouterr().err
