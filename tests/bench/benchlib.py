"""What the bench scripts share: where the built host and component are, and wall-clock
timing of one command with its peak RSS."""
import json, os, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = os.path.join(ROOT, "target/release/erofs-host")
WASM = os.path.join(ROOT, "target/wasm32-wasip2/release/erofs_component.wasm")


def timed(cmd, stdout=subprocess.DEVNULL):
    """Wall seconds and peak RSS (KiB) of one run of cmd; exits the bench if cmd fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({status})")
    return wall, usage.ru_maxrss


def best(cmd, runs=3):
    """The shortest wall time and the largest peak RSS of `runs` runs of cmd."""
    results = [timed(cmd) for _ in range(runs)]
    return min(r[0] for r in results), max(r[1] for r in results)


def log_lines(path):
    """The JSON lines of a harness log (requests, links); none if it is not there yet."""
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []
