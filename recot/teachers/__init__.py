"""Teachers behind one small interface (:class:`recot.teachers.base.Teacher`), chosen by the ``kind`` of the
``[teacher]`` table from a registry.

The registry maps a kind to its :class:`~recot.teachers.base.TeacherKind` (config class, factory, the tasks it can
answer). recot's own are ``rules``, ``vllm`` and ``openai``; a user package adds one without touching recot by
declaring a ``TeacherKind`` under the ``recot.teachers`` entry points::

    [project.entry-points."recot.teachers"]
    mybackend = "my_package.teacher:KIND"

:data:`TeacherConfig` is the union of every registered config, told apart by ``kind``, so each backend's table
holds only its own fields and a typo is refused when the config loads.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field

from recot.teachers.base import Request, Response, Sampling, Teacher, TeacherInputs, TeacherKind, UnsupportedTask
from recot.teachers.openai_http import OpenAITeacherConfig
from recot.teachers.rules import RulesTeacherConfig
from recot.teachers.vllm_engine import VLLMTeacherConfig

__all__ = ["TEACHERS", "OpenAITeacherConfig", "Request", "Response", "RulesTeacherConfig", "Sampling", "Teacher", "TeacherConfig",
           "TeacherInputs", "TeacherKind", "UnsupportedTask", "VLLMTeacherConfig", "check_tasks", "make_teacher"]

BUILTIN = ("recot.teachers.rules", "recot.teachers.vllm_engine", "recot.teachers.openai_http")


def _registry() -> dict[str, TeacherKind]:
    kinds = [import_module(module).KIND for module in BUILTIN]
    kinds += [ep.load() for ep in entry_points(group="recot.teachers")]
    return {kind.name: kind for kind in kinds}


TEACHERS: dict[str, TeacherKind] = _registry()
if TYPE_CHECKING:  # the union exists only at run time, built from the registry: statically, any kind's config
    TeacherConfig = Any
else:
    TeacherConfig = Annotated[Union[tuple(kind.config for kind in TEACHERS.values())], Field(discriminator="kind")]  # noqa: UP007


def make_teacher(config: Any, inputs: TeacherInputs) -> Teacher:
    """The teacher the config's ``kind`` names, built by its registered factory."""
    return TEACHERS[config.kind].build(config, inputs)


def check_tasks(teacher: Teacher, tasks: list[str]) -> None:
    """Raise :class:`UnsupportedTask` for the first task ``teacher`` cannot answer, naming the kinds that can."""
    known = TEACHERS.get(teacher.kind)
    answers = getattr(teacher, "tasks", None) if known is None else known.tasks
    for task in tasks:
        if answers is not None and task not in answers:
            able = sorted(name for name, kind in TEACHERS.items() if kind.tasks is None or task in kind.tasks)
            raise UnsupportedTask(teacher.kind, task, able)
