"""The evaluation harness of ``nioreg evaluate``: plan, cases, resume, shards, torchrun ranks, merge.

It knows nothing about anatomy. A *protocol* (:mod:`nioreg.evaluate.protocols`: brain atlas registration,
DIR-Lab chest 4D-CT) says what its cases are, how one is loaded, how a method registers it, how a
displacement is scored and how the finished cases become a report (:class:`Protocol`). The harness runs
every method on every case of the plan:

    OUT/plan.json           what is evaluated (protocol, methods, cases, model, the protocol's settings)
    OUT/<case file>.json    one finished case of one method, at the path the protocol chooses
                            (brain: cases/<method>/<atlas>__<subject>.json, DIR-Lab: case<N>/<method>.json),
                            with the protocol's extra files beside it (figure slices, fields)
    OUT/run.json, report.md and the protocol's tables: written by the merge (:mod:`nioreg.evaluate.report`)

Each case file is written atomically and only after the case has finished (extra files first, the ``.json``
last): a case counts as done exactly when its ``.json`` exists, so a killed run resumes where it stopped
without recomputing or duplicating anything. A finished case computed with another method spec or another
configuration is an error, not silently reused. Runs are split into shards by case (``--shard i/N``; all
methods of a case stay in one shard, its images are read once); under ``torchrun`` every rank takes its
shard and rank 0 merges after a gloo barrier.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from ..defaults import DEFAULT_LAMBDA
from ..io import InputError, write_json_atomic
from ..io.write import atomic_write
from .options import EvaluateOptions, refuse_unhonoured
from .specs import MethodSpec, SpecError, parse_method_spec, parse_methods, resolve_reference

PLAN_NAME = "plan.json"
PLAN_FORMAT = "nioreg-evaluate-plan/1"
INITIAL = parse_method_spec("initial")

Echo = Callable[[str], None]


# ------------------------------------------------------------------------------------------------ the plan


@dataclass(kw_only=True)
class Plan:
    """What one evaluation run computes; stored as ``OUT/plan.json`` (the merge needs only this file).

    A protocol subclasses it with its own fields (written at the top level of ``plan.json``) and the
    list of its :attr:`cases`.
    """

    dataset: str
    methods: list[MethodSpec]
    reference: str | None = None
    model: str | None = None
    variant: str | None = None
    lam: float = DEFAULT_LAMBDA
    seed: int = 0
    protocol: ClassVar[str] = ""

    @property
    def cases(self) -> list[str]:
        """Names of the cases, in order (the unit of shards and of the case files)."""
        raise NotImplementedError

    @property
    def all_methods(self) -> list[MethodSpec]:
        """``initial`` first (always evaluated: the before-registration row), then the requested methods."""
        return [INITIAL] + [m for m in self.methods if m.label != INITIAL.label]

    def protocol_fields(self) -> dict:
        """The protocol's own entries of ``plan.json``."""
        return {}

    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "protocol": self.protocol, "dataset": self.dataset,
                "methods": [m.to_dict() for m in self.methods], "reference": self.reference,
                "model": self.model, "variant": self.variant, "lambda": self.lam, "seed": self.seed,
                **self.protocol_fields()}

    @staticmethod
    def common_fields(d: dict, preset: str | None) -> dict:
        """The keywords of the common fields, read back from a ``plan.json`` dictionary."""
        methods = []
        for stored in d["methods"]:
            spec = parse_method_spec(stored["text"], preset=preset)
            if spec.label != stored["label"]:  # a label chosen by the protocol, not by the spec text
                object.__setattr__(spec, "label", stored["label"])
            methods.append(spec)
        return {"dataset": d["dataset"], "methods": methods, "reference": d.get("reference"),
                "model": d.get("model"), "variant": d.get("variant"), "lam": d.get("lambda", DEFAULT_LAMBDA),
                "seed": d.get("seed", 0)}


def write_plan(out: Path, plan: Plan) -> Path:
    return write_json_atomic(Path(out) / PLAN_NAME, plan.to_dict())


