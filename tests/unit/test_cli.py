"""The command line as a newcomer meets it: --version, help with examples, one-line errors.

``cli.main`` runs in-process here (no mount is ever made: every case fails or stops before
mounting); the real processes are driven in tests/e2e/test_cli_mount.py and test_fstab.py.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openaifs import __version__, cli

SECRET = "sk-SECRET-0123456789"


def run(capsys: pytest.CaptureFixture[str], *argv: str, **kwargs: bool) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv), **kwargs)
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"openaifs {__version__}"


@pytest.mark.parametrize("command", ["serve", "mount", "umount", "demo"])
def test_every_subcommand_has_help_with_examples(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    examples = out[out.index("examples:"):].splitlines()[1:]
    assert any(line.strip().startswith(f"openaifs {command}") or f" openaifs {command} " in line
               for line in examples), out


def test_top_level_help_shows_examples_fstab_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for text in ("examples:", "openaifs demo", "openaifs mount", "fuse.openaifs", "Exit codes"):
        assert text in out


def test_mount_help_lists_every_o_option(capsys: pytest.CaptureFixture[str]) -> None:
    from openaifs.fstab import OPTIONS

    _, out, _ = run(capsys, "mount", "--help")
    for name in OPTIONS:
        assert name in out


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == 2 and "COMMAND" in err


@pytest.mark.parametrize(("argv", "expected"), [
    (["mount", "/tmp", "--cache-size", "10X"], "openaifs mount: argument --cache-size: not a size: '10X'"),
    (["mount", "/tmp", "--metadata-ttl", "0"], "openaifs mount: argument --metadata-ttl: must be a number"),
    (["mount", "/tmp", "--metadata-ttl", "soon"], "openaifs mount: argument --metadata-ttl: not a number"),
    (["mount", "/tmp", "--bogus"], "openaifs: unrecognized arguments: --bogus"),
    (["mount"], "openaifs mount: the following arguments are required: mountpoint"),
    (["mout", "/tmp"], "openaifs: argument COMMAND: invalid choice: 'mout'"),
    (["serve", "--port", "x"], "openaifs serve: argument --port: invalid int value: 'x'"),
    (["demo", "--wait"], "openaifs: unrecognized arguments: --wait"),
])
def test_usage_mistakes_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                 expected: str) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    line = one_line(err)
    assert line.startswith(expected), line
    assert "--help" in line


@pytest.mark.parametrize(("options", "expected"), [
    (f"api_key={SECRET}", "openaifs: -o api_key=... refused"),
    ("cache_size=10X", "openaifs: -o cache_size: not a size: '10X'"),
    ("metadata_ttl=-1", "openaifs: -o metadata_ttl: must be a number of seconds greater than 0"),
    ("xattrs=1", "openaifs: -o xattrs takes no value"),
])
def test_bad_o_options_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               options: str, expected: str) -> None:
    code, out, err = run(capsys, "mount", str(tmp_path), "-o", options)
    assert code == 2
    assert one_line(err).startswith(expected)
    assert SECRET not in out + err


def test_missing_key_names_both_ways_to_give_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "mount", str(tmp_path))
    assert code == 2 and "OPENAI_API_KEY" in one_line(err) and "--api-key-file" in err


def test_bad_base_url_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    code, _, err = run(capsys, "mount", str(tmp_path), "--base-url", "localhost:8080")
    assert code == 2 and one_line(err).startswith("openaifs: --base-url must start with http://")


def test_missing_mountpoint_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    code, _, err = run(capsys, "mount", str(tmp_path / "nope"))
    assert code == 2 and one_line(err).startswith("openaifs: ")


def test_check_only_validates_without_mounting(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, fuse_available: None) -> None:
    key = tmp_path / "key"
    key.write_text(SECRET)
    code, out, err = run(capsys, "mount", str(tmp_path), "-o", f"api_key_file={key},xattrs", check_only=True)
    assert (code, out, err) == (0, "", "")
    assert not any(line.split()[1] == str(tmp_path) for line in Path("/proc/mounts").read_text().splitlines())


def test_umount_of_a_directory_that_is_not_mounted(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "umount", str(tmp_path))
    assert code == 2 and one_line(err) == f"openaifs: {tmp_path} is not mounted"


def test_umount_refuses_a_mount_that_is_not_openaifs(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "umount", "/proc")
    assert code == 2 and one_line(err).startswith("openaifs: /proc is not an openaifs mount (it is proc)")


def _boom(args: object) -> int:
    raise RuntimeError("boom\nwith a second line")


def test_unexpected_error_is_one_line_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "run_umount", _boom)
    code, _, err = run(capsys, "umount", str(tmp_path))
    assert code == 1
    assert one_line(err) == ("openaifs: unexpected error: RuntimeError: boom with a second line; "
                             "run with --debug for details")


def test_unexpected_error_with_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "run_umount", _boom)
    code, _, err = run(capsys, "--debug", "umount", str(tmp_path))
    assert code == 1
    assert "Traceback" in err and "_boom" in err
    assert err.strip().splitlines()[-1] == "openaifs: unexpected error: RuntimeError: boom with a second line"


def test_ctrl_c_exits_0(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_umount", interrupted)
    assert run(capsys, "umount", str(tmp_path))[0] == 0


def test_the_installed_commands_answer_in_one_line(tmp_path: Path) -> None:
    """The console scripts of pyproject.toml, as processes: exit codes and stderr as a shell sees them."""
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}

    def run_process(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True, env=env,
                              timeout=60)

    r = run_process("openaifs", "--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"openaifs {__version__}")
    r = run_process("openaifs", "mount", str(tmp_path), "--cache-size", "10X")
    assert r.returncode == 2 and one_line(r.stderr).startswith("openaifs mount: argument --cache-size: not a size")
    r = run_process("mount.openaifs", "openai", str(tmp_path), "-o", f"rw,api_key={SECRET}")
    assert r.returncode == 1 and one_line(r.stderr).startswith("mount.openaifs: -o api_key=... refused")
    assert SECRET not in r.stderr + r.stdout
    r = run_process("openaifs", "openai", str(tmp_path), "-o", "rw,cache_size=10X")  # mount.fuse3's form
    assert r.returncode == 1
    assert one_line(r.stderr) == "openaifs: -o cache_size: not a size: '10X' (examples: 500M, 10G)"


def test_readme_configuration_lists_every_flag() -> None:
    """README's configuration tables name every flag of mount and serve (and every -o option)."""
    from openaifs.fstab import OPTIONS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("## Configuration"):readme.index("## Semantics in short")]
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("mount", "serve"):
        for action in subparsers.choices[command]._actions:
            if action.help == argparse.SUPPRESS:
                continue
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in table or f" {flag}" in table, f"{command} {flag} missing from README"
    for name in OPTIONS:
        assert f"`{name}" in table, f"-o {name} missing from README"


def test_readme_configuration_lists_every_variable() -> None:
    import re

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    table = readme[readme.index("## Configuration"):readme.index("## Semantics in short")]
    source = (root / "openaifs" / "config.py").read_text()
    variables = set(re.findall(r"\b(OPENAI(?:FS)?_[A-Z_]+[A-Z])\b", source))
    assert "OPENAI_API_KEY" in variables
    missing = sorted(v for v in variables if f"`{v}`" not in table)
    assert not missing, f"variables missing from README's configuration: {missing}"


def test_mount_start_up_does_not_import_the_server() -> None:
    """The parser has the serve flags, but uvicorn and Starlette load only when serving: a mount
    would otherwise spend tens of milliseconds of every cold start importing them."""
    probe = ("import sys; from openaifs import cli; cli.build_parser().parse_args(['mount', '/mnt']); "
             "print(sorted(m for m in ('uvicorn', 'starlette', 'openaifs.server.app') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
