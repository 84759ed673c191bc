"""What the app's lifespan builds and every route uses."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from sqlalchemy.engine import Engine

from core.metrics import Metrics
from core.settings import Settings
from distiller.backends import StudentBackend
from proxy.capture import CaptureWriter
from proxy.teacher import Teacher
from router.difficulty import DifficultyGate
from router.policy import PolicyCache
from router.scoring import Scorer
from router.student import StudentClient


@dataclass(slots=True)
class Runtime:
    settings: Settings
    metrics: Metrics
    engine: Engine
    http_client: httpx.AsyncClient
    teacher: Teacher
    capture: CaptureWriter | None
    student_backend: StudentBackend
    policies: PolicyCache
    student_client: StudentClient
    scorer: Scorer
    difficulty: DifficultyGate | None

    @property
    def teacher_key(self) -> str | None:
        """The server-held teacher key, if the server holds one."""
        key = self.settings.teacher_api_key
        return key.get_secret_value() if key is not None else None
