"""Write the newest benchmark figures into a model's manifest and re-render its model card.

python scripts/card_performance.py src/sentistream/models/tweet-sentiment/1
python scripts/card_performance.py src/sentistream/models/tweet-sentiment/2 \
    --suite benchmarks/results/2026-12-02-vm.json [--stream benchmarks/results/X-stream.json]

Without ``--suite``: the newest ``make bench-classify`` and ``make bench-server`` files. With it:
the suite run (`make bench`) of this model, plus a stream benchmark file if given.
"""

from __future__ import annotations

import json
from pathlib import Path

from sentistream.manifest import load_manifest
from sentistream.training.card import render_model_card

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def newest(kind: str) -> dict | None:  # type: ignore[type-arg]
    files = sorted(RESULTS.glob(f"*-{kind}.json"))
    return json.loads(files[-1].read_text()) if files else None


def suite_rows(suite: dict, stream: dict | None) -> list[dict[str, str]]:  # type: ignore[type-arg]
    """Rows of one ``make bench`` run (and a ``make bench-stream`` run), each with its command."""
    m = suite["machine"]
    machine = f"{m['cpu']}, {m['cores']} cores"
    ours = suite["classify"]["runs"]["sentistream classify"]
    cli = suite["serverless"]["cli"]
    lat = suite["latency"]["ours_rest"]
    rows = [
        {
            "figure": f"file throughput, process start included ({machine}, {suite['date'][:10]})",
            "value": f"{ours['posts_per_s']['median']:.0f} posts/s, "
            f"{suite['classify']['ratio_vs_default_pipeline']:.1f}x the transformers pipeline",
            "command": "make bench",
        },
        {
            "figure": "file throughput in process",
            "value": f"{ours['in_process_posts_per_s']['median']:.0f} posts/s",
            "command": "make bench",
        },
        {
            "figure": "model FLOP utilisation (bucketed, vs measured int8 peak)",
            "value": f"{suite['roofline']['best_mfu']:.1%}",
            "command": "make bench",
        },
        {
            "figure": "cold start to printed answer",
            "value": f"{cli['wall_s']['median']:.2f} s, "
            f"peak RSS {cli['peak_rss_mb']['median']:.0f} MB",
            "command": 'sentistream classify "I love this"',
        },
        {
            "figure": "server saturation / p50, p99 at 50% of it (REST, one text per request)",
            "value": f"{lat['saturation']['texts_per_s']:.0f} req/s / "
            f"{lat['levels']['50%']['p50_ms']:.1f}, {lat['levels']['50%']['p99_ms']:.1f} ms",
            "command": "make bench",
        },
    ]
    if stream:
        two = stream["ours"]["2_workers_x_1_thread"]
        rows.append(
            {
                "figure": "stream, Redis in -> 2 workers -> Redis out",
                "value": f"{two['posts_per_s']['median']:.0f} posts/s, "
                f"{two['ratio_vs_naive']}x the naive loop",
                "command": "make bench-stream",
            }
        )
    return rows


def main(folder: Path, suite: Path | None = None, stream: Path | None = None) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    if suite is not None:
        manifest["performance"] = suite_rows(
            json.loads(suite.read_text()),
            json.loads(stream.read_text()) if stream is not None else None,
        )
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        load_manifest(folder)
        (folder / "README.md").write_text(render_model_card(manifest))
        print(json.dumps(manifest["performance"], indent=2))
        return
    rows = []
    cli = newest("classify")
    if cli:
        machine = f"{cli['machine']['cpu']}, {cli['machine']['cores']} cores"
        f, c = cli["file_throughput"], cli["cold_start"]
        rows += [
            {
                "figure": f"file throughput, process start included ({machine})",
                "value": f"{f['posts_per_s_process']['median']:.0f} posts/s ({f['posts']} posts)",
                "command": "make bench",
            },
            {
                "figure": "file throughput in process",
                "value": f"{f['posts_per_s_in_process']['median']:.0f} posts/s",
                "command": "make bench",
            },
            {
                "figure": "cold start to printed answer",
                "value": f"{c['wall_s']['median']:.2f} s, "
                f"peak RSS {c['peak_rss_mb']['median']:.0f} MB",
                "command": 'sentistream classify "I love this"',
            },
        ]
    server = newest("server")
    if server:
        best = max(server["runs"].values(), key=lambda r: r["ours_grpc"]["texts_per_s"])
        light = server["runs"].get("1", {})
        rows += [
            {
                "figure": "server throughput (gRPC, best concurrency)",
                "value": f"{best['ours_grpc']['texts_per_s']} texts/s, "
                f"{best['ratio_grpc_vs_baseline']}x the transformers pipeline",
                "command": "make bench-server",
            },
            {
                "figure": "server single-text p50 at light load (REST)",
                "value": f"{light.get('ours_rest', {}).get('p50_ms')} ms",
                "command": "make bench-server",
            },
            {
                "figure": "server cold start to ready / idle RSS",
                "value": f"{server['ours_cold_start_to_ready_s']} s / "
                f"{server['ours_idle_rss_mb']} MB",
                "command": "make bench-server",
            },
        ]
    manifest["performance"] = rows
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    load_manifest(folder)
    (folder / "README.md").write_text(render_model_card(manifest))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--suite", type=Path, help="a `make bench` result JSON")
    parser.add_argument("--stream", type=Path, help="a `make bench-stream` result JSON")
    args = parser.parse_args()
    main(args.folder, args.suite, args.stream)