def read_plan_dict(out: Path) -> dict:
    path = Path(out) / PLAN_NAME
    if not path.is_file():
        raise InputError(f"'{out}': no {PLAN_NAME} (not an evaluation output folder, or no run started yet)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(f"'{path}': unreadable plan ({error})") from None
    if d.get("format") != PLAN_FORMAT:
        raise InputError(f"plan file: unknown format {d.get('format')!r} (expected {PLAN_FORMAT})")
    return d


def read_plan(out: Path) -> Plan:
    """``OUT/plan.json`` as the plan of its protocol."""
    from .protocols import get_protocol

    d = read_plan_dict(out)
    try:
        return get_protocol(d.get("protocol", "brain")).plan_from_dict(d)
    except KeyError as error:
        raise InputError(f"'{Path(out) / PLAN_NAME}': unreadable plan (no {error})") from None


# ------------------------------------------------------------------------------------------------ protocols


@dataclass
class MethodOutput:
    """What a method returns to the harness: the displacement (nioreg convention) and its metadata."""

    displacement: Any  # torch.Tensor (1, 3, D, H, W), voxels of the case's fixed grid, pull
    seconds: float
    details: dict = field(default_factory=dict)


@dataclass
class Scored:
    """A scored case: the protocol's part of the case record, and extra files ``{suffix: write(tmp_path)}``."""

    record: dict
    files: dict[str, Callable[[Path], None]] = field(default_factory=dict)


@dataclass
class Report:
    """What a protocol's merge produced (the harness adds it to ``run.json`` and prints ``table``)."""

    summary: dict
    table: str
    files: list[Path] = field(default_factory=list)
    run_fields: dict = field(default_factory=dict)


class Protocol(ABC):
    """What a protocol provides to the harness. Subclass it, then add one entry to
    :data:`nioreg.evaluate.protocols.PROTOCOLS`.

    The class attributes describe it (the iteration preset of bare method names, its default methods, whether
    baselines belong to it, which :class:`~nioreg.evaluate.options.EvaluateOptions` fields it honours besides
    the common ones); the abstract methods are its cases, their registration and scoring, and its report.
    """

    name: ClassVar[str]
    preset: ClassVar[str | None] = None          # iterations of learned methods written without :ITERS
    default_methods: ClassVar[tuple[str, ...]] = ()
    default_reference: ClassVar[str] = "nio_m"   # used when present; an explicit --reference must exist
    baselines: ClassVar[bool] = False            # whether syn / niftyreg are part of the protocol
    options: ClassVar[frozenset[str]] = frozenset()

    def check_options(self, options: EvaluateOptions) -> None:
        refuse_unhonoured(options, self.name, self.options)

    def parse_methods(self, options: EvaluateOptions) -> list[MethodSpec]:
        """The run's method specs (``initial`` is implied), parsed with the protocol's preset."""
        texts = self.default_methods if options.methods is None else options.methods
        specs = [s for s in parse_methods(texts, preset=self.preset) if s.label != INITIAL.label]
        refused = [s.text for s in specs if s.kind == "baseline" and not self.baselines]
        if refused:
            raise SpecError(f"method {refused[0]!r}: baselines are not part of the {self.name} protocol "
                            "(learned methods only: ff, io, nio, nio_m)")
        return specs

    def reference_label(self, reference: str | None, specs: list[MethodSpec]) -> str | None:
        try:
            return resolve_reference(reference or self.default_reference, specs).label
        except SpecError:
            if reference is not None:  # an explicitly chosen reference must exist; the default may be absent
                raise
            return None

    def networks(self, options: EvaluateOptions) -> "Networks":
        return Networks(options.model, options.variant)

    def plan_fields(self, options: EvaluateOptions, specs: list[MethodSpec]) -> dict:
        """The keywords of :class:`Plan`'s common fields for this run."""
        model = None if isinstance(options.model, Mapping) else describe_model(options.model)
        return {"dataset": str(options.dataset), "methods": specs,
                "reference": self.reference_label(options.reference, specs), "model": model,
                "variant": options.variant, "lam": options.lam, "seed": options.seed}

    def case_config(self, plan: Plan, spec: MethodSpec, case: str) -> dict | None:
        """What a stored case must match to be reused besides its spec (``None``: nothing)."""
        return None

    def fatal(self, error: BaseException) -> bool:
        """Whether a failing case stops the run (else it is recorded and the run goes on)."""
        return isinstance(error, InputError)

    @abstractmethod
    def make_plan(self, options: EvaluateOptions, specs: list[MethodSpec], echo: Echo) -> Plan:
        """Read the dataset and list the cases (``InputError`` for anything the run cannot find)."""

    @abstractmethod
    def plan_from_dict(self, d: dict) -> Plan:
        """The plan of a ``plan.json`` written by :meth:`Plan.to_dict`."""

    @abstractmethod
    def case_file(self, label: str, case: str) -> str:
        """Path of a method's case file relative to OUT, without suffix."""

    @abstractmethod
    def load_case(self, plan: Plan, case: str) -> Any:
        """One case, ready for every method (loaded once per case)."""

    @abstractmethod
    def register(self, spec: MethodSpec, data: Any, net, run: "RunContext") -> MethodOutput:
        """Register a loaded case with one method (``net``: the case's network, for learned methods)."""

    @abstractmethod
    def score(self, data: Any, output: MethodOutput) -> Scored:
        """The protocol's measures of one registered case, and its extra files."""

    @abstractmethod
    def report(self, out: Path, plan: Plan, results: dict[str, dict[str, dict]], options: EvaluateOptions) -> Report:
        """Tables (and figures) of the finished cases ``{method label: {case: record}}``."""

    @abstractmethod
    def markdown(self, out: Path, plan: Plan, run: dict, report: Report) -> str:
        """The text of ``report.md``."""


# ------------------------------------------------------------------------------------------------ networks


def describe_model(source) -> str | None:
    """How a model is recorded: its path, or the type of an in-memory module."""
    if source is None:
        return None
    return str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__


class Networks:
    """The network of each case's learned methods: one model, or ``{case name: model}`` (leave-one-out).

    A model is a registered model name (``nioreg models list``) or a file, loaded on first use and kept (so a
    finished run resumes without loading anything), or a torch module.
    """

    def __init__(self, source, variant: str | None = None):
        self.source, self.variant = source, variant
        self._loaded: dict[str, Any] = {}

    def source_for(self, case: str):
        if isinstance(self.source, Mapping):
            if case not in self.source:
                raise InputError(f"no model given for {case} (the model mapping has {sorted(self.source)})")
            return self.source[case]
        return self.source

    def _file(self, source):
        """A model name or path as the file and variant to load (:func:`nioreg.models.resolve_model`)."""
        from ..models import resolve_model

        return resolve_model(source, self.variant)

    def check(self, cases: list[str]) -> None:
        """Every model is given, and every model name or file resolves to a file."""
        for case in cases:
            source = self.source_for(case)
            if source is None:
                raise InputError("the learned methods (ff, io, nio, nio_m) need --model")
            if isinstance(source, (str, os.PathLike)) and not self._file(source).path.is_file():
                raise InputError(f"model '{source}': file not found (nor a registered model name: nioreg models list)")

    def describe(self, case: str) -> str | None:
        return describe_model(self.source_for(case))

    def __call__(self, case: str):
        import torch

        source = self.source_for(case)
        key = case if isinstance(self.source, Mapping) else ""
        if key not in self._loaded:
            if isinstance(source, torch.nn.Module):
                self._loaded[key] = source
            else:
                from ..models import load_model

                resolved = self._file(source)
                self._loaded[key] = load_model(resolved.path, variant=resolved.variant)
        return self._loaded[key]


@dataclass
class RunContext:
    """What a protocol's :meth:`Protocol.register` may use besides the case: the plan and the run's options."""

    plan: Plan
    options: EvaluateOptions
    device: str | None


# ------------------------------------------------------------------------------------------------ case files


def case_path(out: Path, protocol: Protocol, label: str, case: str, suffix: str = ".json") -> Path:
    return Path(out) / f"{protocol.case_file(label, case)}{suffix}"


def read_case(path: Path) -> dict | None:
    """The finished case's record, or None when it has not been computed (or its file is unreadable)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # cannot happen with atomic writes, but a hand-edited file is recomputed, not trusted


def _check_record(record: dict, spec: MethodSpec, config: dict | None, path: Path) -> None:
    stored = record.get("spec", {})
    same = (stored.get("name") == spec.name and stored.get("iterations") == (
        None if spec.iterations is None else list(spec.iterations)) and stored.get("options") == spec.option_dict)
    if not same:
        raise InputError(f"'{path}' holds a result of method spec {stored.get('text')!r}, not {spec.text!r}; "
                         "use another --out or give this spec another label (LABEL=SPEC)")
    if config is not None and record.get("config") != json.loads(json.dumps(config)):
        raise InputError(f"'{path}' was computed with another configuration ({record.get('config')}); "
                         "use another --out or delete it")


def finished_cases(out: Path, plan: Plan, protocol: Protocol, cases: list[str] | None = None
                   ) -> dict[str, dict[str, dict]]:
    """``{method label: {case: record}}`` of the finished cases, each checked against the plan."""
    results: dict[str, dict[str, dict]] = {spec.label: {} for spec in plan.all_methods}
    for case in plan.cases if cases is None else cases:
        for spec in plan.all_methods:
            path = case_path(out, protocol, spec.label, case)
            record = read_case(path)
            if record is not None:
                _check_record(record, spec, protocol.case_config(plan, spec, case), path)
                results[spec.label][case] = record
    return results


# ------------------------------------------------------------------------------------------------ shards


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/N"`` -> (i, N) with 0 <= i < N."""
    if text is None:
        return None
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise InputError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {text!r}: need 0 <= i < N")
    return i, n


def shard_cases(cases: list, shard: tuple[int, int] | None) -> list:
    """Every N-th case starting at i."""
    if shard is None:
        return list(cases)
    i, n = shard
    return cases[i::n]


def _torchrun() -> tuple[int, int] | None:
    """(rank, world size) when started by torchrun with more than one process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        return None
    return (rank, world) if world > 1 else None


@dataclass
class Ranks:
    """This process's share of the cases: ``--shard i/N``, or its rank under torchrun (gloo barriers)."""

    shard: tuple[int, int] | None = None
    distributed: bool = False

    @classmethod
    def start(cls, shard: str | None) -> "Ranks":
        explicit, launched = parse_shard(shard), _torchrun()
        if launched is None or explicit is not None:
            return cls(explicit, False)
        import torch.distributed as tdist

        tdist.init_process_group("gloo", timeout=timedelta(days=7))
        return cls(launched, True)

    @property
    def leader(self) -> bool:
        """Writes the plan and merges: rank 0 under torchrun, any single process otherwise."""
        return not self.distributed or self.shard[0] == 0

    @property
    def merges(self) -> bool:
        """Whether this process merges after computing (shards given by hand are merged with --merge-only)."""
        return self.leader and (self.distributed or self.shard is None)

    def device(self, device: str | None) -> str | None:
        import torch

        if device is None and self.distributed and torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        return device

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as tdist

            tdist.barrier()

    def stop(self) -> None:
        if self.distributed:
            import torch.distributed as tdist

            tdist.destroy_process_group()


# ------------------------------------------------------------------------------------------------ computing


@dataclass
class RunStats:
    computed: int = 0
    skipped: int = 0
    failed: list = field(default_factory=list)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def compute_case(out: Path, protocol: Protocol, run: RunContext, case: str, data, spec: MethodSpec, net,
                 stats: RunStats) -> dict | None:
    """Register and score one method on one loaded case; write its files (the ``.json`` last)."""
    error_file = case_path(out, protocol, spec.label, case, ".error.txt")
    try:
        output = protocol.register(spec, data, net, run)
        scored = protocol.score(data, output)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # one failed case must not end a long run
        if protocol.fatal(error):
            raise
        message = _first_line(error)
        atomic_write(error_file, lambda tmp: tmp.write_text(message + "\n", encoding="utf-8"))
        stats.failed.append({"method": spec.label, "case": case, "error": message})
        return None
    record = {"method": spec.label, "spec": spec.to_dict(), **scored.record, "seconds": output.seconds}
    config = protocol.case_config(run.plan, spec, case)
    if config is not None:
        record["config"] = config
    record.update(host=os.uname().nodename if hasattr(os, "uname") else "",
                  finished_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    for suffix, write in scored.files.items():
        atomic_write(case_path(out, protocol, spec.label, case, suffix), write)
    write_json_atomic(case_path(out, protocol, spec.label, case), record)
    if error_file.exists():
        error_file.unlink()
    stats.computed += 1
    return record


def run_cases(out: Path, plan: Plan, protocol: Protocol, run: RunContext, networks: Networks, *,
              shard: tuple[int, int] | None = None, max_cases: int | None = None,
              progress: bool = True) -> RunStats:
    """Compute every unfinished case of this shard (resumable; see the module docstring).

    ``max_cases`` stops after that many newly computed cases (time-boxed runs; a later run continues).
    A case that raises is reported in ``RunStats.failed`` and in its ``.error.txt`` and retried by the next
    run; the other cases go on. Networks are loaded only when a learned case is actually computed.
    """
    from tqdm.auto import tqdm

    from ..progress import progress as progress_bar

    stats = RunStats()
    todo = []
    for case in shard_cases(plan.cases, shard):
        pending = [spec for spec in plan.all_methods
                   if not case_path(out, protocol, spec.label, case).is_file()]
        stats.skipped += len(plan.all_methods) - len(pending)
        if pending:
            todo.append((case, pending))
    where = "" if shard is None else f" shard {shard[0]}/{shard[1]}"
    total = sum(len(p) for _, p in todo)
    bar = progress_bar(total, f"evaluate{where}", unit="case") if progress else tqdm(disable=True)
    try:
        for case, pending in todo:
            data = protocol.load_case(plan, case)
            for spec in pending:
                if max_cases is not None and stats.computed >= max_cases:
                    return stats
                bar.set_postfix_str(f"{spec.label} {case}", refresh=True)
                net = networks(case) if spec.kind == "learned" else None  # a bad model file stops the run
                compute_case(out, protocol, run, case, data, spec, net, stats)
                bar.update(1)
    finally:
        bar.close()
    return stats


# ------------------------------------------------------------------------------------------------ the run


def evaluate(options: EvaluateOptions, *, echo: Echo | None = print) -> dict | None:
    """One ``nioreg evaluate`` run: compute the unfinished cases of this shard/rank, then merge.

    Returns the merged run dictionary (``run.json``), or ``None`` where this process does not merge
    (a shard given by hand, ``--no-merge``, a torchrun rank other than 0).
    """
    from .protocols import get_protocol

    echo = echo or (lambda text: None)
    if options.out is None:
        raise InputError("give the output folder (--out)")
    if options.dataset is None and not options.merge_only:
        raise InputError("give the DATASET (folder or manifest), or --merge-only")
    from ..runtime import apply_threads

    apply_threads(options.threads)  # --threads, else OMP_NUM_THREADS, else torch's default; recorded in provenance
    if options.merge_only:
        return _merge_only(options, echo)
    protocol = get_protocol(options.protocol or "brain")
    protocol.check_options(options)
    specs = protocol.parse_methods(options)
    plan = protocol.make_plan(options, specs, echo)
    networks = protocol.networks(options)
    if any(spec.kind == "learned" for spec in plan.methods):
        networks.check(plan.cases)
    finished_cases(options.out, plan, protocol)  # a conflicting earlier result stops us before plan.json changes
    return _compute(protocol, plan, networks, options, echo)


def _compute(protocol: Protocol, plan: Plan, networks: Networks, options: EvaluateOptions, echo: Echo) -> dict | None:
    out = Path(options.out)
    ranks = Ranks.start(options.shard)
    try:
        if ranks.leader:
            write_plan(out, plan)
        ranks.barrier()  # everyone sees the plan before starting
        run = RunContext(plan, options, ranks.device(options.device))
        failure: BaseException | None = None
        try:
            stats = run_cases(out, plan, protocol, run, networks, shard=ranks.shard, max_cases=options.max_cases,
                              progress=options.progress)
        except BaseException as error:  # reach the barrier even on failure, so rank 0 does not wait forever
            failure = error
        ranks.barrier()
        if failure is not None:
            raise failure
        for f in stats.failed:
            echo(f"nioreg: warning: {f['method']} {f['case']} failed: {f['error']}")
        merged = None
        if ranks.merges and not options.no_merge:
            merged = _merge_and_show(out, options, run.device, echo, failures=stats.failed)
        where = "" if ranks.shard is None else f" (shard {ranks.shard[0]}/{ranks.shard[1]})"
        failed = f", {len(stats.failed)} failed" if stats.failed else ""
        echo(f"computed {stats.computed} case(s), {stats.skipped} already done{failed}{where}")
        if ranks.shard is not None and not ranks.distributed:
            echo(f"shard done; when all shards are done: nioreg evaluate --merge-only --out {out}")
        return merged
    finally:
        ranks.stop()


def _merge_only(options: EvaluateOptions, echo: Echo) -> dict | None:
    from .protocols import get_protocol

    launched = _torchrun()
    if launched is not None and launched[0] != 0:
        return None  # under torchrun only rank 0 merges
    out = Path(options.out)
    plan = read_plan(out)  # the plan of the last computing run, not this call's --method/--subjects
    if options.protocol is not None and options.protocol.lower() != plan.protocol:
        raise InputError(f"'{out}' holds a {plan.protocol} evaluation, not --protocol {options.protocol}")
    get_protocol(plan.protocol).check_options(options)
    echo(f"merging {out / PLAN_NAME}: {len(plan.cases)} cases × "
         f"{', '.join(spec.label for spec in plan.all_methods)}")
    return _merge_and_show(out, options, options.device, echo)


def _merge_and_show(out: Path, options: EvaluateOptions, device: str | None, echo: Echo,
                    failures: list | None = None) -> dict:
    import torch

    from ..pipeline import provenance
    from .report import merge_with_report

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    run, report = merge_with_report(out, options=options, provenance=provenance(str(device), options.seed),
                                    failures=failures)
    echo(report.table)
    if not run["complete"]:
        echo(f"incomplete: missing cases {run['missing_cases']}")
    echo(f"wrote {out / 'report.md'}")
    return run
