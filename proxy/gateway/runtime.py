"""What the app's lifespan builds and every route uses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from sqlalchemy.engine import Engine

from core.metrics import Metrics
from core.settings import Settings
from distiller.backends import StudentReplicas
from proxy.gateway.capture import CaptureWriter
from proxy.gateway.teacher import Teacher
from router.classifier import ClassifierStudent
from router.difficulty import DifficultyGate
from router.policy import PolicyCache
from router.route import Router
from router.scoring import Scorer
from router.student import Student, StudentClient


@dataclass(slots=True)
class Runtime:
    settings: Settings
    metrics: Metrics
    engine: Engine
    http_client: httpx.AsyncClient
    teacher: Teacher
    capture: CaptureWriter | None
    student_backend: StudentReplicas
    policies: PolicyCache
    students: Student  # every kind: the student server's LoRA versions, classifiers here
    student_client: StudentClient  # the student server's replicas, for LoRA versions
    classifiers: ClassifierStudent
    scorer: Scorer
    difficulty: DifficultyGate | None
    router: Router
    # The teacher of /v1/messages (STILLROOM_ANTHROPIC_URL), on the same pooled client.
    anthropic: Teacher = field(init=False)
    # Processes this one depends on (``stillroom serve``'s distiller): name -> its state,
    # "ok" or what is wrong; ``/readyz`` reports each.
    processes: dict[str, Callable[[], str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        base_url = self.settings.anthropic_url.removesuffix("/v1") + "/v1"
        self.anthropic = Teacher(base_url=base_url, client=self.http_client, metrics=self.metrics)

    @property
    def teacher_key(self) -> str | None:
        """The server-held teacher key, if the server holds one."""
        key = self.settings.teacher_api_key
        return key.get_secret_value() if key is not None else None

    @property
    def anthropic_key(self) -> str | None:
        """The server-held Anthropic key, if the server holds one."""
        key = self.settings.anthropic_api_key
        return key.get_secret_value() if key is not None else None
