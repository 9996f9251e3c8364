"""lm-eval scoring of a base model and its named adapters, through a registered lm-eval backend: ``inprocess``
(the default: one ``HFLM`` over the loaded model, conditions switched in place) or one loading each condition's
adapter folder (``hf`` with ``peft=``, ``vllm`` with ``lora_local_path``). Every adapter must first change the
backend's outputs on a few probe tokens (:func:`check_applied`); lm-eval's cache (not keyed by adapter) is off."""

from __future__ import annotations

import contextlib
import difflib
import functools
import io
import logging
import math
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable, Mapping

from rwedit.lazy import no_grad, torch

from rwedit.config import Config, option
from rwedit.editor.interventions import BASE, with_adapter
from rwedit.errors import AdapterNotAppliedError, ConfigError
from rwedit.evals.bundled_tasks import BUNDLED_TASKS, check_tasks, needs_lm_eval_index, task_manager
from rwedit.models import input_device
from rwedit.registry import Registry

#: the text whose first tokens probe whether an adapter is applied (any fixed text works: a rank-1 edit of a
#: matrix the tokens pass through changes every later position's logits)
PROBE_TEXT = ("The committee said on Tuesday that the old bridge over the river would reopen in the spring, "
              "after two years of repairs.")
PROBE_TOKENS = 16
#: (context, continuation) pairs for backends without an in-process model (their log-likelihoods are the probe)
PROBE_PAIRS = (("The committee said on Tuesday that the old bridge", " would reopen in the spring."),
               ("Human: How do I bake bread?\n\nAssistant:", " Mix flour, water, salt and yeast."))


@dataclass(frozen=True)
class Backend:
    """How rwedit scores conditions through one lm-eval backend: ``model`` None is the in-process route, else the
    lm-eval model name, built from the base's folder plus ``model_args`` with each condition's adapter folder
    under ``adapter_arg``; ``switch`` swaps the adapter of one built model instead of building one each."""

    name: str
    help: str
    model: str | None = None
    adapter_arg: str | None = None
    requires: tuple[str, str] | None = None  # (importable module, what to install)
    defaults: tuple[tuple[str, Any], ...] = ()  # model_args unless the recipe gives them
    takes_device: bool = False  # pass the loaded model's device as lm-eval's ``device``
    switch: Callable[[Any, str, int, Path | None], None] | None = None  # (lm, condition, index, folder)

    @property
    def in_process(self) -> bool:
        return self.model is None

    def check_installed(self) -> None:
        """Refuse a backend whose package is missing, naming what to install."""
        if self.requires is not None and find_spec(self.requires[0]) is None:
            raise ConfigError(f"eval.backend: {self.name!r} needs the `{self.requires[0]}` package, which is not "
                              f"installed here: {self.requires[1]}. Or score with backend 'inprocess' (the default) "
                              f"or 'hf'")


_BACKENDS: Registry[Backend] = Registry("lm-eval backend")


def register_backend(backend: Backend, *, replace: bool = False) -> Backend:
    """Make ``backend`` available as ``eval.backend: NAME``."""
    return _BACKENDS.register(backend.name, backend, replace=replace)


def backends() -> list[Backend]:
    """The registered backends (``rwedit tasks --backends``)."""
    return list(_BACKENDS.values())


def get_backend(name: str) -> Backend:
    """The registered backend ``name``; another name of lm-eval's model registry scores the base only (rwedit
    knows no adapter route for it); anything else is a :class:`ConfigError` listing both."""
    if name in _BACKENDS:
        return _BACKENDS[name]
    from lm_eval.api.registry import model_registry

    if len(model_registry) == 0:
        import lm_eval.models  # noqa: F401  (registers lm-eval's backends)
    if name in model_registry.keys():
        return Backend(name, f"lm-eval's {name!r} backend (no adapter route: base only)", model=name)
    raise ConfigError(f"eval.backend: {name!r} is neither an rwedit backend ({', '.join(_BACKENDS)}) nor an lm-eval "
                      f"model ({', '.join(sorted(model_registry.keys()))})")


