"""Training plans of the recipe's experiments: the models ("arms") every seed trains, the
pseudo-labels their students need, run in dependency order on a pool of worker processes, with
finished runs reused and validation scores cached.

An `Arm` is one model per seed: labelled-only (the demo teacher config with the students'
images per step) or a student (the demo student config) learning from the pseudo-labels of
another arm of the same seed. Every arm of seed s trains with seed s: the same initial weights
(the head is drawn from the seed; the encoder starts from the semantic encoder) and the same
labelled-image order and crops (drawn from the seed and the epoch, whatever the batch size), so a
student and its labelled-only control differ only by what the recipe adds.

Runs live in ``<root>/seed<s>/<arm>/`` and pseudo-labels in ``<root>/seed<s>/pseudo_<teacher>/``
next to the teacher run; a finished run of the same training configuration under the output
folder or one of the `reuse` folders (a demo output) is used as it is, a started one resumes.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import pipeline

Records = list[dict[str, Any]]
RunKey = tuple[int, str]  # (seed, arm name)


@dataclass(frozen=True)
class Arm:
    """One model trained for every seed: labelled-only, or (`teacher` set) a student on the
    pseudo-labels of the arm `teacher` of the same seed. `overrides` (``FIELD=VALUE``) go on
    top of the stage's demo config; `encoder` names the world's semantic encoder the model
    starts from (and a student aligns its features to)."""

    name: str
    teacher: str | None = None
    overrides: tuple[str, ...] = ()
    encoder: str = pipeline.BASE_ENCODER

    @property
    def student(self) -> bool:
        return self.teacher is not None

    @property
    def config(self) -> Path:
        return pipeline.STUDENT_CONFIG if self.student else pipeline.TEACHER_CONFIG


# The demo's pair: the labelled-only model is both the students' teacher and their control.
TEACHER = Arm("teacher")
STUDENT = Arm("student", teacher="teacher")


def add_run_arguments(parser: argparse.ArgumentParser, *, reuse: bool) -> None:
    """The options every recipe experiment's CLI shares: --workers and --scale, and with
    `reuse` (the budget curve, the ablation) --world and --no-train."""
    if reuse:
        parser.add_argument("--world", default=None,
                            help="reuse the data, semantic encoder and finished runs of a demo "
                                 "output directory (default: generate the world under --out)")
    parser.add_argument("--workers", type=int, default=None,
                        help="training processes side by side (default: one per core, at "
                             "most 2)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="shrink data and training steps (< 1: a quick smoke run)")
    if reuse:
        parser.add_argument("--no-train", action="store_true",
                            help="report the finished runs only (the table of an interrupted "
                                 "run)")


def images_per_step() -> int:
    """Images per step of the demo student (labelled + pseudo-labelled), which every
    labelled-only arm gets too (all labelled)."""
    from depth_anything_fast.train.config import load_config

    cfg = load_config(pipeline.STUDENT_CONFIG)
    return cfg.data.batch_size * (1 + cfg.data.unlabelled_ratio)


def arm_overrides(arm: Arm, world: pipeline.World, seed: int, run_dir: Path,
                  pseudo: Path | None, extra: Sequence[str] = ()) -> list[str]:
    """The config overrides of `arm` for `seed` writing to `run_dir` (`pseudo`: the
    pseudo-label folder of a student); `extra` (e.g. smoke-run steps) before the arm's own."""
    encoder = world.encoders[arm.encoder]
    common = [f"data.labelled={world.layout.labelled}", f"model.init={encoder}",
              f"seed={seed}", f"out_dir={run_dir}"]
    if arm.student:
        assert pseudo is not None
        common += [f"data.pseudo_labels={pseudo}", f"model.frozen_encoder={encoder}"]
    else:
        common.append(f"data.batch_size={images_per_step()}")
    return [*common, *extra, *arm.overrides]


