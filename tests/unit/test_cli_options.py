"""``-o`` mount options and the mount(8) helper's argv (openaifs/fstab.py), without mounting anything.

The argv shapes are the ones verified on Debian 12 (docs/fstab-and-systemd.md):
``/sbin/mount.openaifs SPEC DIR [-sfnv] -o OPTS [-t TYPE]`` and, via mount.fuse3,
``openaifs SPEC DIR -o OPTS``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from openaifs.cli import SUBCOMMANDS
from openaifs.fstab import (
    IGNORED,
    OPTIONS,
    HelperCall,
    OptionError,
    helper_mount_argv,
    join_options,
    looks_like_helper_call,
    parse_helper_argv,
    parse_options,
    parse_seconds,
    parse_size,
    split_options,
)


@pytest.mark.parametrize(("option", "dest", "value"), [
    ("api_key_file=/etc/openaifs.key", "api_key_file", "/etc/openaifs.key"),
    ("base_url=http://127.0.0.1:8080/v1", "base_url", "http://127.0.0.1:8080/v1"),
    ("cache_dir=/var/cache/openaifs", "cache_dir", Path("/var/cache/openaifs")),
    ("cache_size=20G", "cache_size", 20 * 1024**3),
    ("metadata_ttl=2.5", "metadata_ttl", 2.5),
    ("log_file=/var/log/openaifs.log", "log_file", Path("/var/log/openaifs.log")),
    ("allow_other", "allow_other", True),
    ("xattrs", "xattrs", True),
    ("read_only", "read_only", True),
    ("ro", "read_only", True),
    ("debug", "debug", True),
])
def test_every_option_sets_its_setting(option: str, dest: str, value: object) -> None:
    parsed = parse_options([option])
    assert parsed.settings == {dest: value}
    assert parsed.fuse == [] and parsed.ignored == []


def test_the_table_covers_every_documented_option() -> None:
    assert set(OPTIONS) == {"api_key_file", "base_url", "cache_dir", "cache_size", "metadata_ttl", "log_file",
                            "allow_other", "xattrs", "read_only", "ro", "debug"}


def test_dashes_and_case_are_accepted_in_names() -> None:
    assert parse_options(["Cache-Size=1M,api-key-file=/k"]).settings == {"cache_size": 1024**2, "api_key_file": "/k"}


@pytest.mark.parametrize("option", [
    *sorted(IGNORED), "x-systemd.automount", "x-systemd.requires=network-online.target",
    "x-systemd.mount-timeout=30", "x-gvfs-show", "comment=systemd.automount", "user=alice", "helper=openaifs",
])
def test_generic_options_are_ignored(option: str) -> None:
    parsed = parse_options([option])
    assert parsed.ignored == [option]
    assert parsed.settings == {} and parsed.fuse == []


def test_what_mount8_really_passes() -> None:
    # fstab `_netdev,noauto,api_key_file=...,xattrs` as mount(8) hands it to /sbin/mount.openaifs,
    # and as mount.fuse3 hands it on (it adds dev,suid when run as root)
    parsed = parse_options(["rw,api_key_file=/etc/openaifs.key,xattrs,_netdev,nofail"])
    assert parsed.settings == {"api_key_file": "/etc/openaifs.key", "xattrs": True}
    assert parsed.ignored == ["rw", "_netdev", "nofail"]
    assert parse_options(["rw,dev,suid,api_key_file=/k"]).fuse == ["dev", "suid"]


def test_unknown_options_pass_to_fuse_as_written() -> None:
    parsed = parse_options(["noexec,Fsname=x", "default_permissions"])
    assert parsed.fuse == ["noexec", "Fsname=x", "default_permissions"]


def test_sloppy_drops_unknown_options() -> None:
    parsed = parse_options(["bogus,xattrs,noexec"], sloppy=True)
    assert parsed.fuse == [] and parsed.ignored == ["bogus", "noexec"] and parsed.settings == {"xattrs": True}


def test_later_options_win() -> None:
    assert parse_options(["cache_size=1G", "cache_size=2G"]).settings == {"cache_size": 2 * 1024**3}


@pytest.mark.parametrize("option", ["api_key=sk-SECRET-123", "API_KEY=sk-SECRET-123", "api-key=sk-SECRET-123",
                                    "openai_api_key=sk-SECRET-123", "key=sk-SECRET-123", "api_key"])
def test_an_inline_key_is_refused_without_repeating_it(option: str) -> None:
    with pytest.raises(OptionError) as info:
        parse_options([f"xattrs,{option}"])
    message = str(info.value)
    assert "SECRET" not in message
    assert "api_key_file=FILE" in message
    assert "\n" not in message


@pytest.mark.parametrize(("option", "expected"), [
    ("cache_size=10X", "-o cache_size: not a size: '10X'"),
    ("metadata_ttl=soon", "-o metadata_ttl: not a number of seconds: 'soon'"),
    ("metadata_ttl=0", "-o metadata_ttl: must be a number of seconds greater than 0"),
    ("base_url=ftp://x", "-o base_url: must start with http:// or https://"),
    ("cache_dir", "-o cache_dir needs a value (cache_dir=...)"),
    ("api_key_file=", "-o api_key_file needs a value"),
    ("xattrs=yes", "-o xattrs takes no value"),
])
def test_bad_values_are_one_clear_line(option: str, expected: str) -> None:
    with pytest.raises(OptionError) as info:
        parse_options([option])
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)


def test_quoted_values_keep_their_commas() -> None:
    assert split_options('a,comment="x,y",log_file="/tmp/a,b.log",,b') == [
        "a", 'comment="x,y"', 'log_file="/tmp/a,b.log"', "b"]
    assert parse_options(['log_file="/tmp/a,b.log"']).settings == {"log_file": Path("/tmp/a,b.log")}
    assert join_options(["a", "log_file=/tmp/a,b.log", 'c="x,y"']) == 'a,log_file="/tmp/a,b.log",c="x,y"'
    assert split_options(join_options(["a", "log_file=/tmp/a,b.log"])) == ["a", 'log_file="/tmp/a,b.log"']


@pytest.mark.parametrize(("text", "size"), [
    ("1000", 1000), ("500M", 500 * 1024**2), ("10G", 10 * 1024**3), ("1.5GiB", 3 * 1024**3 // 2),
    ("2t", 2 * 1024**4), ("64 KB", 64 * 1024), ("0", 0),
])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["10X", "", "G", "-1G", "1e3", "ten"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize("text", ["0", "-5", "nan", "inf", "abc"])
def test_bad_seconds(text: str) -> None:
    with pytest.raises(ValueError):
        parse_seconds(text)


# -- the helper's argv ---------------------------------------------------------------------------

def test_helper_argv_as_mount8_passes_it() -> None:
    call = parse_helper_argv(["openai", "/mnt/openai", "-o", "rw,api_key_file=/k,_netdev"])
    assert call == HelperCall("openai", "/mnt/openai", ("rw,api_key_file=/k,_netdev",))
    call = parse_helper_argv(["openai", "/mnt/openai", "-v", "-o", "rw", "-t", "openaifs.sub"])
    assert call.verbose and call.options == ("rw",)
    call = parse_helper_argv(["openai", "/mnt/openai", "-s", "-f", "-n", "-o", "ro,foo"])
    assert call.sloppy and call.fake and call.options == ("ro,foo",)
    assert parse_helper_argv(["openai", "/m", "-r"]).options == ("ro",)
    assert parse_helper_argv(["-oxattrs", "openai", "/m"]).options == ("xattrs",)


@pytest.mark.parametrize(("argv", "expected"), [
    ([], "expected SOURCE and MOUNTPOINT, got 0"),
    (["openai"], "expected SOURCE and MOUNTPOINT, got 1"),
    (["a", "b", "c"], "expected SOURCE and MOUNTPOINT, got 3"),
    (["openai", "/m", "-x"], "option -x not recognized"),
    (["openai", "/m", "-o"], "option -o requires argument"),
    (["openai", "/m", "-N", "/proc/1/ns/mnt"], "-N (mount in another namespace) is not supported"),
    (["-h"], "usage: mount.openaifs SOURCE MOUNTPOINT"),
])
def test_bad_helper_argv(argv: list[str], expected: str) -> None:
    with pytest.raises(OptionError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        parse_helper_argv(argv)


def test_helper_becomes_openaifs_mount_without_the_generic_options() -> None:
    call = HelperCall("openai", "/mnt/openai", ("rw,dev,suid,api_key_file=/k,_netdev,xattrs,noexec",))
    assert helper_mount_argv(call) == ["mount", "/mnt/openai", "-o", "dev,suid,api_key_file=/k,xattrs,noexec"]
    assert helper_mount_argv(HelperCall("openai", "/m", ("rw,_netdev",))) == ["mount", "/m"]
    sloppy = HelperCall("openai", "/m", ("bogus,xattrs",), sloppy=True)
    assert helper_mount_argv(sloppy) == ["mount", "/m", "-o", "xattrs"]
    with pytest.raises(OptionError):
        helper_mount_argv(HelperCall("openai", "/m", ("api_key=sk-x",)))


def test_relative_mountpoint_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert helper_mount_argv(HelperCall("openai", "mnt"))[1] == str(tmp_path / "mnt")


@pytest.mark.parametrize(("argv", "helper"), [
    (["openai", "/mnt/openai", "-o", "rw,dev,suid"], True),  # mount.fuse3 as root
    (["openai", "/mnt/openai", "-orw"], True),
    (["mount", "/mnt/openai", "-o", "rw"], False),  # a subcommand wins
    (["mout", "/mnt/openai"], False),  # a typo stays an error, never a mount
    (["openai", "/mnt/openai"], False),
    (["--debug", "mount", "/m", "-o", "x"], False),
    (["openai", "-f", "/m", "-o", "x"], False),
    ([], False),
])
def test_helper_form_is_recognised_only_as_mount_fuse3_uses_it(argv: list[str], helper: bool) -> None:
    assert looks_like_helper_call(argv, SUBCOMMANDS) is helper