@functools.lru_cache(maxsize=1)
def _from_pretrained_keys() -> frozenset[str]:
    """What transformers' ``from_pretrained`` takes besides the config's attributes: its named parameters and the
    keyword arguments it pops, read from the installed source (empty when that idiom is not found: then no
    key is refused for it)."""
    import inspect
    import re

    from transformers import PreTrainedModel

    fn = PreTrainedModel.from_pretrained
    popped = set(re.findall(r"kwargs\.pop\(\s*[\"'](\w+)[\"']", inspect.getsource(fn)))
    return frozenset(popped | set(inspect.signature(fn).parameters)) if popped else frozenset()


def check_backend(settings: "EvalSettings", config=None) -> Backend:
    """Everything scoring through ``settings.backend`` would fail on, found before any model loads: the name (an
    rwedit backend or an lm-eval model), and each ``model_args`` key against what that lm-eval model takes (its
    constructor's parameters; for lm-eval's hf models, which hand the rest to ``from_pretrained``, also what
    that takes and the model ``config``'s attributes); keys rwedit fills in itself are refused too."""
    import inspect

    backend = get_backend(settings.backend)
    backend.check_installed()
    if backend.in_process or not settings.model_args:
        return backend
    ours = [k for k in ("pretrained", backend.adapter_arg) if k and k in settings.model_args]
    if ours:
        raise ConfigError(f"eval.model_args.{ours[0]}: rwedit fills it in (the base's folder, each condition's "
                          f"adapter folder); leave it out")
    from lm_eval.api.registry import get_model

    try:
        cls = get_model(backend.model)
    except Exception as e:  # noqa: BLE001 — lm-eval imports the backend's own package here
        raise ConfigError(f"eval.backend {backend.name!r}: lm-eval cannot load its model class ({type(e).__name__}: "
                          f"{e})") from None
    params = inspect.signature(cls.__init__).parameters
    takes = own = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - {"self"}
    rest = ""
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        from lm_eval.models.huggingface import HFLM

        if not issubclass(cls, HFLM) or not _from_pretrained_keys():
            return backend  # the rest goes somewhere rwedit cannot see: the backend checks it
        takes = own | _from_pretrained_keys() | set(config.to_dict() if config is not None else ())
        rest = ", and what transformers' from_pretrained takes (e.g. attn_implementation) or the model's config holds"
    unknown = sorted(k for k in settings.model_args if k not in takes)
    if unknown:
        near = difflib.get_close_matches(unknown[0], sorted(k for k in takes if not k.startswith("_")), n=1)
        raise ConfigError(f"eval.model_args: {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} "
                          f"not an argument of lm-eval's {backend.model!r} model"
                          f"{f' (did you mean {near[0]!r}?)' if near else ''}; it would fail when the model is built, "
                          f"after the earlier stages. It takes {', '.join(sorted(own - {'pretrained'}))}{rest}")
    return backend


def _vllm_switch(lm, condition: str, index: int, folder: Path | None) -> None:
    """Point lm-eval's vLLM model at ``folder``'s LoRA (its ``lora_request``), or at the base (None)."""
    from vllm.lora.request import LoRARequest

    lm.lora_request = None if folder is None else LoRARequest(condition, index, str(folder))


register_backend(Backend(
    "inprocess", "rwedit's HFLM over the loaded model, adapters switched in place (one model load)"))
register_backend(Backend(
    "hf", "lm-eval's hf backend: the base from its folder and each condition's exported adapter as peft=FOLDER "
    "(one load per condition)", model="hf", adapter_arg="peft", defaults=(("dtype", "float32"),), takes_device=True))
register_backend(Backend(
    "vllm", "lm-eval's vllm backend: one engine with LoRA enabled, each condition's adapter folder as its LoRA "
    "request (lora_local_path)", model="vllm", adapter_arg="lora_local_path",
    requires=("vllm", "pip install 'lm-eval[vllm]' on a machine with a CUDA GPU"),
    defaults=(("enable_lora", True), ("max_lora_rank", 16)), switch=_vllm_switch))