# ------------------------------------------------------------------------------ jobs
@dataclass(frozen=True)
class Job:
    """A call of the module-level function `fn` (it goes to a worker process) with `args`,
    started once the jobs named in `after` are done."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    after: tuple[str, ...] = ()


def _init_worker(processes: int) -> None:
    pipeline.set_threads(processes)


def run_jobs(jobs: dict[str, Job], workers: int,
             on_done: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every job after the jobs it waits for, at most `workers` at a time, each in a worker
    process (spawned, its compute threads `pipeline.set_threads(workers)`); `workers` <= 1
    runs them here, in order. Ready jobs start in the order of `jobs`; `on_done(name)` is
    called here after each. Returns name -> result; the first failure is raised (jobs not yet
    started are dropped)."""
    unknown = {d for job in jobs.values() for d in job.after if d not in jobs}
    if unknown:
        raise ValueError(f"jobs wait for unknown jobs: {sorted(unknown)}")
    done: dict[str, Any] = {}
    pending = dict(jobs)

    def ready() -> list[str]:
        return [n for n, j in pending.items() if all(d in done for d in j.after)]

    def finish(name: str, result: Any) -> None:
        done[name] = result
        if on_done is not None:
            on_done(name)

    if workers <= 1:
        while pending:
            if not ready():
                raise ValueError(f"jobs wait for each other: {sorted(pending)}")
            name = ready()[0]
            job = pending.pop(name)
            finish(name, job.fn(*job.args))
        return done
    _run_in_pool(pending, ready, finish, workers)
    return done


