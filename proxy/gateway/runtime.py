"""What the app's lifespan builds and every route uses."""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def teacher_key(self) -> str | None:
        """The server-held teacher key, if the server holds one."""
        key = self.settings.teacher_api_key
        return key.get_secret_value() if key is not None else None