@dataclass(frozen=True)
class EvalSettings(Config):
    """Which lm-eval tasks, on how many items, in which batches (recorded with every result)."""

    tasks: tuple[str, ...] = option(tuple(BUNDLED_TASKS), help="lm-eval task names (bundled offline tasks: "
                                    + ", ".join(BUNDLED_TASKS) + "; any lm-eval task with the Hub)")
    limit: int | None = option(None, help="items per task (null: all)")
    batch_size: int = option(8, help="lm-eval batch size")
    logits_mb: int | None = option(1024, help="the most memory one batch's logits and their log-softmax may take "
                                   "(MiB; inprocess backend): batches of long items are made smaller to fit, the "
                                   "scores the same up to float rounding (null: lm-eval's batches as they are)")
    num_fewshot: int | None = option(None, help="few-shot examples (null: the task's default)")
    max_length: int | None = option(None, help="context window for lm-eval (null: the model's)")
    bootstrap_iters: int = option(1000, help="lm-eval's bootstrap iterations for stderr")
    backend: str = option("inprocess", help="lm-eval model backend: inprocess (adapters switched on the loaded "
                          "model), hf (base folder + peft=ADAPTER per condition), vllm (LoRA requests), or another "
                          "lm-eval model name (base only)")
    model_args: dict = option(factory=dict, help="the backend's lm-eval model_args (e.g. {dtype: bfloat16}); the "
                              "base's folder and each adapter folder are filled in")
    applied_atol: float = option(1e-5, help="an adapter counts as applied when it moves some log-probability of "
                                 "the probe tokens by more than this")

    def __post_init__(self):
        if not self.tasks:
            raise ConfigError("eval.tasks is empty: name at least one task, e.g. rwedit_hh_preference")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"eval.limit = {self.limit}: give a positive number of items or null for all")
        if self.backend in _BACKENDS:  # other names are looked up in lm-eval's registry by the scorer
            _BACKENDS[self.backend].check_installed()
        if self.backend in _BACKENDS and _BACKENDS[self.backend].in_process and self.model_args:
            raise ConfigError(f"eval.model_args {self.model_args} is for a backend that loads the model itself; the "
                              f"inprocess backend scores the loaded model (choose eval.backend: hf or vllm)")
        if self.logits_mb is not None and self.logits_mb < 1:
            raise ConfigError(f"eval.logits_mb = {self.logits_mb}: give a positive number of MiB or null")
        if not self.applied_atol >= 0:
            raise ConfigError(f"eval.applied_atol = {self.applied_atol}: give a tolerance >= 0")


@functools.lru_cache(maxsize=1)
def _budget_hflm():
    """lm-eval's ``HFLM`` whose log-likelihood batches fit a memory budget (``logits_bytes``; None: lm-eval's own).

    HFLM takes the log-softmax of a whole batch's logits: batch × tokens × vocabulary floats twice over (10 GB for
    8 items of 1000 tokens at Qwen's 152k vocabulary). The requests are split by the batch size their length
    allows; each batch is scored by lm-eval as it is, its forward computing the logits of the positions from its
    first continuation on (``logits_to_keep``) where the model takes it: HFLM reads a shorter logits tensor as
    one whose first positions were cut (its ``logits.shape[0] - padding_len_inp`` offset, there for prefix
    tokens), so the scores are the same, for a fraction of the unembedding's memory and arithmetic."""
    import inspect

    from lm_eval.models.huggingface import HFLM

    #: HFLM places the continuation by the logits' own length (checked in its source): else all positions
    offsets = "logits.shape[0] - padding_len_inp" in inspect.getsource(HFLM._loglikelihood_tokens)

    class BudgetHFLM(HFLM):
        logits_bytes: int | None = None
        _keep: int | None = None  # positions whose logits the next forward computes (None: all)

        def _model_call(self, inps, attn_mask=None, labels=None):
            if self._keep is None or self._keep >= inps.shape[1]:
                return super()._model_call(inps, attn_mask, labels)
            with torch.no_grad():
                return self.model(inps, logits_to_keep=self._keep).logits

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
            if self.logits_bytes is None or not isinstance(self.batch_size, int) or not requests:
                return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
            from rwedit.evals.planning import logits_batches, logits_groups
            from rwedit.models import keeps_logits

            # each input as lm-eval truncates it: at most max_length tokens
            lengths = [min(len(req[1]) + len(req[2]) - 1, self.max_length) for req in requests]
            vocab = int(self.model.config.vocab_size)
            keep = offsets and self.backend == "causal" and self.mixed_precision_dtype is None and keeps_logits(
                self.model)
            if keep:  # batched here (as lm-eval would), so that each forward knows where its continuations start
                calls = [(idx, len(idx), k) for idx, k in logits_batches(
                    lengths, [len(req[2]) for req in requests], self.batch_size, vocab, self.logits_bytes)]
            else:  # each group batched by lm-eval
                groups = logits_groups(lengths, self.batch_size, vocab, self.logits_bytes)
                if list(groups) == [self.batch_size]:
                    return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
                calls = [(idx, size, None) for size, idx in groups.items()]
            out, full = [None] * len(requests), self.batch_size
            try:
                for idx, self.batch_size_per_gpu, self._keep in calls:  # HFLM's batch_size property reads it
                    for i, r in zip(idx, super()._loglikelihood_tokens([requests[i] for i in idx], disable_tqdm,
                                                                       override_bs)):
                        out[i] = r
            finally:
                self.batch_size_per_gpu, self._keep = full, None
            return out

    return BudgetHFLM


