#!/usr/bin/env python3
"""The builder's benchmarks, each beside its baseline, on this machine, in one run.

Run through `scripts/bench.sh` (which installs and starts what this needs and builds the
release binary); see BENCHMARKS.md for what each figure means. Prints min/median/max per
figure, its ratio to the baseline or target, and a Markdown summary for BENCHMARKS.md.

  #1 receive a 100 MB push (fresh app) vs OpenSSH sshd + git-receive-pack into a bare repo
  #2 pack a 200 MB app tree vs tar -cz          \\ `cargo bench --bench pack|upload`, whose
  #3 upload a 200 MB slug vs aws s3 cp          /  output is read with --external
  #4 end-to-end push of a small app, split by stage (from the builder's `deployed` event)
  #5 20 pushes at once to distinct apps: all succeed, builder peak RSS (VmHWM)
  #6 one push of a 1 GB repo (~1 GB slug): builder peak RSS (VmHWM)
  #7 a Dockerfile push to the registry: the builder's part vs docker build + docker push
  #10 replicas: 20 pushes at once to distinct apps over 3 builders on one bucket vs 1 builder
      (wall time, each builder's peak RSS)
  #11 what an app lease adds to an uncontended push on S3 (take + confirm, from the log)
"""

import argparse
import concurrent.futures
import getpass
import json
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

MIB = 1024 * 1024


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ------------------------------------------------------------------------------ results


@dataclass
class Figure:
    """One row of the results table."""

    number: str
    what: str
    unit: str
    ours: list
    baseline: Optional[list] = None
    baseline_name: str = ""
    # "lower" (ours/baseline, lower is better) or "speedup" (baseline/ours).
    ratio_kind: str = "lower"
    target: str = ""
    met: Optional[bool] = None
    notes: list = field(default_factory=list)

    def ratio(self) -> Optional[float]:
        if not self.baseline or not self.ours:
            return None
        ours, base = statistics.median(self.ours), statistics.median(self.baseline)
        if self.ratio_kind == "speedup":
            return base / ours if ours else None
        return ours / base if base else None


def spread(values: list, unit: str) -> str:
    if not values:
        return "-"
    digits = {"ms": 0, "MB": 1}.get(unit, 2)
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"{lo:.{digits}f} / {mid:.{digits}f} / {hi:.{digits}f} {unit}"


def verdict(met: Optional[bool]) -> str:
    return {True: "met", False: "MISSED", None: "-"}[met]


def print_figure(fig: Figure) -> None:
    ratio = fig.ratio()
    lines = [f"#{fig.number} {fig.what}", f"    ours (min/median/max):     {spread(fig.ours, fig.unit)}"]
    if fig.baseline is not None:
        lines.append(f"    {fig.baseline_name} (min/median/max): {spread(fig.baseline, fig.unit)}")
    if ratio is not None:
        kind = "speed-up" if fig.ratio_kind == "speedup" else "ratio ours/baseline"
        lines.append(f"    {kind}: {ratio:.2f}x")
    lines.append(f"    target: {fig.target} -> {verdict(fig.met)}")
    lines.extend(f"    {note}" for note in fig.notes)
    print("\n".join(lines), flush=True)


def markdown(figures: list, context: dict, stages: list) -> str:
    out = [f"Run of {context['date']} on {context['machine']}.", ""]
    out.append(f"Command: `{context['command']}`. Load average before / after: "
               f"{context['load_before']} / {context['load_after']}.")
    out.append("")
    out.append("| # | what | ours (min / median / max) | baseline (min / median / max) | ratio | target | result |")
    out.append("|---|---|---|---|---|---|---|")
    for fig in figures:
        ratio = fig.ratio()
        ratio_text = "-" if ratio is None else (
            f"{ratio:.2f}× faster" if fig.ratio_kind == "speedup" else f"{ratio:.2f}×")
        base = "-" if fig.baseline is None else f"{fig.baseline_name}: {spread(fig.baseline, fig.unit)}"
        out.append(f"| {fig.number} | {fig.what} | {spread(fig.ours, fig.unit)} | {base} | "
                   f"{ratio_text} | {fig.target} | {verdict(fig.met)} |")
    if stages:
        out.append("")
        out.append("Stage split of #4 (builder's `deployed` log event; median over the pushes, ms):")
        out.append("")
        out.append("| " + " | ".join(name for name, _ in stages) + " |")
        out.append("|" + "---|" * len(stages))
        out.append("| " + " | ".join(f"{value:.0f}" for _, value in stages) + " |")
    notes = [f"- #{fig.number}: {note}" for fig in figures for note in fig.notes]
    if notes:
        out.append("")
        out.extend(notes)
    return "\n".join(out) + "\n"


# -------------------------------------------------------------------------- machinery


