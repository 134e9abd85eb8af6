"""An analysis's learned normal, kept in the database, and the operator's examples.

- What the learning period produced is saved once it ends (LearnedMemory) so a worker that
  takes over a running analysis resumes without relearning. Embeddings belong to a model:
  a memory learned with another model is refused with a clear message (re-run to relearn).
- Exemplars (images an operator gave, frames of incidents marked false alarm or
  confirmed) are embedded here, by the worker: the web process never loads the model. The
  image is kept, so a model change re-embeds them instead of losing them.
- `ExampleWatch` notices added or removed exemplars between two polls (one aggregate
  query), so a running analysis picks feedback up without a restart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from django.db.models import Count, Max, QuerySet

from detection.actions import exemplars_for
from detection.engine import EngineError
from detection.engine.detector import Detector
from detection.engine.features import N_VIEWS
from detection.engine.images import load_image
from detection.models import Analysis, Exemplar, LearnedMemory

log = logging.getLogger(__name__)


def model_key(detector: Detector) -> str:
    """Which embeddings these are: the architecture, the weights and the views."""
    return detector.feature_key


def embed_exemplars(detector: Detector, exemplars: QuerySet[Exemplar]) -> int:
    """Embed the exemplars that have no embedding from this model; returns how many."""
    key = model_key(detector)
    todo = list(exemplars.exclude(model_spec=key).exclude(image=""))
    todo += list(exemplars.filter(model_spec=key, embedding__isnull=True).exclude(image=""))
    done = 0
    for exemplar in todo:
        try:
            with exemplar.image.open("rb") as handle:
                frame = load_image(handle.read())
        except (OSError, EngineError) as exc:
            log.warning("exemplar %s: its image cannot be read (%s); left out", exemplar.pk, exc)
            continue
        views = detector.embed([frame])[0].astype(np.float32)
        Exemplar.objects.filter(pk=exemplar.pk).update(embedding=views.tobytes(), model_spec=key)
        done += 1
    return done


def example_views(
    detector: Detector, exemplars: QuerySet[Exemplar]
) -> tuple[np.ndarray, np.ndarray]:
    """(normal, anomaly) views arrays of the exemplars embedded by this model."""
    key = model_key(detector)
    rows = exemplars.filter(model_spec=key, embedding__isnull=False).values_list(
        "kind", "embedding"
    )
    kinds: dict[str, list[np.ndarray]] = {Exemplar.Kind.NORMAL: [], Exemplar.Kind.ANOMALY: []}
    for kind, data in rows:
        kinds[kind].append(np.frombuffer(bytes(data), np.float32).reshape(N_VIEWS, -1))
    return _stack(kinds[Exemplar.Kind.NORMAL]), _stack(kinds[Exemplar.Kind.ANOMALY])


def _stack(items: list[np.ndarray]) -> np.ndarray:
    return np.stack(items) if items else np.zeros((0, 0, 0), np.float32)


@dataclass
class ExampleWatch:
    """The exemplars' (count, newest id) at the last look: a change means reload."""

    seen: tuple[int, int | None] | None = None

    def changed(self, exemplars: QuerySet[Exemplar]) -> bool:
        now = exemplars.aggregate(n=Count("pk"), newest=Max("pk"))
        state = (now["n"], now["newest"])
        if state == self.seen:
            return False
        self.seen = state
        return True


def load_examples(detector: Detector, analysis: Analysis) -> int:
    """Embed what needs it and hand the examples to the detector; returns how many."""
    exemplars = exemplars_for(analysis)
    embed_exemplars(detector, exemplars)
    normal, anomalies = example_views(detector, exemplars)
    detector.set_examples(normal, anomalies)
    return len(normal) + len(anomalies)


def save_learned(analysis: Analysis, detector: Detector) -> None:
    LearnedMemory.objects.update_or_create(
        analysis=analysis,
        defaults={
            "model_spec": model_key(detector),
            "frames": len(detector.learned_prompt_scores),
            "data": detector.learned_state(),
        },
    )


def restore_learned(analysis: Analysis, detector: Detector) -> bool:
    """Give the detector what this analysis learned before; False if nothing was saved."""
    memory = LearnedMemory.objects.filter(analysis=analysis).first()
    if memory is None:
        return False
    key = model_key(detector)
    if memory.model_spec != key:
        raise EngineError(
            f"this analysis learned its normal with {memory.model_spec.replace('|', ' / ')}, "
            f"but the configured model is {key.replace('|', ' / ')}: embeddings of two "
            "models cannot be compared; re-run the analysis to relearn (examples are "
            "re-embedded automatically)"
        )
    detector.restore_learned(bytes(memory.data))
    return True