def _cached_task_manager(tasks: tuple[str, ...]):
    """The TaskManager for ``tasks``: indexing lm-eval's own ~15,000 task names takes seconds, so it is done
    only when a task is not bundled, and each of the two managers is built once per process."""
    return _task_index(needs_lm_eval_index(tasks))


@functools.lru_cache(maxsize=2)
def _task_index(with_lm_eval: bool):
    return task_manager(None if with_lm_eval else tuple(BUNDLED_TASKS))


@contextlib.contextmanager
def quiet_lm_eval():
    """lm-eval's own progress bars (its request builder's bar takes no switch), warnings and below-error log lines
    off inside the block: rwedit's condition bar says where a run is. Its errors still print, and raise."""
    logger = logging.getLogger("lm_eval")
    saved = logger.level, logger.propagate, logger.handlers[:]
    handler = logging.StreamHandler(sys.stderr)  # the real stderr, bound before it is redirected below
    logger.setLevel(logging.ERROR)
    logger.handlers, logger.propagate = [handler], False
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(saved[0])
        logger.propagate, logger.handlers = saved[1], saved[2]


def flatten_results(results: dict) -> dict[str, float | None]:
    """``{task: {"acc,none": x, "acc_stderr,none": s}}`` -> ``{"task/acc": x, "task/acc_stderr": s}``."""
    out: dict[str, float | None] = {}
    for task, metrics in results.items():
        for key, val in metrics.items():
            if "," not in key:
                continue
            name, filt = key.split(",", 1)
            name = name if filt == "none" else f"{name}[{filt}]"
            try:
                num = float(val)
            except (TypeError, ValueError):
                num = None  # lm-eval writes "N/A" where it has no stderr
            # an undefined stderr (one item) is null; a NaN metric stays NaN so the runner refuses it
            out[f"{task}/{name}"] = None if num is not None and math.isnan(num) and "_stderr" in name else num
    return out


def probe_outputs(lm, tokenizer=None) -> torch.Tensor:
    """What the applied check compares: the log-softmax of the next-token logits over the first tokens of
    :data:`PROBE_TEXT` from ``lm``'s underlying HF model (an lm-eval model's ``.model``, or a torch module
    itself with ``tokenizer``), as the model is now; for a backend without one (vLLM), its log-likelihoods
    of :data:`PROBE_PAIRS` through lm-eval's own request API."""
    model = lm if isinstance(lm, torch.nn.Module) else getattr(lm, "model", None)
    if isinstance(model, torch.nn.Module):
        tok = tokenizer if tokenizer is not None else lm.tokenizer
        ids = tok(PROBE_TEXT, add_special_tokens=True)["input_ids"][:PROBE_TOKENS]
        with torch.no_grad():  # input_device: a placed model's first parameter may be offloaded (on meta)
            logits = model(input_ids=torch.tensor([ids], device=input_device(model))).logits[0]
        return torch.log_softmax(logits.double(), dim=-1).cpu()
    from lm_eval.api.instance import Instance

    reqs = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(PROBE_PAIRS)]
    return torch.tensor([ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)], dtype=torch.float64)


