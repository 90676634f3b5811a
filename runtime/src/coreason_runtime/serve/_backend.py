"""What the server needs from a tier: compile a schema, decode (free or constrained), stream."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from coreason_runtime._exceptions import SchemaCompileError
from coreason_runtime.tensor._schema import CompiledSchema, SchemaSpec
from coreason_runtime.tensor._types import BaseTier, Meter, TierOutput

if TYPE_CHECKING:
    from coreason_runtime.serve._host import Job
    from coreason_runtime.tensor._local import LocalTier

__all__ = ["Backend", "TierBackend", "adapt"]


class Backend(Protocol):
    """The server's view of its model; calls run on the model threads (``batch`` of them, so
    ``generate`` must allow concurrent calls: the local tier batches them)."""

    def compile(self, json_schema: dict[str, Any]) -> CompiledSchema: ...

    def generate(self, job: Job, meter: Meter, timeout: float | None = None) -> TierOutput: ...

    def count_prompt(self, job: Job) -> int:
        """The tokens the model would prefill for ``job`` (its schema hint included)."""
        ...

    @property
    def context_length(self) -> int | None:
        """The most tokens (prompt and output) the model can hold; None if unbounded."""
        ...

    def close(self) -> None: ...


class TierBackend:
    """Serves a steerable tier (the ``LocalTier``) through its ``complete_text``.

    A ``response_format`` schema compiles with the tier's compiler; the answer is decoded under
    its grammar mask, with the same JSON hint the tier gives the router's requests. Text is
    streamed through ``on_delta`` as it is decoded; the job's ticket stops the decode at the
    next layer boundary when its client hangs up.
    """

    def __init__(self, tier: LocalTier) -> None:
        self.tier = tier

    def compile(self, json_schema: dict[str, Any]) -> CompiledSchema:
        spec = SchemaSpec.from_user(json_schema)
        compiled = self.tier.compile(spec)
        if compiled.grammar is None:
            err = compiled.errors.get("grammar")
            if err is None:
                msg = f"no grammar could be built for schema {spec.name!r}"
                err = SchemaCompileError(msg)
            raise err
        return compiled

    def _messages(self, job: Job) -> list[dict[str, str]]:
        if job.schema is None:
            return job.messages
        return self.tier.schema_messages(job.messages, job.schema)

    def count_prompt(self, job: Job) -> int:
        return self.tier.count_prompt(self._messages(job))

    @property
    def context_length(self) -> int | None:
        return self.tier.context_length

    def generate(self, job: Job, meter: Meter, timeout: float | None = None) -> TierOutput:
        return self.tier.complete_text(
            self._messages(job),
            job.max_tokens,
            grammar=job.schema,
            on_delta=job.on_text,
            temperature=job.temperature,
            seed=job.seed,
            meter=meter,
            timeout=timeout,
            ticket=job.ticket,
        )

    def close(self) -> None:
        self.tier.close()


def adapt(source: LocalTier | Backend) -> Backend:
    """The backend for ``source`` (a local tier to wrap, or already a backend)."""
    if isinstance(source, BaseTier):
        return TierBackend(source)
    return source