class Context:
    def __init__(self, args):
        self.args = args
        self.exe = str(Path(args.exe).resolve())
        self.work = Path(tempfile.mkdtemp(prefix="deis-bench."))
        self.home = self.work / "home"
        self.home.mkdir()
        self.key = self.work / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(self.key)],
                       check=True)
        self.public_key = Path(f"{self.key}.pub").read_text()
        self.git_env = {
            **os.environ,
            "HOME": str(self.home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "bench",
            "GIT_AUTHOR_EMAIL": "bench@example.com",
            "GIT_COMMITTER_NAME": "bench",
            "GIT_COMMITTER_EMAIL": "bench@example.com",
        }

    def ssh_command(self, port: int) -> str:
        return (f"ssh -p {port} -i {self.key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                "-o IdentitiesOnly=yes -o LogLevel=ERROR -o BatchMode=yes")

    def git(self, repo: Path, *args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], env=self.git_env, check=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return done.stdout

    def push(self, repo: Path, url: str, refspec: str, port: int, timeout: float):
        """`git push` to completion: (succeeded, seconds, client output)."""
        env = dict(self.git_env, GIT_SSH_COMMAND=self.ssh_command(port))
        started = time.perf_counter()
        try:
            done = subprocess.run(["git", "-C", str(repo), "push", url, refspec], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=timeout)
            ok, output = done.returncode == 0, done.stdout
        except subprocess.TimeoutExpired as timed_out:
            ok, output = False, f"timed out after {timeout}s\n{timed_out.output or ''}"
        return ok, time.perf_counter() - started, output

    def cleanup(self):
        if self.args.keep:
            log(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def vm_status(pid: int, field_name: str) -> Optional[int]:
    """A /proc/<pid>/status value in KiB (VmHWM: peak resident set size)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler:
    """Samples a process's resident set size, to see which stage the peak falls in."""

    def __init__(self, pid: int, interval: float = 0.5):
        import threading
        self.pid, self.interval, self.samples = pid, interval, []
        self.started = time.monotonic()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.done.wait(self.interval):
            rss = vm_status(self.pid, "VmRSS")
            if rss is not None:
                self.samples.append((time.monotonic() - self.started, rss / 1024))

    def stop(self):
        self.done.set()
        self.thread.join()

    def describe(self) -> str:
        """About ten (second, MB) points."""
        step = max(1, len(self.samples) // 10)
        return " ".join(f"{t:.0f}s:{mb:.0f}" for t, mb in self.samples[::step])


class Builder:
    """A `deis-builder serve` of its own (standalone controller), JSON logs in a file."""

    def __init__(self, ctx: Context, name: str, s3: bool, extra=(), shared_bucket: Optional[str] = None):
        """`shared_bucket`: a replica on a bucket the caller deletes (implies S3)."""
        self.ctx = ctx
        self.dir = ctx.work / name
        data = self.dir / "data"
        data.mkdir(parents=True)
        (data / "authorized_keys").write_text(ctx.public_key)
        self.ssh_port, self.http_port = free_port(), free_port()
        self.bucket = None
        args = [ctx.exe, "serve", "--data-dir", str(data), "--ssh-addr", f"127.0.0.1:{self.ssh_port}",
                "--http-addr", f"127.0.0.1:{self.http_port}", "--log-format", "json"]
        if ctx.args.stack_image:
            args += ["--stack-image", ctx.args.stack_image]
        if shared_bucket:
            args += ["--storage", f"s3://{shared_bucket}", "--s3-endpoint", ctx.args.s3_endpoint]
        elif s3:
            self.bucket = f"bench-{name}-{random.randrange(16**8):08x}"
            args += ["--storage", f"s3://{self.bucket}", "--s3-endpoint", ctx.args.s3_endpoint]
        args += list(extra)
        self.log_path = self.dir / "builder.log"
        with open(self.log_path, "wb") as log_file:
            # Benchmark apps need no network: sealed builds, unless a benchmark says otherwise.
            env = {"DEIS_BUILDER_BUILD_NETWORK": "none", **os.environ}
            self.proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the builder exited at start-up:\n{self.log_tail()}")
            try:
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                with opener.open(f"http://127.0.0.1:{self.http_port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the builder did not become healthy:\n{self.log_tail()}")
            time.sleep(0.1)
        self.idle_rss_kib = vm_status(self.proc.pid, "VmRSS")

    def remote(self, app: str) -> str:
        return f"ssh://git@127.0.0.1:{self.ssh_port}/{app}.git"

    def peak_rss_mib(self) -> float:
        return (vm_status(self.proc.pid, "VmHWM") or 0) / 1024

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def events(self, *messages: str) -> list:
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            fields = event.get("fields", {})
            if fields.get("message") in messages:
                events.append(fields)
        return events

    def deployed_events(self) -> list:
        return self.events("deployed")

    def wait_after_push(self, pushes: int, timeout: float = 300):
        """Waits until the work of `pushes` deployed pushes that runs after the answer is
        done (or failed): the source tarball, and on S3 the repository save. It must not
        overlap what is timed next."""
        after_push = [("source archived", "source tarball not stored")]
        if self.bucket:
            after_push.append(("saved the push's git objects to storage",
                               "cannot save the push's git objects to storage"))
        deadline = time.monotonic() + timeout
        while any(len(self.events(*done)) < pushes for done in after_push):
            if time.monotonic() > deadline:
                raise RuntimeError(f"after-push work not done in time:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.bucket:
            delete_bucket(self.ctx, self.bucket)


def delete_bucket(ctx: Context, bucket: str):
    """The S3 server keeps what the benchmarks stored; large objects are deleted again."""
    script = """
import sys, boto3
s3 = boto3.resource("s3", endpoint_url=sys.argv[1])
bucket = s3.Bucket(sys.argv[2])
bucket.objects.all().delete()
bucket.delete()
"""
    python = ctx.args.s3_python or sys.executable
    done = subprocess.run([python, "-c", script, ctx.args.s3_endpoint, bucket],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        log(f"could not delete bucket {bucket}: {done.stderr.strip().splitlines()[-1:]}")


class Sshd:
    """Debian's OpenSSH sshd on a loopback port with its own config, host key and keys."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.receives = 0
        # Each figure that needs one starts its own (#1, #9).
        self.dir = Path(tempfile.mkdtemp(prefix="sshd.", dir=ctx.work))
        host_key = self.dir / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        (self.dir / "authorized_keys").write_text(ctx.public_key)
        self.port = free_port()
        self.user = getpass.getuser()
        config = self.dir / "sshd_config"
        config.write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {self.dir}/sshd.pid
AuthorizedKeysFile {self.dir}/authorized_keys
AllowUsers {self.user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
LogLevel ERROR
""")
        if os.geteuid() == 0:
            # Privilege separation directory Debian's sshd insists on.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        self.log_path = self.dir / "sshd.log"
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log_file,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log_path.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("sshd does not listen")
                time.sleep(0.1)

    def receive(self, repo: Path, refspec: str) -> float:
        """The baseline receive: `git push` of `repo` over this sshd into a bare repo made
        just before (not timed) and removed after; returns the push's seconds."""
        self.receives += 1
        bare = self.dir / f"bare{self.receives}.git"
        subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True, env=self.ctx.git_env)
        try:
            ok, seconds, output = self.ctx.push(repo, f"ssh://{self.user}@127.0.0.1:{self.port}{bare}",
                                                refspec, self.port, 600)
        finally:
            shutil.rmtree(bare, ignore_errors=True)
        if not ok:
            raise RuntimeError(f"baseline push failed:\n{output}")
        return seconds

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


# ------------------------------------------------------------------------------ repos


def write_random_files(root: Path, rng: random.Random, total: int, file_size: int, prefix: str):
    root.mkdir(parents=True, exist_ok=True)
    written, index = 0, 0
    while written < total:
        size = min(file_size, total - written)
        (root / f"{prefix}{index:04d}.bin").write_bytes(rng.randbytes(size))
        written += size
        index += 1


def write_text_files(root: Path, rng: random.Random, total: int, file_size: int):
    """Source-like text (gzip shrinks it about 3x): lines drawn from a pool of lines made of
    words from a skewed vocabulary."""
    root.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz_"
    vocabulary = ["".join(rng.choices(letters, k=rng.randint(2, 12))) for _ in range(3000)]
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    words = rng.choices(vocabulary, weights=weights, k=20000 * 8)
    pool = [(" " * (4 * rng.randint(0, 3)) + " ".join(words[i:i + 8]) + "\n").encode()
            for i in range(0, len(words), 8)]
    written, index = 0, 0
    while written < total:
        data = b"".join(rng.choices(pool, k=file_size // 40))[:file_size]
        (root / f"src{index:04d}.txt").write_bytes(data)
        written += len(data)
        index += 1


def commit_all(ctx: Context, repo: Path, message: str, config=()):
    if not (repo / ".git").exists():
        ctx.git(repo, "init", "-q", "-b", "master")
        for key, value in config:
            ctx.git(repo, "config", key, value)
    ctx.git(repo, "add", "-A")
    ctx.git(repo, "commit", "-q", "-m", message)


def small_app(ctx: Context, path: Path) -> Path:
    """A Procfile app: only the built-in procfile buildpack matches, and it does nothing."""
    path.mkdir(parents=True)
    (path / "Procfile").write_text("web: python3 -m http.server $PORT\n")
    (path / "README.md").write_text("A benchmark app.\n")
    (path / "bin").mkdir()
    (path / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
    commit_all(ctx, path, "app")
    return path


def new_commit(ctx: Context, repo: Path, stamp: str):
    (repo / "STAMP").write_text(stamp + "\n")
    ctx.git(repo, "add", "STAMP")
    ctx.git(repo, "commit", "-q", "-m", stamp)


# ------------------------------------------------------------------------- benchmarks


def bench_receive(ctx: Context, runs: int) -> Figure:
    """#1. Both sides get the same client, the same packed repo and a fresh repository.

    Ours: the push goes to a branch the builder refuses in its pre-receive hook, so the
    time covers SSH, receive-pack (with receive.fsckObjects, which the builder always sets),
    the hook relay and the verdict, and no build. Baseline: sshd + git-receive-pack with
    git's defaults into a bare repo made just before (not timed), accepting the branch."""
    size = ctx.args.receive_mb * MIB
    log(f"#1: generating a {ctx.args.receive_mb} MB repo")
    repo = ctx.work / "repo-100mb"
    rng = random.Random(1)
    write_random_files(repo / "assets", rng, int(size * 0.7), 2 * MIB, "blob")
    write_text_files(repo / "src", rng, size - int(size * 0.7), 256 * 1024)
    (repo / "Procfile").write_text("web: true\n")
    commit_all(ctx, repo, "big")
    # One pack, as a real repo has: both pushes reuse its compressed objects.
    ctx.git(repo, "repack", "-a", "-d", "-q")
    sshd = Sshd(ctx)
    builder = Builder(ctx, "receive", s3=False)
    ours, baseline = [], []
    try:
        for run in range(runs + 1):
            base_s = sshd.receive(repo, "HEAD:refs/heads/bench")
            ok, ours_s, output = ctx.push(repo, builder.remote(f"recv{run}"), "HEAD:refs/heads/bench",
                                          builder.ssh_port, 600)
            if ok or "only the master or main branch deploys" not in output:
                raise RuntimeError(f"push to the builder was not refused by its hook as expected:\n{output}")
            if run == 0:
                continue  # warm-up: page cache, first ssh connections
            log(f"#1 run {run}: ours {ours_s:.2f}s, baseline {base_s:.2f}s")
            ours.append(ours_s)
            baseline.append(base_s)
    finally:
        builder.stop()
        sshd.stop()
    fig = Figure("1", f"receive a {ctx.args.receive_mb} MB push (fresh app)", "s", ours, baseline,
                 "sshd + git-receive-pack", target="≤ 1.10× baseline")
    fig.met = fig.ratio() <= 1.10
    return fig


def bench_end_to_end(ctx: Context, runs: int, s3: bool):
    """#4. Steady state: the same app, a new commit per push (one warm-up push first)."""
    app_dir = small_app(ctx, ctx.work / ("e2e-app-s3" if s3 else "e2e-app"))
    builder = Builder(ctx, "e2e-s3" if s3 else "e2e", s3=s3)
    times = []
    try:
        for run in range(runs + 1):
            new_commit(ctx, app_dir, f"run {run}")
            ok, seconds, output = ctx.push(app_dir, builder.remote("e2e"), "master", builder.ssh_port, 300)
            if not ok or "deployed" not in output:
                raise RuntimeError(f"end-to-end push failed:\n{output}\n{builder.log_tail()}")
            builder.wait_after_push(run + 1)
            if run:
                times.append(seconds)
                log(f"#4{' (S3)' if s3 else ''} run {run}: {seconds:.2f}s")
        events = builder.deployed_events()[1:]
    finally:
        builder.stop()
    names = ["receive", "config", "prepare", "container", "compile", "cache", "pack", "upload",
             "cleanup", "release", "elapsed"]
    stages = [(name if name != "elapsed" else "builder total",
               statistics.median(e.get(f"{name}_ms", 0) for e in events)) for name in names] if events else []
    storage = "S3 (moto)" if s3 else "local storage"
    fig = Figure("4" + (" (S3)" if s3 else ""), f"end-to-end push of a small app, {storage}", "s", times,
                 target="median ≤ 1.0 s")
    fig.met = statistics.median(times) <= 1.0
    if stages:
        parts = ", ".join(f"{name} {value:.0f}" for name, value in stages)
        fig.notes.append(f"median stage split ({storage}), ms: {parts}")
    return fig, stages


def bench_many(ctx: Context, runs: int, s3: bool) -> Figure:
    """#5. 20 pushes started at once, each to its own app, against a fresh builder."""
    count = ctx.args.concurrent
    app_dir = small_app(ctx, ctx.work / "many-app")
    walls, peaks, failures, slowest = [], [], [], []
    for run in range(runs):
        builder = Builder(ctx, f"many{run}", s3=s3)
        try:
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(count) as pool:
                results = list(pool.map(
                    lambda i: ctx.push(app_dir, builder.remote(f"many{run}-{i:02d}"), "master",
                                       builder.ssh_port, 600),
                    range(count)))
            wall = time.perf_counter() - started
            peak = builder.peak_rss_mib()
        finally:
            builder.stop()
        failed = [out for ok, _, out in results if not ok or "deployed" not in out]
        failures.extend(failed)
        walls.append(wall)
        peaks.append(peak)
        slowest.append(max(s for _, s, _ in results))
        log(f"#5 run {run + 1}: {count - len(failed)}/{count} deployed in {wall:.1f}s, builder peak RSS {peak:.0f} MB")
    fig = Figure("5", f"{count} pushes at once to distinct apps: builder peak RSS", "MB", peaks,
                 target="all succeed, ≤ 150 MB")
    fig.met = not failures and max(peaks) <= 150
    fig.notes.append(f"wall time for all {count} (min/median/max): {spread(walls, 's')}; "
                     f"{len(failures)} of {count * runs} pushes failed"
                     f"; storage {'S3 (moto)' if s3 else 'local'}")
    if failures:
        fig.notes.append("first failure: " + failures[0].strip().splitlines()[-1][:200])
    return fig


def bench_replicas(ctx: Context, runs: int) -> Figure:
    """#10. 20 pushes at once to distinct apps, spread over 3 builders on one bucket, vs the
    same 20 through 1 builder on a bucket of its own (same machine, same engine)."""
    count = ctx.args.concurrent
    app_dir = small_app(ctx, ctx.work / "replicas-app")
    walls = {1: [], 3: []}
    peaks, failures = [], []
    for run in range(runs):
        for replicas in (1, 3):
            bucket = f"bench-replicas{replicas}-{run}-{random.randrange(16**8):08x}"
            builders = [Builder(ctx, f"replicas{replicas}-{run}-{i}", s3=True, shared_bucket=bucket)
                        for i in range(replicas)]
            try:
                started = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(count) as pool:
                    results = list(pool.map(
                        lambda i: ctx.push(app_dir, builders[i % replicas].remote(f"r{replicas}-{run}-{i:02d}"),
                                           "master", builders[i % replicas].ssh_port, 600),
                        range(count)))
                wall = time.perf_counter() - started
                rss = [builder.peak_rss_mib() for builder in builders]
            finally:
                for builder in builders:
                    builder.stop()
                delete_bucket(ctx, bucket)
            failed = [out for ok, _, out in results if not ok or "deployed" not in out]
            failures.extend(failed)
            walls[replicas].append(wall)
            if replicas == 3:
                peaks.extend(rss)
            log(f"#10 run {run + 1}, {replicas} builder(s): {count - len(failed)}/{count} deployed in "
                f"{wall:.1f}s, peak RSS {' / '.join(f'{mb:.0f}' for mb in rss)} MB")
    fig = Figure("10", f"{count} pushes at once over 3 builders on one bucket: wall time", "s", walls[3],
                 baseline=walls[1], baseline_name="1 builder", target="all succeed")
    fig.met = not failures
    fig.notes.append(f"each of the 3 builders' peak RSS (min/median/max): {spread(peaks, 'MB')}; "
                     f"{len(failures)} of {2 * count * runs} pushes failed; one machine, one engine, "
                     "so 3 builders share the same 2 cores")
    if failures:
        fig.notes.append("first failure: " + failures[0].strip().splitlines()[-1][:200])
    return fig


def bench_lease_cost(ctx: Context, runs: int) -> Figure:
    """#11. What an app lease adds to an uncontended push on S3: taking it before
    receive-pack plus confirming it before the release (renewals and the release run off
    the push's path), from the builder's own log events."""
    app_dir = small_app(ctx, ctx.work / "lease-app")
    builder = Builder(ctx, "lease", s3=True)
    costs = []
    try:
        for run in range(runs):
            new_commit(ctx, app_dir, f"lease {run}")
            ok, _, output = ctx.push(app_dir, builder.remote("lease"), "master", builder.ssh_port, 300)
            if not ok:
                raise RuntimeError(f"push failed:\n{output}")
        taken = [float(e["lease_ms"]) for e in builder.events("took the app's lease")]
        confirmed = [float(e["confirm_ms"]) for e in builder.events("confirmed the app's lease before the release")]
        costs = [t + c for t, c in zip(taken, confirmed)]
    finally:
        builder.stop()
    fig = Figure("11", "what an app lease adds to an uncontended push (S3, moto)", "ms", costs,
                 target="-")
    fig.notes.append(f"take (min/median/max): {spread(taken, 'ms')}; confirm before the release: "
                     f"{spread(confirmed, 'ms')}")
    return fig


def bench_big(ctx: Context, runs: int, s3: bool) -> Figure:
    """#6. A 1 GB repo of incompressible files, so the slug is ~1 GB too."""
    size = ctx.args.big_mb * MIB
    log(f"#6: generating a {ctx.args.big_mb} MB repo")
    repo = ctx.work / "repo-big"
    write_random_files(repo / "data", random.Random(6), size, 32 * MIB, "chunk")
    (repo / "Procfile").write_text("web: true\n")
    # Client-side only: store the blobs uncompressed and without delta search, so the
    # client does not spend a minute deflating random bytes; the builder's work is the same.
    commit_all(ctx, repo, "big", config=[("core.compression", "0"), ("core.bigFileThreshold", "1m"),
                                          ("pack.window", "0")])
    peaks, times = [], []
    for run in range(runs):
        builder = Builder(ctx, f"big{run}", s3=s3,
                          extra=["--slug-max-size", "8g", "--slug-warn-size", "8g", "--max-push-size", "8g"])
        try:
            sampler = RssSampler(builder.proc.pid)
            ok, seconds, output = ctx.push(repo, builder.remote(f"big{run}"), "master", builder.ssh_port, 1800)
            if ok:
                builder.wait_after_push(1, 1800)  # its upload counts for the memory peak too
            sampler.stop()
            peak = builder.peak_rss_mib()
            events = builder.deployed_events()
            if not ok or "deployed" not in output:
                raise RuntimeError(f"1 GB push failed:\n{output}\n{builder.log_tail()}")
            slug = next((line.split("Compiled slug size is ")[1].strip()
                         for line in output.splitlines() if "Compiled slug size is" in line), "?")
        finally:
            builder.stop()
        peaks.append(peak)
        times.append(seconds)
        log(f"#6 run {run + 1}: push {seconds:.1f}s, slug {slug}, builder peak RSS {peak:.1f} MB "
            f"(idle {builder.idle_rss_kib / 1024:.0f} MB; RSS over time: {sampler.describe()})")
        if events:
            log("#6 stages (ms): " + ", ".join(f"{k[:-3]} {v}" for k, v in events[0].items() if k.endswith("_ms")))
    fig = Figure("6", f"one push of a {ctx.args.big_mb} MB repo (~{slug} slug): builder peak RSS", "MB",
                 peaks, target="≤ 64 MB")
    fig.met = max(peaks) <= 64
    fig.notes.append(f"push time {spread(times, 's')}; storage {'S3 (moto)' if s3 else 'local'}")
    return fig


def bench_dockerfile(ctx: Context, runs: int) -> Figure:
    """#7. A small Dockerfile app (FROM the stack image, 2 MB copied first and cached, then
    a file that changes every run, then one RUN), pushed to the registry. Ours: the
    builder's part of the push (the `deployed` event's elapsed time: everything after the
    receive, release included). Baseline, interleaved on the same tree: `docker build -t
    REG/x:vN . && docker push REG/x:vN` with the same engine and registry."""
    registry, stack = ctx.args.registry, ctx.args.stack_image
    app = ctx.work / "dockerfile-app"
    app.mkdir()
    (app / "Dockerfile").write_text(
        f"FROM {stack}\nCOPY data.bin /srv/data.bin\nCOPY STAMP /srv/STAMP\n"
        "RUN cat /srv/STAMP > /srv/built\nCMD [\"cat\", \"/srv/built\"]\n")
    (app / "data.bin").write_bytes(random.Random(7).randbytes(2 * MIB))
    (app / "Procfile").write_text("web: cat /srv/built\n")
    (app / "STAMP").write_text("first\n")
    commit_all(ctx, app, "first")
    # The engine's default network for `docker build` here (no bridge) is the host's; the
    # builder gets the same, as scripts/run.sh sets it up. (`none` costs ~70 ms a RUN step.)
    builder = Builder(ctx, "dockerfile", s3=False,
                      extra=("--registry", registry, "--build-network", "host"))
    ours, baseline, splits, created = [], [], [], []
    app_name = f"bench-df-{random.randrange(16**6):06x}"
    try:
        for run in range(runs + 1):
            new_commit(ctx, app, f"run {run} {time.time()}")
            ok, _, output = ctx.push(app, builder.remote(app_name), "master", builder.ssh_port, 300)
            if not ok or "deployed" not in output:
                raise RuntimeError(f"Dockerfile push failed:\n{output}\n{builder.log_tail()}")
            if run and "Using cache" not in output:
                raise RuntimeError(f"the unchanged layers were not reused:\n{output}")
            event = builder.deployed_events()[-1]
            created.append(f"{registry}/{app_name}:git-{ctx.git(app, 'rev-parse', 'HEAD').strip()[:8]}")
            tag = f"{registry}/bench-df-baseline:v{run}"
            created.append(tag)
            started = time.perf_counter()
            for command in (["docker", "build", "-q", "-t", tag, "."], ["docker", "push", "-q", tag]):
                done = subprocess.run(command, cwd=app, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
                if done.returncode:
                    raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}")
            base_s = time.perf_counter() - started
            if run == 0:
                continue  # warm-up: the base layers reach the registry once
            ours.append(event["elapsed_ms"] / 1000)
            baseline.append(base_s)
            splits.append(event)
            log(f"#7 run {run}: builder {event['elapsed_ms']} ms, docker build + push {base_s * 1000:.0f} ms")
    finally:
        builder.stop()
        for tag in created:
            subprocess.run(["docker", "rmi", "-f", tag], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fig = Figure("7", "Dockerfile push to the registry: the builder's part", "s", ours, baseline,
                 "docker build + docker push", target="≤ 1.10× baseline")
    fig.met = fig.ratio() <= 1.10
    names = ["config", "context", "tag", "build", "push", "release"]
    parts = ", ".join(f"{name} {statistics.median(e.get(f'{name}_ms', 0) for e in splits):.0f}"
                      for name in names)
    fig.notes.append(f"median stage split, ms: {parts}")
    return fig


def stage_split(events: list) -> str:
    """Median of each `*_ms` field of `deployed` events, in the events' order."""
    if not events:
        return "-"
    names = [key for key in events[0] if key.endswith("_ms")]
    return ", ".join(f"{name[:-3]} {statistics.median(e.get(name, 0) for e in events):.0f}"
                     for name in names)


def bench_small_push(ctx: Context, runs: int) -> Figure:
    """#8. The small app of #4 on S3, a new commit per push, against two builders run side
    by side: build files shared with the local engine (`--build-files auto`, the default)
    and copied through the engine's API (`copy`, what every build did before)."""
    app_dir = small_app(ctx, ctx.work / "small-push-app")
    modes = ("auto", "copy")
    builders = {mode: Builder(ctx, f"small-{mode}", s3=True, extra=["--build-files", mode])
                for mode in modes}
    times = {mode: [] for mode in modes}
    try:
        for run in range(runs + 1):
            for mode in modes:
                builder = builders[mode]
                new_commit(ctx, app_dir, f"{mode} {run}")
                ok, seconds, output = ctx.push(app_dir, builder.remote("small"), "master",
                                               builder.ssh_port, 300)
                if not ok or "deployed" not in output:
                    raise RuntimeError(f"small push failed ({mode}):\n{output}\n{builder.log_tail()}")
                builder.wait_after_push(run + 1)
                if run:
                    times[mode].append(seconds)
            if run:
                log(f"#8 run {run}: shared {times['auto'][-1]:.3f}s, copied {times['copy'][-1]:.3f}s")
        events = {mode: builders[mode].deployed_events()[1:] for mode in modes}
    finally:
        for builder in builders.values():
            builder.stop()
    builder_part = {mode: statistics.median(e.get("elapsed_ms", 0) for e in events[mode]) / 1000
                    for mode in modes}
    fig = Figure("8", "small push (S3): client-side `git push`, files shared", "s", times["auto"],
                 times["copy"], "files copied (`--build-files copy`)",
                 target="median ≤ 0.25 s, builder's part ≤ 0.15 s")
    fig.met = statistics.median(times["auto"]) <= 0.25 and builder_part["auto"] <= 0.15
    for mode in modes:
        fig.notes.append(f"{'shared' if mode == 'auto' else 'copied'}: builder's part (median "
                         f"`elapsed`) {builder_part[mode]:.3f} s; stages, ms: {stage_split(events[mode])}")
    return fig


def bench_beyond_receive(ctx: Context, runs: int) -> Figure:
    """#9. An 80 MB app (40 MB random data, 40 MB text, a Procfile), pushed fresh each run.
    Ours: the builder's work beyond a plain receive, i.e. the client's `git push` to the
    builder minus its push to sshd + git-receive-pack of the same repo. Baseline: the old
    pipeline's own steps on the same tree, `tar -cz | aws s3 cp -` to the same S3 server.
    All interleaved; the copy mode runs beside for the before figure."""
    size = ctx.args.beyond_mb * MIB
    log(f"#9: generating a {ctx.args.beyond_mb} MB app")
    repo = ctx.work / "repo-beyond"
    rng = random.Random(9)
    write_random_files(repo / "data", rng, size // 2, 2 * MIB, "blob")
    write_text_files(repo / "src", rng, size - size // 2, 256 * 1024)
    (repo / "Procfile").write_text("web: true\n")
    commit_all(ctx, repo, "beyond")
    ctx.git(repo, "repack", "-a", "-d", "-q")
    tree = ctx.work / "tree-beyond"
    shutil.copytree(repo, tree, ignore=shutil.ignore_patterns(".git"))
    bucket = f"bench-beyond-{random.randrange(16**8):08x}"
    aws = ["aws", "--endpoint-url", ctx.args.s3_endpoint, "s3"]
    subprocess.run(aws + ["mb", f"s3://{bucket}"], check=True, stdout=subprocess.DEVNULL)
    sshd = Sshd(ctx)
    modes = ("auto", "copy")
    extra = ["--slug-max-size", "2g", "--slug-warn-size", "2g"]
    builders = {mode: Builder(ctx, f"beyond-{mode}", s3=True, extra=extra + ["--build-files", mode])
                for mode in modes}
    beyond = {mode: [] for mode in modes}
    baseline, events = [], {mode: [] for mode in modes}
    try:
        for run in range(runs + 1):
            receive_s = sshd.receive(repo, "HEAD:refs/heads/master")
            pushed = {}
            for mode in modes:
                builder = builders[mode]
                ok, seconds, output = ctx.push(repo, builder.remote(f"beyond{run}"), "master",
                                               builder.ssh_port, 600)
                if not ok or "deployed" not in output:
                    raise RuntimeError(f"push failed ({mode}):\n{output}\n{builder.log_tail()}")
                pushed[mode] = seconds
                builder.wait_after_push(run + 1)
            started = time.perf_counter()
            subprocess.run(f"tar -cz -C {shlex.quote(str(tree))} . | "
                           f"{' '.join(map(shlex.quote, aws))} cp - s3://{bucket}/run{run}.tgz",
                           shell=True, check=True, stdout=subprocess.DEVNULL)
            old = time.perf_counter() - started
            if run == 0:
                continue  # warm-up
            for mode in modes:
                beyond[mode].append(pushed[mode] - receive_s)
            baseline.append(old)
            log(f"#9 run {run}: receive {receive_s:.2f}s; beyond it: shared {beyond['auto'][-1]:.2f}s, "
                f"copied {beyond['copy'][-1]:.2f}s; tar -cz + aws s3 cp {old:.2f}s")
        for mode in modes:
            events[mode] = builders[mode].deployed_events()[1:]
    finally:
        for builder in builders.values():
            builder.stop()
        sshd.stop()
        delete_bucket(ctx, bucket)
    fig = Figure("9", f"{ctx.args.beyond_mb} MB app: builder work beyond a plain receive, files shared",
                 "s", beyond["auto"], baseline, "tar -cz + aws s3 cp", target="≤ 0.4× baseline")
    fig.met = fig.ratio() <= 0.4
    copied = statistics.median(beyond["copy"]) / statistics.median(baseline)
    fig.notes.append(f"files copied (`--build-files copy`): {spread(beyond['copy'], 's')}, "
                     f"{copied:.2f}× baseline")
    for mode in modes:
        fig.notes.append(f"{'shared' if mode == 'auto' else 'copied'}: stages, ms: {stage_split(events[mode])}")
    return fig


def external_results(path: Path) -> list:
    """Figures #2 and #3 from the lines `cargo bench --bench pack|upload` print:
    `bench pack ours_min_s=.. ours_median_s=.. ours_max_s=.. base_min_s=.. ... ratio=..`."""
    figures = []
    for line in path.read_text().splitlines():
        words = line.split()
        if len(words) < 3 or words[0] != "bench":
            continue
        name, values = words[1], dict(w.split("=", 1) for w in words[2:] if "=" in w)
        if "skipped" in words:
            raise RuntimeError(f"{name} benchmark skipped: {values.get('reason', '?')}")
        ours = [float(values[f"ours_{k}_s"]) for k in ("min", "median", "max")]
        base = [float(values[f"base_{k}_s"]) for k in ("min", "median", "max")]
        if name == "pack":
            size_ratio = float(values["size_ratio"])
            fig = Figure("2", f"pack a {int(values['input_bytes']) / MIB:.0f} MB app tree into a slug", "s",
                         ours, base, "tar -cz (gzip -6)", ratio_kind="speedup",
                         target="≥ 2.5× faster, size ≤ 1.02×")
            fig.met = fig.ratio() >= 2.5 and size_ratio <= 1.02
            fig.notes.append(f"slug size {int(values['size_bytes'])} bytes vs tar -cz "
                             f"{int(values['base_size_bytes'])} bytes: {size_ratio:.4f}×")
        elif name == "upload":
            server = values.get("server", "moto")
            number = "3" if server == "moto" else f"3 ({server})"
            fig = Figure(number, f"upload a {int(values['slug_bytes']) / MIB:.0f} MB slug to the S3 server "
                         f"({server})", "s", ours, base, "aws s3 cp", ratio_kind="speedup",
                         target="≥ 1.5× faster")
            fig.met = fig.ratio() >= 1.5
            fig.notes.append(f"{values.get('ours_mib_s', '?')} MiB/s vs {values.get('base_mib_s', '?')} MiB/s; "
                             f"S3 server CPU seconds per upload {values.get('ours_server_cpu_s', '?')} (ours) vs "
                             f"{values.get('base_server_cpu_s', '?')} (aws s3 cp); client CPU seconds "
                             f"{values.get('ours_cpu_s', '?')} vs {values.get('base_cpu_s', '?')}")
        else:
            continue
        fig.notes.append(f"{values.get('runs', '?')} runs, `cargo bench --bench {name}`"
                         f"{'' if name == 'pack' else ' against ' + values.get('server', 'moto')}, "
                         f"load {values.get('load1', '?')}")
        figures.append(fig)
    return figures


def machine_description() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    ssh_version = subprocess.run(["ssh", "-V"], stderr=subprocess.PIPE, text=True).stderr.strip()
    git_version = subprocess.run(["git", "--version"], stdout=subprocess.PIPE, text=True).stdout.strip()
    return (f"{os.cpu_count()} × {cpu}, {mem_kib // 1024 // 1024 + 1} GB RAM, Linux {platform.release()}, "
            f"{git_version}, {ssh_version}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exe", required=True, help="the deis-builder binary (release build)")
    parser.add_argument("--quick", action="store_true", help="fewer runs, smaller #6 (256 MB)")
    parser.add_argument("--runs", type=int, help="runs per timed figure (default 5, quick 3)")
    parser.add_argument("--only", default="1,2,3,4,5,6,7,8,9,10,11", help="comma-separated figure numbers")
    parser.add_argument("--registry", help="registry host:port for #7 (skipped without)")
    parser.add_argument("--s3-endpoint", help="S3 server for #4 (S3), #5 and #6; local storage without")
    parser.add_argument("--s3-python", help="a python with boto3, to delete benchmark buckets")
    parser.add_argument("--stack-image")
    parser.add_argument("--external", action="append", default=[],
                        help="output of `cargo bench --bench pack|upload` (#2, #3) to include")
    parser.add_argument("--summary", help="write the Markdown summary here")
    parser.add_argument("--command-line", default="scripts/bench.sh", help="shown in the summary")
    parser.add_argument("--receive-mb", type=int, default=100)
    parser.add_argument("--big-mb", type=int)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--beyond-mb", type=int, default=80, help="app size of #9")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 5)
    if args.big_mb is None:
        args.big_mb = 256 if args.quick else 1024
    only = {part.strip() for part in args.only.split(",")}
    s3 = bool(args.s3_endpoint)

    ctx = Context(args)
    context = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_description(),
        "command": args.command_line,
        "load_before": load_average(),
    }
    figures, stages, errors = [], [], []

    def attempt(name, work):
        try:
            return work()
        except Exception as error:  # one broken figure must not hide the others
            log(f"{name} failed: {error}")
            errors.append(f"{name}: {str(error).strip().splitlines()[0] if str(error).strip() else error!r}")
            return None

    try:
        if "1" in only:
            fig = attempt("#1", lambda: bench_receive(ctx, runs))
            if fig:
                figures.append(fig)
                print_figure(fig)
        for path in args.external:
            for fig in attempt(f"results of {path}", lambda: external_results(Path(path))) or []:
                figures.append(fig)
                print_figure(fig)
        if "4" in only:
            result = attempt("#4", lambda: bench_end_to_end(ctx, max(runs, 5) * 2, s3=False))
            if result:
                figures.append(result[0])
                stages = result[1]
                print_figure(result[0])
            if s3 and not args.quick:
                result = attempt("#4 (S3)", lambda: bench_end_to_end(ctx, max(runs, 5), s3=True))
                if result:
                    figures.append(result[0])
                    print_figure(result[0])
        optional = [
            ("5", True, lambda: bench_many(ctx, 1 if args.quick else 2, s3)),
            ("6", True, lambda: bench_big(ctx, 1, s3)),
            ("7", bool(args.registry), lambda: bench_dockerfile(ctx, max(runs, 4))),
            ("8", s3, lambda: bench_small_push(ctx, max(runs, 5) * 2)),
            ("9", s3, lambda: bench_beyond_receive(ctx, runs)),
            ("10", s3, lambda: bench_replicas(ctx, 1)),
            ("11", s3, lambda: bench_lease_cost(ctx, max(runs, 5) * 2)),
        ]
        for number, possible, work in optional:
            if number in only and possible:
                fig = attempt(f"#{number}", work)
                if fig:
                    figures.append(fig)
                    print_figure(fig)
    finally:
        ctx.cleanup()
    context["load_after"] = load_average()
    summary = markdown(figures, context, stages)
    if errors:
        summary += "\nFailed to run:\n" + "".join(f"- {e}\n" for e in errors)
    print("\n==== summary (Markdown, for BENCHMARKS.md) ====\n")
    print(summary)
    if args.summary:
        Path(args.summary).write_text(summary)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