def check_applied(condition: str, outputs: torch.Tensor, reference: torch.Tensor, atol: float,
                  where: str = "") -> float:
    """The largest change ``max |outputs − reference|`` of a condition's probe outputs from the base's
    (:func:`probe_outputs`, same backend); an :class:`AdapterNotAppliedError` when it is not above
    ``atol``: the adapter was not applied (a backend that ignored it) or its weights are zero."""
    if outputs.shape != reference.shape:
        raise AdapterNotAppliedError(f"condition {condition!r}: its probe outputs have shape {tuple(outputs.shape)}, "
                                     f"the base's {tuple(reference.shape)}: not the same model and tokenizer")
    diff = float((outputs - reference).abs().max())
    if not diff > atol:
        raise AdapterNotAppliedError(
            f"condition {condition!r}{where}: its adapter does not change the model's log-probabilities on the "
            f"probe tokens (max |change| {diff:.3g} <= eval.applied_atol {atol:g}): it was not applied, or its "
            f"weights are zero (lora_B all 0). Nothing was scored for it; check the adapter folder's "
            f"adapter_model.safetensors and the backend's model_args")
    return diff


def current_condition(model) -> str | None:
    """The condition a loaded model is in: ``"base"`` (PEFT adapters disabled), the active adapter's name, or
    None for a model without adapters (as it is: possibly changed in place)."""
    if not hasattr(model, "peft_config"):
        return None
    if getattr(model, "_adapters_disabled", False):
        return BASE
    active = model.active_adapter
    return active if isinstance(active, str) else active[0]