def _run_in_pool(pending: dict[str, Job], ready: Callable[[], list[str]],
                 finish: Callable[[str, Any], None], workers: int) -> None:
    """`run_jobs` on a pool of `workers` spawned processes."""
    import multiprocessing

    running: dict[Future, str] = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(workers,)) as pool:
        while pending or running:
            for name in ready()[:workers - len(running)]:
                job = pending.pop(name)
                running[pool.submit(job.fn, *job.args)] = name
            if not running:
                raise ValueError(f"jobs wait for each other: {sorted(pending)}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                error = future.exception()
                if error is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise error
                finish(name, future.result())


def _train_job(config: Path, overrides: list[str], label: str) -> Path:
    return pipeline.train(config, overrides, label)


def _label_job(teacher: Path, images: Path, out: Path) -> Path:
    return pipeline.pseudo_label_images(teacher, images, out)


# ------------------------------------------------------------------------------ plans
@dataclass
class _Planner:
    """Builds the jobs of a plan: where each run lives (a finished same run in `roots`, else
    under `roots[0]`), its training job unless finished, the labelling jobs students need."""

    world: pipeline.World
    roots: list[Path]
    extra: tuple[str, ...]
    jobs: dict[str, Job]
    finals: dict[RunKey, Path]

    def run_dir(self, arm: Arm, seed: int, pseudo: Path | None) -> tuple[Path, list[str], bool]:
        """(run folder, overrides, finished) of `arm` for `seed`."""
        overrides = arm_overrides(arm, self.world, seed, self.roots[0] / f"seed{seed}" / arm.name,
                                  pseudo, self.extra)
        for root in self.roots:
            candidate = root / f"seed{seed}" / arm.name
            if pipeline.same_run(candidate, arm.config, overrides) == "finished":
                return candidate, overrides, True
        return self.roots[0] / f"seed{seed}" / arm.name, overrides, False

    def add(self, arm: Arm, seed: int, arms: dict[str, Arm]) -> None:
        key = f"train {seed} {arm.name}"
        if key in self.jobs or (seed, arm.name) in self.finals:
            return
        pseudo, after = None, ()
        if arm.teacher is not None:
            if arm.teacher not in arms:
                raise ValueError(f"arm {arm.name!r}: its teacher {arm.teacher!r} is not in the plan")
            self.add(arms[arm.teacher], seed, arms)
            teacher_final = self.finals[(seed, arm.teacher)]
            pseudo = teacher_final.parent.parent / f"pseudo_{arm.teacher}"
            label = f"label {seed} {arm.teacher}"
            if label not in self.jobs:
                wait_for = tuple(d for d in (f"train {seed} {arm.teacher}",) if d in self.jobs)
                self.jobs[label] = Job(_label_job, (teacher_final, self.world.layout.unlabelled,
                                                    pseudo), wait_for)
            after = (label,)
        run_dir, overrides, finished = self.run_dir(arm, seed, pseudo)
        self.finals[(seed, arm.name)] = run_dir / "final"
        if not finished:
            self.jobs[key] = Job(_train_job, (arm.config, overrides, f"seed {seed} {arm.name}"),
                                 after)


def plan(world: pipeline.World, out: Path, seeds: Iterable[int], arms: Sequence[Arm],
         reuse: Sequence[Path] = (), extra: Sequence[str] = ()) -> tuple[dict[str, Job],
                                                                          dict[RunKey, Path]]:
    """(jobs, model folder of every (seed, arm)) training `arms` for `seeds` under `out`,
    using finished runs found under `out` or `reuse`; every teacher of a student is
    (re)labelled, which costs nothing when its labels are complete. `extra` overrides go to
    every run (smoke runs: fewer steps). Jobs are listed arm by arm, every seed of an arm
    before the next arm, so a plan cut short has whole arms (comparable over seeds)."""
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be distinct, got {names}")
    by_name = {a.name: a for a in arms}
    planner = _Planner(world, [out, *reuse], tuple(extra), {}, {})
    for arm in arms:
        for seed in seeds:
            planner.add(arm, seed, by_name)
    return planner.jobs, planner.finals


def needed_by(jobs: dict[str, Job], targets: Iterable[str]) -> dict[str, Job]:
    """The jobs of `jobs` named in `targets` (names not in `jobs`, e.g. a finished run's, are
    skipped) and every job they wait for, transitively, in the order of `jobs`."""
    keep: set[str] = set()
    todo = [t for t in targets if t in jobs]
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(jobs[name].after)
    return {name: job for name, job in jobs.items() if name in keep}


def train_arms(world: pipeline.World, out: Path, seeds: Iterable[int], arms: Sequence[Arm],
               workers: int, reuse: Sequence[Path] = (), extra: Sequence[str] = (),
               on_done: Callable[[str], None] | None = None) -> dict[RunKey, Path]:
    """Train what `plan` lists on `workers` processes (`on_done(job name)` after each job);
    returns (seed, arm) -> model folder."""
    jobs, finals = plan(world, out, seeds, arms, reuse, extra)
    for (seed, name), final in finals.items():
        if f"train {seed} {name}" not in jobs:
            pipeline.log_line(f"[seed {seed} {name}] reusing {final} (same training "
                              "configuration)")
    run_jobs(jobs, workers, on_done)
    return finals


def finished(finals: dict[RunKey, Path]) -> dict[RunKey, Path]:
    """The entries of `finals` whose model exists (a plan cut short has not made the rest)."""
    return {k: v for k, v in finals.items() if (v / "model.safetensors").is_file()}


# ------------------------------------------------------------------------------ scores
def score(world: pipeline.World, out: Path, finals: dict[RunKey, Path]) -> dict[str, dict[int,
                                                                                         Records]]:
    """Arm name -> seed -> per-image validation records of each model in `finals`, cached in
    ``<out>/seed<s>/<arm>_val.json`` (used while it names the same model and is newer)."""
    records: dict[str, dict[int, Records]] = {}
    missing: dict[str, Path] = {}
    for (seed, name), model in finals.items():
        cache = out / f"seed{seed}" / f"{name}_val.json"
        weights = model / "model.safetensors"
        if cache.is_file() and cache.stat().st_mtime > weights.stat().st_mtime:
            saved = json.loads(cache.read_text())
            if saved["model"] == str(model):
                records.setdefault(name, {})[seed] = saved["records"]
                continue
        missing[f"{seed}/{name}"] = model
    if missing:
        evaluation = pipeline.evaluate_models(world, missing, baselines=False)
        for key, model in missing.items():
            seed_text, name = key.split("/", 1)
            seed = int(seed_text)
            records.setdefault(name, {})[seed] = evaluation.per_image[key]
            cache = out / f"seed{seed}" / f"{name}_val.json"
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"model": str(model), "records": evaluation.per_image[key]}))
    return {name: dict(sorted(by_seed.items())) for name, by_seed in records.items()}


def baseline_scores(world: pipeline.World, out: Path) -> dict[str, Records]:
    """Per-image validation records of the two baselines (cached in ``<out>/baselines_val.json``
    while newer than the world)."""
    cache = out / "baselines_val.json"
    stamp = world.layout.root / pipeline.WORLD_FILE
    if cache.is_file() and cache.stat().st_mtime > stamp.stat().st_mtime:
        return json.loads(cache.read_text())
    per_image = pipeline.evaluate_models(world, {}, baselines=True).per_image
    out.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(per_image))
    return per_image
