"""Where the proxy's CPU goes: py-spy samples of it under open-loop load, and a summary of
the collapsed stacks (own time by function and by package, inclusive time of stillroom's
own functions, the worker-thread share). Optional: ``overhead.py --profile FILE``.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import sys
from collections import Counter
from pathlib import Path

from loadgen import Endpoint, open_loop

REPO = Path(__file__).resolve().parent.parent


def py_spy_path() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


async def record_profile(py_spy: str, proxy: Endpoint, rate: int, seconds: float, out: Path) -> str:
    """Sample the proxy with py-spy (on-CPU samples only) under open-loop load."""
    argv = [py_spy, "record", "--pid", str(proxy.pid), "--duration", str(math.ceil(seconds))]
    argv += ["--rate", "200", "--gil", "--format", "raw", "--output", str(out)]
    spy = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    await asyncio.sleep(0.5)
    await open_loop("proxy", proxy, rate, seconds)
    output, _ = await spy.communicate()
    return output.decode(errors="replace") if spy.returncode else ""


def _frame(frame: str) -> tuple[str, str]:
    """``name (path:line)`` -> (name, path) with the site-packages prefix cut."""
    name, _, where = frame.partition(" (")
    return name, where.rsplit(":", 1)[0].split("site-packages/")[-1].removeprefix(f"{REPO}/")


def _shares(counter: Counter[str], total: int, top: int) -> list[str]:
    return [f"  {100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(top)]


def profile_summary(collapsed: Path, rate: int, top: int = 15) -> str:
    """Where the proxy's CPU went: own time (the innermost frame) by function and by
    package, inclusive time of stillroom's own functions, and the worker-thread share."""
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        name, path = frames[-1]
        own[f"{name} ({path})"] += n
        packages[path.split("/")[0].removesuffix(".py")] += n
        mine = {f"{nm} ({p})" for nm, p in frames if p.startswith(("proxy/", "core/"))}
        for label in mine - {f"{nm} (proxy/cli.py)" for nm in ("main", "proxy", "_run_proxy")}:
            ours[label] += n
        worker = any(p.endswith("concurrent/futures/thread.py") for _, p in frames)
        threads["worker threads (asyncio.to_thread)" if worker else "event loop thread"] += n
    if total == 0:
        return "profile: no samples"
    return "\n".join(
        [
            f"py-spy at {rate} req/s: {total} samples holding the GIL; shares of them",
            "own time by function:",
            *_shares(own, total, top),
            "own time by package:",
            *_shares(packages, total, 10),
            "inclusive time of stillroom functions:",
            *_shares(ours, total, top),
            "by thread:",
            *_shares(threads, total, 2),
            f"collapsed stacks (speedscope, inferno): {collapsed}",
        ]
    )


def profile(runner: asyncio.Runner, proxy: Endpoint, seconds: float, out: Path) -> str:
    """Record the proxy at 500 req/s into ``out``; the summary, or why there is none."""
    py_spy = py_spy_path()
    if py_spy is None:
        return "profile: py-spy not found (.venv/bin/pip install py-spy)"
    failure = runner.run(record_profile(py_spy, proxy, 500, seconds, out))
    if failure or not out.exists():
        return f"profile: py-spy could not record: {failure[-500:]}"
    return profile_summary(out, 500)