class LMEvalScorer:
    """Scores conditions of one loaded model with lm-eval through the backend of ``settings.backend``:
    in process (adapters switched on the model) or from disk (the base's folder ``pretrained`` plus each
    condition's adapter folder: ``adapter_dirs[name]``, else exported from the model into ``export_dir``)."""

    name = "lmeval"

    def __init__(self, model, tokenizer, settings: EvalSettings = EvalSettings(), *,
                 adapter_dirs: Mapping[str, str | Path] | None = None, pretrained: str | Path | None = None,
                 export_dir: str | Path | None = None):
        from lm_eval.defaults import DEFAULT_OTHER_SEED

        if tokenizer is None:
            raise ConfigError("pass the tokenizer: without it HFLM looks one up on the Hub by the model's name")
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.backend = get_backend(settings.backend)  # EvalSettings checked that a registered one is installed
        self.raw: dict | None = None
        #: condition -> the applied check's max |change| of the probe log-probabilities
        self.applied: dict[str, float] = {}
        self.tm = _cached_task_manager(tuple(settings.tasks))
        check_tasks(list(settings.tasks), self.tm)
        # the tasks are built once and scored for every condition (simple_evaluate would rebuild them and
        # collect torch's environment report, ~0.5 s of subprocesses, on every call); their settings as
        # simple_evaluate sets them
        with quiet_lm_eval():
            self.tasks = self.tm.load(list(settings.tasks))
        for task in self.tasks["tasks"].values():
            if settings.num_fewshot is not None and task.get_config("num_fewshot") != 0:
                task.set_config(key="num_fewshot", value=settings.num_fewshot)
            elif task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
        self._reference: torch.Tensor | None = None  # the base's probe outputs through this backend
        if self.backend.in_process:
            kw = {"max_length": settings.max_length} if settings.max_length else {}
            with quiet_lm_eval():
                self.lm = _budget_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size, **kw)
            self.lm.logits_bytes = settings.logits_mb * 2**20 if settings.logits_mb is not None else None
            return
        self.lm = None  # the backend's model, built when a condition needs it
        self._lm_condition: str | None = None
        self.pretrained = str(pretrained or getattr(getattr(model, "config", None), "_name_or_path", "") or "")
        if not self.pretrained:
            raise ConfigError(f"eval.backend {self.backend.name!r} loads the base from disk: give its folder "
                              f"(pretrained=...)")
        self.adapter_dirs = {k: Path(v) for k, v in (adapter_dirs or {}).items()}
        self._export_dir, self._tmp = (Path(export_dir) if export_dir else None), None
        self._indices: dict[str, int] = {}
        self._args: dict[str, Any] = {}  # the lm-eval model_args of the last model built
        # the model as loaded, to notice a condition that changes its weights in place (a disk route cannot see it)
        self._as_loaded = probe_outputs(model, tokenizer) if current_condition(model) is None else None

    # ---------------------------------------------------------------- conditions and the applied check
    def _condition(self, adapter: str | None) -> str:
        name = adapter if adapter is not None else current_condition(self.model)
        if name is not None:
            return name
        if self.backend.in_process:
            return BASE  # the model as it is (whatever an intervention made of it), not checked
        # a model without adapters: only the base exists on disk; a change made in place would be missed
        if not torch.equal(probe_outputs(self.model, self.tokenizer), self._as_loaded):
            raise ConfigError(f"eval.backend {self.backend.name!r} loads each condition from disk (the base's folder "
                              f"and adapter folders), but this condition changed the loaded model's weights in place; "
                              f"score it with eval.backend: inprocess")
        return BASE

    def _adapter_folder(self, name: str) -> Path:
        """The condition's adapter folder: the one given, or the model's adapter exported now."""
        if name in self.adapter_dirs:
            from rwedit.editor.adapters import adapter_info

            adapter_info(self.adapter_dirs[name])  # a folder without adapter_config.json is named as such
            return self.adapter_dirs[name]
        if name not in getattr(self.model, "peft_config", {}):
            raise ConfigError(f"no adapter folder for condition {name!r} and no adapter of that name on the model: "
                              f"eval.backend {self.backend.name!r} loads adapters from disk")
        from rwedit.editor.export import save_adapter

        if self._export_dir is None:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="rwedit-adapters-")
            self._export_dir = Path(self._tmp.name)
        self.adapter_dirs[name] = save_adapter(self.model, name, self._export_dir)
        return self.adapter_dirs[name]

    def _build(self, folder: Path | None):
        """The backend's lm-eval model for the base's folder (and ``folder``'s adapter)."""
        from lm_eval.api.registry import get_model

        b, s = self.backend, self.settings
        args = {**dict(b.defaults), **s.model_args, "pretrained": self.pretrained}
        if folder is not None:
            if b.adapter_arg is None:
                raise ConfigError(f"eval.backend {b.name!r}: rwedit knows no way to give it an adapter folder, so it "
                                  f"scores the base only; score adapters with eval.backend hf or vllm")
            args[b.adapter_arg] = str(folder)
        extra = {"batch_size": s.batch_size, "max_length": s.max_length}
        if b.takes_device:
            extra["device"] = str(input_device(self.model))
        extra = {k: v for k, v in extra.items() if k not in args and v is not None}
        self._args = {**args, **extra}
        return get_model(b.model).create_from_arg_obj(args, extra)

    def _backend_lm(self, name: str):
        """The backend's model in condition ``name``: switched in place when the backend can, else built."""
        folder = None if name == BASE else self._adapter_folder(name)
        if self._lm_condition == name:
            return self.lm
        if self.backend.switch is not None:
            if self.lm is None:
                self.lm = self._build(folder)
            self._indices.setdefault(name, len(self._indices) + 1)
            self.backend.switch(self.lm, name, self._indices[name], folder)
        else:
            self.lm = None  # free the previous condition's model first
            self.lm = self._build(folder)
        self._lm_condition = name
        return self.lm

    def reference(self) -> torch.Tensor:
        """The base's probe outputs through this backend (computed once)."""
        if self._reference is None:
            if self.backend.in_process:
                with with_adapter(self.model, BASE):
                    self._reference = probe_outputs(self.lm)
            else:
                self._reference = probe_outputs(self._backend_lm(BASE))
        return self._reference

    def _check(self, name: str, lm) -> None:
        ref = self.reference()
        where = f" (lm-eval backend {self.backend.name!r})"
        self.applied[name] = check_applied(name, probe_outputs(lm), ref, self.settings.applied_atol, where)

    # ---------------------------------------------------------------- scoring
    @no_grad
    def run(self, adapter: str | None = None, log_samples: bool = False) -> dict:
        """lm-eval's raw ``evaluate`` output for the model as it is (``adapter``: that adapter active first, ``"base"``:
        all disabled) plus ``config`` (backend, model, model_args); an adapter is first checked to be applied."""
        name = self._condition(adapter)
        if self.backend.in_process:
            with with_adapter(self.model, adapter):
                if name != BASE and hasattr(self.model, "peft_config"):
                    self._check(name, self.lm)
                out = self._evaluate(self.lm, log_samples)
            return {**out, "config": {"backend": self.backend.name, "model": "hf", "condition": name,
                                      "model_args": {"pretrained": "(the loaded model)", "batch_size":
                                                     self.settings.batch_size}}}
        if name != BASE:
            self.reference()  # the base through the same backend, before the condition's model replaces it
        lm = self._backend_lm(name)
        if name != BASE:
            self._check(name, lm)
        elif self._reference is None:
            self._reference = probe_outputs(lm)
        out = self._evaluate(lm, log_samples)
        args = dict(self._args)
        if self.backend.adapter_arg is not None:  # the folder this condition was scored with (None: the base)
            args[self.backend.adapter_arg] = None if name == BASE else str(self.adapter_dirs[name])
        return {**out, "config": {"backend": self.backend.name, "model": self.backend.model, "condition": name,
                                  "model_args": args}}

    def _evaluate(self, lm, log_samples: bool) -> dict:
        import random

        import numpy as np
        from lm_eval.defaults import DEFAULT_OTHER_SEED, DEFAULT_RANDOM_SEED
        from lm_eval.evaluator import evaluate

        s = self.settings
        random.seed(DEFAULT_RANDOM_SEED)  # the seeds simple_evaluate sets before every evaluation (its bootstrap
        np.random.seed(DEFAULT_OTHER_SEED)  # stderr draws from them): the same numbers as through simple_evaluate
        torch.manual_seed(DEFAULT_OTHER_SEED)
        try:
            with quiet_lm_eval():
                return evaluate(lm=lm, task_dict=self.tasks, limit=s.limit, bootstrap_iters=s.bootstrap_iters,
                                log_samples=log_samples, cache_requests=False, verbosity="ERROR")
        except AssertionError as e:  # lm-eval asserts when a continuation does not fit the window
            raise ConfigError(
                f"lm-eval could not score {', '.join(s.tasks)}: an item is longer than the model's window of "
                f"{lm.max_length} tokens ({str(e) or 'continuation longer than max_length'}). Score "
                f"with a model that has a longer window, or choose tasks with shorter items") from None

    def score(self, adapter: str | None = None) -> dict[str, float | list[float] | str | None]:
        """Flat metrics with stderr of the model as it is (or with ``adapter``), e.g. ``rwedit_blimp/acc`` and
        ``rwedit_blimp/acc_stderr``, per-item values in document order (``rwedit_blimp/acc_items``: conditions
        compare item by item) and ``lmeval_backend``."""
        out = self.run(adapter, log_samples=True)
        self.raw = out  # lm-eval's own output (results, configs, versions, samples), kept beside the flat row
        return {**flatten_results(out["results"]), **item_values(out.get("samples") or {}),
                "lmeval_backend": self.backend.name}


def item_values(samples: dict) -> dict[str, list[float]]:
    """``{"task/metric_items": [value per document, in doc_id order]}`` from lm-eval's logged samples
    (numeric per-document metrics of the unfiltered responses only)."""
    from rwedit.evals.direct import ITEMS

    out: dict[str, list[float]] = {}
    for task, rows in samples.items():
        rows = sorted((r for r in rows if r.get("filter", "none") == "none"), key=lambda r: r["doc_id"])
        for metric in (rows[0].get("metrics") or []) if rows else []:
            vals = [r.get(metric) for r in rows]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                out[f"{task}/{metric}{ITEMS}"] = [float(v) for v in vals]
    return out
