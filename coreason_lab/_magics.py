"""``%coreason`` / ``%%coreason``: a thin adapter from cells to the kernel-resident runtime."""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable
from typing import Any

from coreason_runtime import Controls, EpistemicYieldError, UnknownWorkflowError
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from IPython.display import HTML, display
from pydantic import BaseModel
from traitlets import Bool, Float, Int, List, TraitError, Unicode, validate

from coreason_lab._args import VERBS, DashboardArgs, build_parser, parse_line, suggest
from coreason_lab._ask import AskHandle, parse_verifiers, resolve_schema, split_schema_cell
from coreason_lab._comm import CommBridge
from coreason_lab._display import ResultDisplay, status_html
from coreason_lab._errors import ShortErrors
from coreason_lab._live import StreamView, describe_ask, describe_run, run_request, wait_for
from coreason_lab._notebook import notebook_name, replay_record, show_last_error, switch_replay
from coreason_lab._oracle_circuit import OracleForm
from coreason_lab._steps import CellInvariant, CellThunk
from coreason_lab._steps_run import StepRunner

__all__ = ["CoreasonMagics"]

NEEDS_BODY = {"ask", "thunk"}
TAKES_BODY = {"ask", "thunk", "invariant"}


@magics_class
class CoreasonMagics(Magics):
    """The ``coreason`` line and cell magic. Settings: ``%config CoreasonMagics.<name> = ...``.

    Parameters
    ----------
    shell:
        The IPython shell.
    runtime:
        A Coordinator; by default ``Coordinator.default()`` on first use.
    """

    default_workflow = Unicode(
        "default", config=True, help="workflow charged when a verb names none"
    )
    max_updates_per_second = Float(
        10.0, config=True, help="dashboard and comm updates per second (0 < x ≤ 60)"
    )
    max_points = Int(500, config=True, help="points kept per dashboard series (≥ 10)")
    show_dashboard_on_ask = Bool(
        False, config=True, help="open the workflow's dashboard above each ask"
    )
    default_tiers = List(
        Unicode(),
        default_value=[],
        config=True,
        help="tiers for ask when --tiers is not given (empty: all)",
    )
    max_tokens = Int(0, config=True, help="output tokens per attempt (0: the runtime's default)")
    result_name = Unicode("answer", config=True, help="variable an ask's value lands in")
    oracle_circuit = Bool(
        True, config=True, help="on EpistemicYieldError show the form (False: raise)"
    )
    short_errors = Bool(True, config=True, help="coreason errors as a few lines (False: traceback)")
    stream = Bool(True, config=True, help="show an ask's answer growing (--no-stream: off)")
    replay = Bool(True, config=True, help="replay this notebook's recorded answers exactly")

    @validate("max_updates_per_second")
    def _check_rate(self, proposal: dict[str, Any]) -> float:
        value = float(proposal["value"])
        if not 0 < value <= 60:
            msg = f"max_updates_per_second must be in (0, 60], got {value:g}"
            raise TraitError(msg)
        return value

    @validate("max_points")
    def _check_points(self, proposal: dict[str, Any]) -> int:
        if int(proposal["value"]) < 10:
            msg = f"max_points must be at least 10, got {proposal['value']}"
            raise TraitError(msg)
        return int(proposal["value"])

    @validate("default_workflow", "result_name")
    def _check_name(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"]).strip()
        if not value:
            msg = f"{proposal['trait'].name} must not be empty"
            raise TraitError(msg)
        if proposal["trait"].name == "result_name" and not value.isidentifier():
            msg = f"result_name must be a Python variable name, got {value!r}"
            raise TraitError(msg)
        return value

    def __init__(self, shell: Any = None, runtime: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._runtime = runtime
        self.bridge: CommBridge | None = None
        self.handles: list[AskHandle] = []
        self.thunks: dict[str, CellThunk] = {}
        self.invariants: dict[str, CellInvariant] = {}
        self.forms: list[OracleForm] = []
        self.dashboard: Any = None
        self.last_result: Any = None
        self.errors = ShortErrors(lambda: bool(self.short_errors))
        self._prepared: Any = None

    # --- the runtime --------------------------------------------------------------------------

    @property
    def runtime(self) -> Any:
        if self._runtime is None or getattr(self._runtime, "closed", False):
            from coreason_runtime import Coordinator

            self._runtime = Coordinator.default()
        if self._prepared is not self._runtime:  # a notebook's requests go on its record
            self._prepared = self._runtime
            name = notebook_name(self.ns)
            if name is not None and self.replay:
                replay_record(self._runtime).use(name)
        return self._runtime

    def register_comm(self) -> bool:
        """Register the ``coreason`` comm target now (at ``%load_ext``), so a side panel can
        connect before any magic ran; the runtime itself starts on the first connection."""
        if self.bridge is None:
            self.bridge = CommBridge(
                provider=lambda: self.runtime,
                max_per_second=self.max_updates_per_second,
            )
        return self.bridge.register()

    @property
    def controls(self) -> Controls:
        """The runtime's workflow controls: magics, widgets and the side panel send intents."""
        controls: Controls = self.runtime.controls
        return controls

    @property
    def ns(self) -> dict[str, Any]:
        return self.shell.user_ns if self.shell is not None else {}

    def close(self) -> None:
        """Close dashboards, handles' throttles and the comm bridge (unload, tests)."""
        if self.dashboard is not None:
            self.dashboard.close()
            self.dashboard = None
        if self.bridge is not None:
            self.bridge.close()
            self.bridge = None
        for h in self.handles:
            h._throttle.close()

    # --- dispatch -----------------------------------------------------------------------------

    @no_var_expand
    @line_cell_magic
    def coreason(self, line: str, cell: str | None = None) -> Any:
        """``%coreason <verb> ...`` / ``%%coreason <verb> ...``; ``%coreason help`` lists verbs.

        The line is never interpolated: ``{x}`` and ``$x`` reach the parser as written.
        """
        __tracebackhide__ = True
        verb, args = parse_line(line)
        if cell is not None and verb not in TAKES_BODY and cell.strip():
            msg = f"%%coreason {verb} takes no cell body; use the line magic `%coreason {verb}`"
            raise UsageError(msg)
        if cell is None and verb in NEEDS_BODY:
            msg = (
                f"`%coreason {verb}` needs a cell body: write `%%coreason {verb} ...` on the "
                f"first line and the {'prompt' if verb == 'ask' else 'code'} below it"
            )
            raise UsageError(msg)
        handler: Callable[[Any, str | None], Any] = getattr(self, f"handle_{verb}")
        return handler(args, cell)

    def _workflow(self, name: str | None) -> str:
        return name or self.default_workflow

    def _known_workflows(self) -> list[str]:
        names = {led.workflow_id for led in self.runtime.budgets.workflows()}
        return sorted(names | {c.workflow_id for c in self.controls.workflows()})

    def _require_ledger(self, workflow: str) -> Any:
        try:
            return self.runtime.budgets.get(workflow)
        except UnknownWorkflowError as e:
            hint = suggest(workflow, self._known_workflows())
            msg = (
                f"no budget for workflow {workflow!r}.{hint} Set one first: "
                f"`%coreason budget {workflow} 20000`"
            )
            raise UsageError(msg) from e

    # --- budget, status, controls -------------------------------------------------------------

    def handle_budget(self, args: Any, cell: str | None) -> Any:
        budgets = self.runtime.budgets
        if args.workflow is None:
            return HTML(status_html(budgets.workflows(), [], [], {}, {}))
        if args.ceiling is None:
            return HTML(status_html([self._require_ledger(args.workflow)], [], [], {}, {}))
        return HTML(status_html([budgets.set(args.workflow, args.ceiling)], [], [], {}, {}))

    def handle_status(self, args: Any, cell: str | None) -> Any:
        return HTML(
            status_html(
                self.runtime.budgets.workflows(),
                self.controls.workflows(),
                self.handles,
                self.thunks,
                self.invariants,
            )
        )

    def _control(self, intent: str, args: Any) -> Any:
        if args.workflow is not None:
            targets = [args.workflow]
            known = self._known_workflows()
            if args.workflow not in known:
                msg = (
                    f"%coreason {intent}: no workflow {args.workflow!r}."
                    f"{suggest(args.workflow, known)} Known: {', '.join(known) or 'none'}."
                )
                raise UsageError(msg)
        else:
            targets = sorted({h.workflow_id for h in self.handles if not h.future.done()}) or [
                self.default_workflow
            ]
        return [self.controls.apply(intent, wf, reason=f"%coreason {intent}") for wf in targets]

    def handle_pause(self, args: Any, cell: str | None) -> Any:
        return self._control("pause", args)

    def handle_resume(self, args: Any, cell: str | None) -> Any:
        return self._control("resume", args)

    def handle_preempt(self, args: Any, cell: str | None) -> Any:
        return self._control("preempt", args)

    def handle_abort(self, args: Any, cell: str | None) -> Any:
        return self._control("abort", args)

    def handle_reset(self, args: Any, cell: str | None) -> Any:
        if args.steps:
            self.thunks.clear()
            self.invariants.clear()
        if args.workflow is not None:
            self._require_ledger(args.workflow)
            return HTML(status_html([self.runtime.budgets.reset(args.workflow)], [], [], {}, {}))
        if not args.steps:
            msg = "%coreason reset: name a workflow to zero its ledger, or pass --steps"
            raise UsageError(msg)
        return None

    def handle_dashboard(self, args: Any, cell: str | None) -> Any:
        from coreason_lab._widgets import VIEWS, Dashboard

        views = args.views or list(VIEWS)
        for v in views:
            if v not in VIEWS:
                msg = (
                    f"%coreason dashboard: unknown view {v!r}.{suggest(v, list(VIEWS))} "
                    f"Views: {', '.join(VIEWS)}."
                )
                raise UsageError(msg)
        if args.workflow is not None:
            self._require_ledger(args.workflow)
        if self.dashboard is not None:  # one live dashboard: re-running the cell leaks nothing
            self.dashboard.close()
        self.dashboard = Dashboard(
            self.runtime,
            self.controls,
            workflow=args.workflow,
            views=views,
            max_updates_per_second=self.max_updates_per_second,
            max_points=self.max_points,
        )
        return self.dashboard

    def handle_help(self, args: Any, cell: str | None) -> Any:
        if args.verb is None:
            rows = "".join(
                f"<tr><td><code>{v}</code></td><td>{s}</td></tr>" for v, (_, _, s) in VERBS.items()
            )
            return HTML(
                "<b>%coreason verbs</b> (options on the first line, payload in the "
                f"cell body)<table>{rows}</table>"
            )
        if args.verb not in VERBS:
            msg = f"%coreason help: unknown verb {args.verb!r}.{suggest(args.verb, list(VERBS))}"
            raise UsageError(msg)
        return HTML(f"<pre>{build_parser(args.verb).format_help()}</pre>")

    def handle_replay(self, args: Any, cell: str | None) -> Any:
        return switch_replay(self.runtime, args.action, notebook_name(self.ns))

    def handle_debug(self, args: Any, cell: str | None) -> None:
        show_last_error(self.shell)

    def handle_version(self, args: Any, cell: str | None) -> str:
        import coreason_runtime

        from coreason_lab import __version__

        return f"coreason-lab {__version__}, coreason-runtime {coreason_runtime.__version__}"

    # --- ask ----------------------------------------------------------------------------------

    def _schema_from_cell(self, code: str) -> Any:
        try:
            ast.parse(code)
        except SyntaxError as e:
            msg = f"%%coreason ask: the schema code above '---' does not parse: {e}"
            raise UsageError(msg) from e
        if self.shell is None:
            msg = "%%coreason ask: a schema defined in the cell needs an IPython shell"
            raise UsageError(msg)
        before = {k: id(v) for k, v in self.ns.items()}
        self.shell.ex(code)
        new = [
            v
            for k, v in self.ns.items()
            if before.get(k) != id(v) and isinstance(v, type) and issubclass(v, BaseModel)
        ]
        if not new:
            msg = (
                "%%coreason ask: the code above '---' defines no pydantic model; "
                "e.g. `class Answer(BaseModel): value: int`"
            )
            raise UsageError(msg)
        return new[-1]

    def handle_ask(self, args: Any, cell: str | None) -> Any:
        __tracebackhide__ = True
        assert cell is not None
        code, prompt = split_schema_cell(cell)
        if args.schema is not None and code is not None:
            msg = (
                "%%coreason ask: name the schema on the first line or define it above "
                "'---' in the cell, not both"
            )
            raise UsageError(msg)
        if args.schema is None and code is None:
            msg = (
                "%%coreason ask needs a schema: `%%coreason ask Answer` with a pydantic "
                "model `Answer` in the namespace, or a model defined above a line '---'"
            )
            raise UsageError(msg)
        if not prompt:
            msg = "%%coreason ask: the prompt (the cell body) is empty"
            raise UsageError(msg)
        named = resolve_schema(args.schema, self.ns) if args.schema is not None else None
        wf = self._workflow(args.workflow)
        self._require_ledger(wf)
        tiers = args.tiers or list(self.default_tiers) or None
        if tiers is not None:
            known = [*self.runtime.router.tier_names, "human"]
            for t in tiers:
                if t not in known:
                    msg = (
                        f"%%coreason ask: unknown tier {t!r}.{suggest(t, known)} "
                        f"Configured: {', '.join(known)}."
                    )
                    raise UsageError(msg)
        schema = named if named is not None else self._schema_from_cell(code or "")
        name = schema.__name__ if isinstance(schema, type) else str(schema.get("title", "schema"))
        into = args.into or self.result_name
        state = self.controls.state(wf)
        if state.holds and not args.background:
            msg = (
                f"workflow {wf!r} is {state}; `%coreason resume {wf}` first, or ask with "
                "--background to queue behind the pause"
            )
            raise UsageError(msg)
        if args.dashboard or (args.dashboard is None and self.show_dashboard_on_ask):
            display(self.handle_dashboard(DashboardArgs(workflow=wf), None))
        kwargs = {
            "workflow_id": wf,
            "tiers": tiers,
            "max_tokens": args.max_tokens or (self.max_tokens or None),
            "verify": parse_verifiers(args.verify, self.ns),
        }
        router = self.runtime.router
        if args.dry_run:
            return router.dry_run(schema, prompt, **kwargs)
        if not args.background:
            return self._ask_now(router, schema, prompt, kwargs, into, args.stream)
        future = self.runtime.call(lambda: router.generate(schema, prompt, **kwargs))
        handle = AskHandle(
            future,
            workflow_id=wf,
            schema_name=name,
            into=into,
            namespace=self.ns,
            controls=self.controls,
            bus=self.runtime.bus,
            open_circuit=self._open_circuit,
            max_per_second=self.max_updates_per_second,
        )
        self.handles.append(handle)
        self.ns[f"{into}_handle"] = handle
        return handle

    def _ask_now(
        self, router: Any, schema: Any, prompt: str, kwargs: Any, into: str, stream: bool | None
    ) -> Any:
        """A foreground ask: its answer streams into the cell; an interrupt stops it."""
        __tracebackhide__ = True
        wf = kwargs["workflow_id"]
        streaming = self.stream if stream is None else stream
        view = StreamView(into, self.max_updates_per_second) if streaming else None
        future = self.runtime.call(
            functools.partial(run_request, router, schema, prompt, kwargs, view)
        )
        try:
            describe = functools.partial(describe_ask, workflow=wf)
            result = wait_for(future, self.controls, wf, describe, view)
        except EpistemicYieldError as e:
            if not self.oracle_circuit:
                raise
            return self._open_circuit(e, into)
        self.ns[into] = result.value
        self.last_result = result
        return ResultDisplay(result, name=into)

    def _open_circuit(self, error: EpistemicYieldError, into: str) -> OracleForm:
        """Pause the workflow and build the form; an accepted answer resumes it."""
        wf = error.workflow_id or self.default_workflow
        self.controls.pause(wf, reason="awaiting human")

        def done(result: Any) -> None:
            self.ns[into] = result.value
            self.last_result = result
            self.controls.resume(wf, reason="human answered")

        form = OracleForm(
            error, lambda answer: self.runtime.router.resolve_yield(error, answer), on_done=done
        )
        self.forms.append(form)
        self.ns[f"{into}_form"] = form
        return form

    # --- thunks, invariants, run --------------------------------------------------------------

    def handle_thunk(self, args: Any, cell: str | None) -> Any:
        assert cell is not None
        try:
            ast.parse(cell)
        except SyntaxError as e:
            msg = f"%%coreason thunk {args.name}: the body does not parse: {e}"
            raise UsageError(msg) from e
        deps = list(args.after)
        for dep in deps:
            if dep not in self.thunks and dep not in self.ns:
                msg = (
                    f"%%coreason thunk {args.name}: --after names {dep!r}, which is neither "
                    f"a declared step nor a variable.{suggest(dep, list(self.thunks))}"
                )
                raise UsageError(msg)
        thunk = CellThunk(
            args.name,
            cell,
            deps=deps,
            namespace=self.ns,
            bus=self.runtime.bus,
            workflow_id=self._workflow(args.workflow),
            resolve=self.thunks.get,
            controls=self.controls,
        )
        self.thunks[args.name] = thunk
        self.ns[args.name] = thunk
        return None

    def handle_invariant(self, args: Any, cell: str | None) -> Any:
        lines = [
            ln.strip()
            for ln in (cell or "").splitlines()
            if ln.strip() and not ln.strip().startswith("#")
        ]
        if not lines and args.unit is None:
            msg = (
                f"%coreason invariant {args.name}: give boolean expressions in the cell body "
                "(`%%coreason invariant ...`) or a unit with --unit"
            )
            raise UsageError(msg)
        for expr in [*lines, *([args.of] if args.of else [])]:
            try:
                ast.parse(expr, mode="eval")
            except SyntaxError as e:
                msg = f"%coreason invariant {args.name}: {expr!r} is not an expression: {e.msg}"
                raise UsageError(msg) from e
        if args.unit is not None:
            import pint

            try:
                pint.get_application_registry()(args.unit)
            except Exception as e:
                msg = f"%coreason invariant {args.name}: {args.unit!r} is not a unit pint knows"
                raise UsageError(msg) from e
        self.invariants[args.name] = CellInvariant(args.name, lines, unit=args.unit, of=args.of)
        return None

    def _runner(self) -> StepRunner:
        return StepRunner(self.runtime, self.controls, self.thunks, self.invariants, self.ns)

    def handle_check(self, args: Any, cell: str | None) -> Any:
        for name in args.names:
            if name not in self.invariants:
                msg = (
                    f"%coreason check: no invariant {name!r}.{suggest(name, list(self.invariants))}"
                )
                raise UsageError(msg)
        return self._runner().check(args.names or list(self.invariants), self.default_workflow)

    def handle_run(self, args: Any, cell: str | None) -> Any:
        __tracebackhide__ = True
        if not self.thunks:
            msg = "%coreason run: no steps declared; declare one with `%%coreason thunk NAME`"
            raise UsageError(msg)
        for target in args.targets:
            if target not in self.thunks:
                msg = f"%coreason run: no step {target!r}.{suggest(target, list(self.thunks))}"
                raise UsageError(msg)
        wf = self._workflow(args.workflow)
        runner = self._runner()
        try:
            order = runner.order(args.targets or list(self.thunks))
        except ValueError as e:
            raise UsageError(f"%coreason run: {e}") from e
        describe = describe_run(self.runtime.budgets, wf)
        report = wait_for(runner.submit(order, wf), self.controls, wf, describe)
        if args.check and self.invariants:
            report.invariants = runner.check(list(self.invariants), wf).results
        return report
