"""A task's effective policy: each setting, unless the task overrides it."""

from __future__ import annotations

from core.settings import Settings
from core.tables import StudentVersion, Task
from core.task_policy import effective_policy

SETTINGS = Settings(target_agreement=0.95, publish_min_share=0.3, drift_agreement_floor=0.85)


def calibrated(threshold: float | None) -> StudentVersion:
    return StudentVersion(
        id="v",
        task="t",
        number=1,
        base_model="-",
        adapter_name="t-v1",
        adapter_path="-",
        confidence_threshold=threshold,
    )


def test_a_task_without_overrides_gets_the_settings() -> None:
    policy = effective_policy(Task(name="t"), SETTINGS)
    assert (policy.target_agreement, policy.publish_min_share) == (0.95, 0.3)
    assert policy.drift_agreement_floor == 0.85
    assert policy.threshold_for(calibrated(-0.4)) == -0.4


def test_a_tasks_own_target_overrides_the_setting() -> None:
    policy = effective_policy(Task(name="t", target_agreement=0.99), SETTINGS)
    assert policy.target_agreement == 0.99


def test_the_drift_floor_never_exceeds_the_tasks_target() -> None:
    policy = effective_policy(Task(name="t", target_agreement=0.8), SETTINGS)
    assert policy.drift_agreement_floor == 0.8


def test_a_tasks_own_threshold_overrides_the_versions_calibrated_one() -> None:
    policy = effective_policy(Task(name="t", confidence_threshold=-0.1), SETTINGS)
    assert policy.threshold_for(calibrated(-0.4)) == -0.1
    assert policy.threshold_for(calibrated(None)) == -0.1
    assert effective_policy(Task(name="t"), SETTINGS).threshold_for(None) is None


def test_a_task_not_stored_yet_gets_the_settings_and_the_task_defaults() -> None:
    policy = effective_policy(None, SETTINGS)
    assert policy.target_agreement == 0.95
    assert (policy.shadow_percent, policy.audit_percent, policy.auto_ramp) == (100.0, 5.0, False)


def test_the_controllers_threshold_applies_to_the_version_it_was_set_for() -> None:
    task = Task(name="t", controlled_threshold=-0.6, controlled_version_id="v")
    policy = effective_policy(task, SETTINGS)
    assert policy.threshold_for(calibrated(-0.4)) == -0.6
    other = calibrated(-0.4).model_copy(update={"id": "w"})
    assert policy.threshold_for(other) == -0.4


def test_an_admins_threshold_wins_over_the_controllers() -> None:
    task = Task(
        name="t", confidence_threshold=-0.1, controlled_threshold=-0.6, controlled_version_id="v"
    )
    policy = effective_policy(task, SETTINGS)
    assert policy.overridden
    assert policy.threshold_for(calibrated(-0.4)) == -0.1


def test_a_version_that_never_reached_the_target_gets_no_controlled_threshold() -> None:
    task = Task(name="t", controlled_threshold=-0.6, controlled_version_id="v")
    assert effective_policy(task, SETTINGS).threshold_for(calibrated(None)) is None
