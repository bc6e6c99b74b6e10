"""The `sipconsole` command line: options typed anywhere mean the same, one-line errors, exit
statuses, --version, --help listing every setting. Runs the real CLI against real registrars."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import fields
from pathlib import Path

import pytest

from console.app import embedded
from registrar_core import __version__
from registrar_core.config import Config, build_config

from .processes import ServeProcess, run_cli
from .sipclient import free_port


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got: {text!r}"
    return lines[0]


@pytest.fixture
def two_registrars(short_dir: Path):
    """Registrar A on the default control socket (of XDG_RUNTIME_DIR=short_dir/run), B elsewhere,
    each with its own database; and the environment in which A is the default."""
    env = {**os.environ, "XDG_RUNTIME_DIR": str(short_dir / "run")}
    a = ServeProcess(short_dir, free_port(), "-a")
    a.control = short_dir / "run" / "sipconsole" / "control.sock"
    b = ServeProcess(short_dir, free_port(), "-b")
    a.start()
    b.start()
    yield a, b, env
    a.stop()
    b.stop()


def _answered_by(done, *registrars: ServeProcess) -> ServeProcess:
    """Which registrar answered a `ctl stats --json` (by its listening port)."""
    assert done.returncode == 0, done.stderr
    listening = json.loads(done.stdout)["listening"]
    (which,) = [r for r in registrars if f"udp:127.0.0.1:{r.port}" in listening]
    return which


def test_ctl_options_before_or_after_the_command_reach_the_registrar_meant(two_registrars):
    a, b, env = two_registrars
    assert _answered_by(run_cli("ctl", "stats", "--json", env=env), a, b) is a  # the default
    B = str(b.control)
    for args in (["--control", B, "--json", "ctl", "stats"],
                 ["--json", "ctl", "--control", B, "stats"],
                 ["ctl", "--control", B, "--json", "stats"],
                 ["ctl", "stats", "--control", B, "--json"],
                 ["--control", B, "ctl", "stats", "--json"],
                 ["--control", B, "ctl", "--json", "stats", "--control", B]):  # twice, same value
        assert _answered_by(run_cli(*args, env=env), a, b) is b, args
    # --config gives the control socket too.
    config = b.directory / "b.toml"
    config.write_text(f'control = "{B}"\n')
    assert _answered_by(run_cli("ctl", "stats", "--json", "--config", str(config), env=env), a, b) is b
    # dump --json after the command is JSON (the README's way of writing it).
    done = run_cli("ctl", "dump", "--json", "--control", B, env=env)
    assert done.returncode == 0 and json.loads(done.stdout) == {"table": "location", "aors": []}


def test_user_commands_reach_the_registrar_holding_the_database_named(two_registrars, short_dir):
    a, b, env = two_registrars
    forms = {
        "u1@example.com": ["user", "add", "u1@example.com", "--password-stdin", "--db", str(b.db)],
        "u2@example.com": ["--db", str(b.db), "user", "add", "u2@example.com", "--password-stdin"],
        "u3@example.com": ["user", "--db", str(b.db), "add", "u3@example.com", "--password-stdin"],
        "u4@example.com": ["--control", str(b.control), "user", "add", "u4@example.com", "--password-stdin"],
        "u5@example.com": ["user", "add", "u5@example.com", "--password-stdin", "--control", str(b.control)],
    }
    for user, args in forms.items():
        done = run_cli(*args, stdin="secret\n", env=env)
        assert done.returncode == 0 and done.stdout.strip() == f"added {user}", (args, done.stderr)
    on_b = run_cli("user", "list", "--control", str(b.control), env=env)
    on_a = run_cli("user", "list", env=env)  # the default registrar
    assert on_b.stdout.split() == sorted(forms) and on_a.stdout.split() == [], (on_a.stdout, on_b.stdout)
    # A database nobody holds is edited in the file, whichever side --db is on.
    offline = str(short_dir / "offline.db")
    for args in (["user", "add", "o1@example.com", "--db", offline, "--password-stdin"],
                 ["--db", offline, "user", "add", "o2@example.com", "--password-stdin"]):
        done = run_cli(*args, stdin="secret\n", env=env)
        assert done.returncode == 0, (args, done.stderr)
    done = run_cli("user", "list", "--db", offline, env=env)
    assert done.stdout.split() == ["o1@example.com", "o2@example.com"], done.stderr


def test_serve_options_before_after_or_around_the_command(short_dir):
    for before in (0, 2, 12):  # all after `serve`; one --listen before and one after; all before
        proc = ServeProcess(short_dir, free_port(), f"-{before}")
        proc.before = before
        proc.start()
        try:
            code, stats = proc.ctl("stats")
            assert code == 0 and stats["listening"] == [f"udp:127.0.0.1:{proc.port}", f"tcp:127.0.0.1:{proc.port}"]
            assert stats["auth"] is False, "--auth off reached the registrar"
        finally:
            proc.stop()
        assert proc.db.exists(), "the database named was used"


def test_attach_takes_control_on_either_side(tmp_path):
    missing = str(tmp_path / "none.sock")
    for args in (["--control", missing, "attach"], ["attach", "--control", missing]):
        done = run_cli(*args)
        assert done.returncode == 3 and missing in one_line(done.stderr), (args, done.stderr)


def test_an_option_twice_with_different_values_or_where_it_means_nothing_is_one_line(tmp_path):
    c1, c2 = str(tmp_path / "1.sock"), str(tmp_path / "2.sock")
    cases = [
        (["--control", c1, "ctl", "stats", "--control", c2], "--control is given twice"),
        (["--db", "x.db", "user", "list", "--db", "y.db"], "--db is given twice"),
        (["--single-contact", "serve", "--no-single-contact"], "--single-contact is given twice"),
        (["--listen", "udp:127.0.0.1:5999", "ctl", "stats"], "--listen does not apply to `sipconsole ctl`"),
        (["--read-only", "serve"], "--read-only does not apply to `sipconsole serve`"),
        (["--json", "serve"], "--json does not apply to `sipconsole serve`"),
        (["--json"], "--json does not apply to the console"),
        (["--min-expires", "30", "user", "list"], "--min-expires does not apply to `sipconsole user`"),
    ]
    for args, expected in cases:
        done = run_cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert expected in one_line(done.stderr) and "Traceback" not in done.stderr, (args, done.stderr)


def test_version():
    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.startswith(f"sipconsole {__version__} (REGISTER hot path: ")


def test_every_setting_is_in_serve_help_and_every_help_states_the_exit_statuses():
    text = run_cli("serve", "--help").stdout
    missing = [f.name for f in fields(Config) if "--" + f.name.replace("_", "-") not in text]
    assert missing == [], f"settings without an option in `serve --help`: {missing}"
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    configuration = readme[readme.index("## Configuration"):readme.index("## Logs")]
    missing = [f.name for f in fields(Config) if f"`{f.name.replace('_', '-')}`" not in configuration]
    assert missing == [], f"settings the README's Configuration does not name: {missing}"
    for args in ([], ["serve"], ["attach"], ["user"], ["user", "add"], ["ctl"], ["ctl", "dump"]):
        done = run_cli(*args, "--help")
        assert done.returncode == 0 and "exit status" in done.stdout, args
        assert "2 bad usage" in done.stdout or args[:1] == ["ctl"], args


@pytest.mark.parametrize(("listen", "expected"), [
    ("sctp:127.0.0.1:5061", "unknown transport 'sctp' (udp, tcp, tls, ws, wss)"),
    ("tls:127.0.0.1:5061", "tls:127.0.0.1:5061 needs a certificate: give --tls-cert FILE and --tls-key FILE"),
    ("udp:127.0.0.1:70000", "the port 70000 is out of range (0-65535"),
    ("udp:127.0.0.1:sip", "the port 'sip' is not a number"),
    ("udp:::1:5060", "an IPv6 address goes in brackets, e.g. udp:[::1]:5060"),
    ("udp:[fe80::zz]:5060", "[fe80::zz] is not an IPv6 address"),
    ("127.0.0.1:5060", "unknown transport '127.0.0.1' (udp, tcp, tls, ws, wss)"),
    ("udp:127.0.0.1", "expected udp:HOST:PORT"),
])
def test_listen_errors_say_what_is_wrong(listen, expected, tmp_path):
    done = run_cli("serve", "--listen", listen, "--db", str(tmp_path / "l.db"))
    assert done.returncode == 2 and expected in one_line(done.stderr), done.stderr
    assert not (tmp_path / "l.db").exists(), "nothing was started"


def test_a_node_name_with_a_space_is_one_line(tmp_path):
    done = run_cli("serve", "--node-name", "node a", "--db", str(tmp_path / "n.db"))
    assert done.returncode == 2 and "node-name 'node a': at most 64 characters, no spaces" in one_line(done.stderr)
    assert "Traceback" not in done.stderr and not (tmp_path / "n.db").exists(), done.stderr


def test_unknown_config_key_gets_a_did_you_mean(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("max-contact = 5\n")
    done = run_cli("serve", "--config", str(config))
    assert done.returncode == 2
    assert "unknown setting 'max-contact': did you mean 'max-contacts'?" in one_line(done.stderr)
    config.write_text("frobnicate = 1\n")
    done = run_cli("serve", "--config", str(config))
    assert done.returncode == 2 and "`sipconsole serve --help`" in one_line(done.stderr)


def test_a_udp_port_in_use_says_so_with_a_hint(short_dir):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        done = run_cli("serve", "--listen", f"udp:127.0.0.1:{port}", "--db", str(short_dir / "l.db"),
                       "--control", str(short_dir / "c.sock"), "--auth", "off")
    line = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert line == (f"sipconsole: error: cannot listen on udp:127.0.0.1:{port}: address already in use "
                    "(another program, perhaps another registrar, has it: stop it or pick another port with --listen)")


def test_serve_warns_when_authentication_is_off(serve_process):
    serve_process.start()  # --auth off, the lab setting of the tests
    assert "WARNING registrar_core.server: authentication is OFF" in serve_process.log.read_text()
    serve_process.stop()
    seen = len(serve_process.log.read_text())
    serve_process.start("--auth", "on")
    assert "registrar ready" in serve_process.log.read_text()[seen:]
    assert "authentication is OFF" not in serve_process.log.read_text()[seen:]


async def test_the_embedded_console_logs_the_warning_to_its_log_file(short_dir):
    config = build_config({"db": str(short_dir / "l.db"), "control": str(short_dir / "c.sock"),
                           "listen": [f"udp:127.0.0.1:{free_port()}"], "auth": False})

    async def quit_at_once(control: str, read_only: bool) -> int:
        return 0

    assert await embedded(config, read_only=False, ui=quit_at_once) == 0
    assert "WARNING registrar_core.server: authentication is OFF" in (short_dir / "sipconsole.log").read_text()


def test_user_exit_statuses(short_dir):
    db = str(short_dir / "u.db")

    def user(*args: str) -> tuple[int, str]:
        password = ["--password-stdin"] if args[0] in ("add", "passwd") else []
        done = run_cli("user", *args, *password, "--db", db, stdin="pw\n")
        return done.returncode, one_line(done.stderr or done.stdout)

    assert user("add", "carol@example.com") == (0, "added carol@example.com")
    code, text = user("add", "carol@example.com")
    assert code == 1 and "exists already" in text  # refused: FAILED
    code, text = user("rm", "nobody@example.com")
    assert code == 1 and "no subscriber nobody@example.com" in text  # not found: FAILED
    code, text = user("add", "not-a-user")
    assert code == 2 and "expected USER@DOMAIN" in text  # bad usage, nothing attempted

