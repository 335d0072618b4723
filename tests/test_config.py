"""Configuration: TOML plus flags; unknown keys and wrong types name the key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ringd.config import Config, load
from ringd.errors import ConfigError

SAMPLE = Path(__file__).parent.parent / "etc" / "ringd.toml"


def test_flags_override_file(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text('name = "a"\nlease_ttl = 4.0\netcd = ["http://127.0.0.1:1"]\n')
    config = load(path, {"name": "b", "lease_ttl": None, "etcd": []})
    assert (config.name, config.lease_ttl, config.etcd) == ("b", 4.0, ["http://127.0.0.1:1"])
    assert config.key_prefix == "/ringd/default/"
    assert not config.standalone


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("bogus = 1", "bogus"),
        ('lease_ttl = "ten"', "lease_ttl"),
        ("lease_ttl = 1", "lease_ttl"),
        ('name = "a b"', "name"),
        ('etcd = ["127.0.0.1:2379"]', "etcd"),
        ("fence_margin = 20.0", "fence_margin"),
        ('etcd_cert = "/x"', "etcd_cert"),
        ("name = ", "r.toml"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "r.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=re.escape(words)):
        load(path, {})


def test_sample_config_documents_every_key(tmp_path: Path) -> None:
    text = SAMPLE.read_text()
    for key in Config.__struct_fields__:
        assert re.search(rf"^# {key} = ", text, re.M), f"{key} missing from etc/ringd.toml"
    # Uncommented, the sample is a valid config.
    lines = [line[2:] for line in text.splitlines() if re.match(r"^# [a-z_]+ = ", line)]
    values = "\n".join(line for line in lines if not line.startswith("socket_group"))
    path = tmp_path / "sample.toml"
    path.write_text(values)
    assert load(path, {}).name == "node1"


def test_check_config_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("lease_ttl = -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "ringd", "check-config", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "lease_ttl" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "ringd", "check-config", str(SAMPLE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_check_config_reports_every_error_in_one_pass(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        'lease_ttl = "ten"\nname = "-node"\nfrobnicate = 1\nlabels = { zone = "eu west" }\n'
    )
    with pytest.raises(ConfigError) as exc:
        load(path, {})
    assert str(exc.value).splitlines() == [
        f"{path}: lease_ttl: must be a number, not a string",
        f"{path}: name: must be 1-128 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit",
        f"{path}: frobnicate: unknown key",
        f"{path}: labels.zone: must be 1-63 letters, digits, '.', '_' or '-'",
    ]


def test_checks_beyond_types_are_all_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('lease_ttl = 2.0\nfence_margin = 3.0\netcd = ["ftp://x"]\netcd_user = "u"\n')
    with pytest.raises(ConfigError) as exc:
        load(path, {})
    assert len(str(exc.value).splitlines()) == 3, exc.value


def test_one_etcd_endpoint_may_be_a_string(tmp_path: Path) -> None:
    path = tmp_path / "one.toml"
    path.write_text('etcd = "http://127.0.0.1:2379"\n')
    assert load(path, {}).etcd == ["http://127.0.0.1:2379"]
