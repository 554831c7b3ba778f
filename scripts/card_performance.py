"""Write the newest benchmark figures into a model's manifest and re-render its model card.

python scripts/card_performance.py src/sentistream/models/tweet-sentiment/1
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sentistream.manifest import load_manifest
from sentistream.training.card import render_model_card

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def newest(kind: str) -> dict | None:  # type: ignore[type-arg]
    files = sorted(RESULTS.glob(f"*-{kind}.json"))
    return json.loads(files[-1].read_text()) if files else None


def main(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
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
    main(Path(sys.argv[1]))
