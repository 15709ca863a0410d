"""Decode speed with the live terminal view against stdout redirected, in one run.

Runs the same generation, ``localrun run demo PROMPT --seed 1 --max-tokens 256 --verbose``
with the same threads, alternately (a) in a tmux pane, so stdout is a real terminal and the
answer is drawn as live Markdown with the status line, and (b) with stdout redirected to a
file (plain text, no live view). In both, stderr goes to a file, and the decode rate is read
from the ``--verbose`` line ``decode: X s, Y tok/s``: the same figure, measured the same way
by the engine, so the ratio shows what drawing the answer costs the model. The order flips
every round. The target is a median decode ratio (terminal / redirected) >= 0.95.

Usage: python benchmarks/chat_render.py [--rounds 5] [--threads N] [--max-tokens 256]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from localrun.system import physical_cores

BIN = Path(sys.executable).parent
LOCALRUN = str(BIN / "localrun")
PROMPT = (
    "Here is a Markdown cheat sheet, with headings, lists, emphasis and code blocks.\n\n"
    "# Markdown cheat sheet\n\n"
)
DECODE = re.compile(r"^decode:\s+([\d.]+) s, ([\d.]+) tok/s$", re.M)
TOKENS = re.compile(r"^generated tokens:\s+(\d+)$", re.M)
WIDTH, HEIGHT = 120, 40


class Tmux:
    """A private tmux server: its own socket, no user configuration."""

    def __init__(self, work: Path, tmux: str) -> None:
        conf = work / "tmux.conf"
        conf.write_text("set -g exit-empty off\nset -g remain-on-exit on\nset -g status off\n")
        label = f"localrun-bench-{uuid.uuid4().hex[:8]}"
        self.base = [tmux, "-u", "-L", label, "-f", str(conf)]
        # Where tmux puts the socket for -L (kill-server leaves the file behind).
        tmpdir = os.environ.get("TMUX_TMPDIR") or "/tmp"
        self.socket = Path(tmpdir) / f"tmux-{os.getuid()}" / label
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TMUX")}

    def __call__(self, *args: str) -> str:
        return subprocess.run(
            [*self.base, *args], env=self.env, check=True, capture_output=True, text=True
        ).stdout

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], env=self.env, capture_output=True, check=False)
        self.socket.unlink(missing_ok=True)


def parse(stderr: str) -> tuple[float, int]:
    """The decode rate and the generated tokens from a ``--verbose`` block."""
    decode, tokens = DECODE.search(stderr), TOKENS.search(stderr)
    if decode is None or tokens is None:
        raise SystemExit(f"no --verbose statistics in:\n{stderr}")
    return float(decode.group(2)), int(tokens.group(1))


def in_terminal(tmux: Tmux, cmd: list[str], env: dict[str, str], work: Path, i: int) -> str:
    """Run ``cmd`` in a tmux pane (stdout a terminal, stderr a file); return its stderr."""
    err, done = work / f"term{i}.err", work / f"term{i}.done"
    script = f"{shlex.join(cmd)} 2>{shlex.quote(str(err))}; echo $? >{shlex.quote(str(done))}"
    command = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), "bash", "--norc", "-c"]
    name = f"round{i}"
    tmux("new-session", "-d", "-s", name, "-x", str(WIDTH), "-y", str(HEIGHT), *command, script)
    deadline = time.monotonic() + 600
    while not (done.exists() and done.read_text().strip()):
        if time.monotonic() > deadline:
            raise SystemExit(f"the terminal run did not end; the pane:\n{pane(tmux, name)}")
        time.sleep(0.1)  # the timing is the engine's own, not this loop's
    code = int(done.read_text())
    if code != 0:
        raise SystemExit(f"the terminal run failed ({code}): {err.read_text()}\n{pane(tmux, name)}")
    if not pane(tmux, name).strip():
        raise SystemExit("the terminal run drew nothing")
    tmux("kill-session", "-t", name)
    return err.read_text()


def pane(tmux: Tmux, name: str) -> str:
    return tmux("capture-pane", "-p", "-t", f"{name}:0.0")


def redirected(cmd: list[str], env: dict[str, str], work: Path, i: int) -> str:
    """Run ``cmd`` with stdout and stderr to files; return its stderr."""
    out, err = work / f"plain{i}.out", work / f"plain{i}.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        subprocess.run(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, check=True
        )
    return err.read_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()
    # A kill ends the runs through the finally below, which takes the tmux server down.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    tmux_path = shutil.which("tmux")
    if tmux_path is None:
        print("tmux is not installed", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {
            "HOME": str(work),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "TERM": "xterm-256color",
            "LC_ALL": "C.UTF-8",
            "LANG": "C.UTF-8",
            "LOCALRUN_HOME": str(work / "home"),
        }
        # Assemble the demo model before anything is timed.
        subprocess.run(
            [LOCALRUN, "run", "demo", "--max-tokens", "1", "x"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            check=True,
        )
        cmd = [LOCALRUN, "run", "demo", PROMPT, "--seed", "1"]
        cmd += ["--max-tokens", str(args.max_tokens), "--threads", str(args.threads), "--verbose"]
        tmux = Tmux(work, tmux_path)
        term_rate: list[float] = []
        plain_rate: list[float] = []
        ratios: list[float] = []
        try:
            for i in range(args.rounds):
                order = ["terminal", "redirected"] if i % 2 == 0 else ["redirected", "terminal"]
                result: dict[str, tuple[float, int]] = {}
                for kind in order:
                    if kind == "terminal":
                        stderr = in_terminal(tmux, cmd, env, work, i)
                    else:
                        stderr = redirected(cmd, env, work, i)
                    result[kind] = parse(stderr)
                (t_rate, t_tokens), (p_rate, p_tokens) = result["terminal"], result["redirected"]
                term_rate.append(t_rate)
                plain_rate.append(p_rate)
                ratios.append(t_rate / p_rate)
                print(
                    f"round {i + 1} ({' then '.join(order)}):"
                    f"   terminal {t_rate:5.1f} tok/s ({t_tokens} tokens)"
                    f"   redirected {p_rate:5.1f} tok/s ({p_tokens} tokens)"
                    f"   ratio {ratios[-1]:.3f}",
                    flush=True,
                )
        finally:
            tmux.kill()
    median = statistics.median
    # How much the redirected runs alone vary (10-15% on a quiet two-core VM): beyond 20%,
    # something else is using the CPU and the ratio says nothing.
    spread = max(plain_rate) / min(plain_rate) - 1
    if spread > 0.20:
        verdict = f"not measured: the redirected runs alone vary by {spread:.0%}"
    else:
        verdict = "met" if median(ratios) >= 0.95 else "NOT met"
    print(
        f"median over {args.rounds} rounds (--threads {args.threads}, {args.max_tokens} tokens): "
        f"decode tok/s terminal {median(term_rate):.1f}, redirected {median(plain_rate):.1f}; "
        f"ratio terminal / redirected = {median(ratios):.3f} (target >= 0.95: {verdict})"
    )
    if spread > 0.20:
        print("warning: something else is using the CPU; run again on a quiet machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
