"""`manage.py analyze_image PATH`: score one image against normal/anomaly prompts."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from detection.api import analyze_image

from ._analyze import AnalyzeCommand


class Command(AnalyzeCommand):
    help = "Score one image with CLIP; JSON with --json; exit 2 on bad input."

    def add_arguments(self, parser: ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--localize",
            action="store_true",
            help="when anomalous, also find the most anomalous cell of a 4x4 grid",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        normal, anomaly = self.prompts(options)
        result = analyze_image(
            options["path"], normal, anomaly, localize=options["localize"], **self.common(options)
        )
        summary = ""
        if result["status"] == "Success":
            summary = (
                f"{result['label']}: score {result['score']:.4f} (threshold "
                f"{result['threshold']:g}); cosine normal {result['normal']:.4f}, "
                f"anomaly {result['anomaly']:.4f}"
            )
            if "box" in result:
                b = result["box"]
                summary += f"; most anomalous cell x {b['x0']}-{b['x1']}, y {b['y0']}-{b['y1']}"
        self.finish(result, options["json"], summary)
