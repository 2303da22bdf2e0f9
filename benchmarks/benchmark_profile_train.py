"""Where a demo training step's time goes: data, model forward, frozen encoder, losses, the rest
of the stage (CutMix, concatenation, casts), backward, gradient clipping, optimiser, logging and
sync.

    python benchmarks/benchmark_profile_train.py --world demo_out --out profile.json
    python benchmarks/benchmark_profile_train.py --world demo_out --set dist.precision=fp32 --ops 3

Runs the `Trainer` of configs/demo_{teacher,student}.yaml on a finished demo's world (its data,
semantic encoder and pseudo-labels: `python -m depth_anything_fast.demo --out demo_out`) for
`--steps` steps with the demo's thread setting, and times each phase (wall clock and the main
thread's CPU time: on a shared machine the wall clock also counts waiting for a core) around the
trainer's own calls. They are wrapped from outside (a `Trainer` subclass, hooks, and
wrappers of the loss functions), so the trainer is unchanged and the same script profiles an
older checkout (`PYTHONPATH=<checkout> python benchmarks/benchmark_profile_train.py ...`). Phases are
exclusive (the model forward inside the stage's loss call is not counted twice); "other" is
the step's wall time that no phase covers (the loop itself, the progress bar). The loaders
decode and augment on their own threads: their CPU time (the process's CPU time minus the main
thread's, where torch computes with the demo's one intra-op thread) is reported beside the
split, and "data" is only the time the step waited for a batch. `--ops` adds torch.profiler's
top operators over a few more steps (timers inflate under the profiler, so they are reported
from the steps before it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

PHASES = ("data", "model forward", "frozen encoder", "losses", "stage rest", "backward",
          "gradient clipping", "optimiser", "logging / sync", "other")
LOSSES = ("affine_invariant_loss", "cutmix_loss", "feature_alignment_loss",
          "scale_shift_invariant_loss", "silog_loss")


class PhaseClock:
    """Exclusive wall time and main-thread CPU time per phase and step: a phase opened inside
    another is subtracted from the outer one."""

    def __init__(self) -> None:
        self.step = 0
        self.wall: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.cpu: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        # per open phase: [wall start, CPU start, wall of inner phases, CPU of inner phases]
        self._stack: list[list[float]] = []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._stack.append([time.perf_counter(), time.thread_time(), 0.0, 0.0])
        try:
            yield
        finally:
            wall_start, cpu_start, wall_inner, cpu_inner = self._stack.pop()
            wall = time.perf_counter() - wall_start
            cpu = time.thread_time() - cpu_start
            self.wall[self.step][name] += wall - wall_inner
            self.cpu[self.step][name] += cpu - cpu_inner
            if self._stack:
                self._stack[-1][2] += wall
                self._stack[-1][3] += cpu

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return fn(*args, **kwargs)
        return timed


def cpu_description() -> dict[str, Any]:
    """The CPU's model name, core count and bf16-related flags from /proc/cpuinfo."""
    model, flags = platform.processor() or "?", []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model in ("?", "x86_64", ""):
            model = value.strip()
        if key.strip() == "flags" and not flags:
            flags = value.split()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return {"model": model, "cores": os.cpu_count(),
            "flags": [f for f in wanted if f in flags]}


def profile_stage(stage: str, world: Path, steps: int, warmup: int, overrides: list[str],
                  ops: int) -> dict[str, Any]:
    """Train `stage` for `steps` + `ops` steps on the demo world: the phase split of steps
    `warmup` + 1 .. `steps`, then torch.profiler's top operators over the `ops` (>= 1) others."""
    import depth_anything_fast.losses as losses_module
    from depth_anything_fast.recipe import pipeline
    from depth_anything_fast.train import trainer as trainer_module
    from depth_anything_fast.train.batch_stream import BatchStream
    from depth_anything_fast.train.config import load_config
    from depth_anything_fast.train.step_monitor import StepMonitor

    clock = PhaseClock()
    total_steps = steps + ops
    marks: dict[int, tuple[float, float, float]] = {}  # step -> (wall, process CPU, thread CPU)
    profiler: list[Any] = []

    class ProfiledTrainer(trainer_module.Trainer):
        def _build(self, info):
            run = super()._build(info)
            depth: dict[str, list] = {"open": []}

            def opened(name):
                def hook(*args):
                    ctx = clock.phase(name)
                    ctx.__enter__()
                    depth["open"].append(ctx)
                return hook

            def close(*args):
                depth["open"].pop().__exit__(None, None, None)

            run.model.register_forward_pre_hook(opened("model forward"))
            run.model.register_forward_hook(close)
            run.optimizer.register_step_pre_hook(opened("optimiser"))
            run.optimizer.register_step_post_hook(close)
            if run.frozen is not None:
                run.frozen.patch_tokens = clock.wrap("frozen encoder", run.frozen.patch_tokens)
            return run

        def train_step(self, run, stop):
            clock.step = run.step + 1
            marks[clock.step] = (time.perf_counter(), time.process_time(), time.thread_time())
            if clock.step == steps + 1 and ops:
                profiler.append(torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU]))
                profiler[0].__enter__()
            return super().train_step(run, stop)

        def _stage_loss(self, *args, **kwargs):
            with clock.phase("stage rest"):
                return super()._stage_loss(*args, **kwargs)

        def _after_step(self, *args, **kwargs):
            with clock.phase("logging / sync"):
                return super()._after_step(*args, **kwargs)

    patches = [(BatchStream, "__next__", clock.wrap("data", BatchStream.__next__)),
               (torch.Tensor, "backward", clock.wrap("backward", torch.Tensor.backward)),
               (trainer_module, "clip_gradients",
                clock.wrap("gradient clipping", trainer_module.clip_gradients)),
               (torch.optim.Optimizer, "zero_grad",
                clock.wrap("optimiser", torch.optim.Optimizer.zero_grad)),
               (torch.optim.lr_scheduler.LRScheduler, "step",
                clock.wrap("optimiser", torch.optim.lr_scheduler.LRScheduler.step)),
               (StepMonitor, "settle", clock.wrap("logging / sync", StepMonitor.settle)),
               (StepMonitor, "record", clock.wrap("logging / sync", StepMonitor.record))]
    patches += [(losses_module, name, clock.wrap("losses", getattr(losses_module, name)))
                for name in LOSSES if hasattr(losses_module, name)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    config = pipeline.TEACHER_CONFIG if stage == "teacher" else pipeline.STUDENT_CONFIG
    with tempfile.TemporaryDirectory() as tmp:
        encoder = world / "semantic_encoder" / "encoder.safetensors"
        values = [f"data.labelled={world / 'data' / 'labelled'}", f"model.init={encoder}",
                  f"steps={total_steps}", f"out_dir={tmp}", "progress=false", "export=false",
                  "checkpoint_every=0", *overrides]
        if stage == "student":
            values += [f"data.pseudo_labels={world / 'pseudo_labels'}",
                       f"model.frozen_encoder={encoder}"]
        cfg = load_config(config, values)
        for owner, name, wrapped in patches:
            setattr(owner, name, wrapped)
        try:
            start = time.perf_counter()
            ProfiledTrainer(cfg).run()
            run_s = time.perf_counter() - start
        finally:
            for owner, name, original in saved:
                setattr(owner, name, original)
            if profiler:
                profiler[0].__exit__(None, None, None)
    # steps warmup + 1 .. steps, from the start of the first to the start of the next one
    window = range(warmup + 1, steps + 1)
    (start, cpu_start, main_start), end = marks[warmup + 1], marks[steps + 1]
    wall, cpu_all, cpu_main = end[0] - start, end[1] - cpu_start, end[2] - main_start
    n = len(window)
    split, split_cpu = ({name: sum(per_step[s].get(name, 0.0) for s in window) / n
                         for name in PHASES if name != "other"}
                        for per_step in (clock.wall, clock.cpu))
    split["other"] = wall / n - sum(split.values())
    split_cpu["other"] = cpu_main / n - sum(split_cpu.values())
    result: dict[str, Any] = {
        "stage": stage, "steps_timed": n, "step_s": wall / n, "steps_per_s": n / wall,
        "split_s": split, "split_cpu_s": split_cpu,
        "loader_cpu_s_per_step": (cpu_all - cpu_main) / n,
        "main_thread_cpu_s_per_step": cpu_main / n, "run_s": run_s,
        "images_per_step": cfg.data.batch_size * (
            1 + cfg.data.unlabelled_ratio if stage == "student" else 1),
        "precision": cfg.dist.precision, "compile": cfg.dist.compile,
    }
    if profiler:
        table = profiler[0].key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        result["ops_steps"] = total_steps - steps
        result["ops_table"] = table
    return result


def markdown(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [f"CPU: {machine['cpu']['model']}, {machine['cpu']['cores']} cores, flags "
             f"{' '.join(machine['cpu']['flags'])}; torch {machine['torch']} "
             f"({machine['torch_threads']} intra-op thread(s)); load average "
             f"{machine['load_before']} before, {machine['load_after']} after.", ""]
    for r in results:
        lines += [f"**{r['stage']}** ({r['images_per_step']} images per step, precision "
                  f"{r['precision']}, compile {str(r['compile']).lower()}): "
                  f"{r['step_s'] * 1e3:.0f} ms per step = {r['steps_per_s']:.2f} steps/s over "
                  f"{r['steps_timed']} steps; loader threads' CPU "
                  f"{r['loader_cpu_s_per_step'] * 1e3:.0f} ms per step beside the main thread's "
                  f"{r['main_thread_cpu_s_per_step'] * 1e3:.0f} ms.", "",
                  "| phase | wall ms / step | share | main-thread CPU ms / step | share |",
                  "|---|---|---|---|---|"]
        cpu_step = r["main_thread_cpu_s_per_step"]
        for name, seconds in r["split_s"].items():
            cpu = r["split_cpu_s"][name]
            lines.append(f"| {name} | {seconds * 1e3:.1f} | {seconds / r['step_s']:.1%} | "
                         f"{cpu * 1e3:.1f} | {cpu / cpu_step:.1%} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", required=True, type=Path,
                        help="a finished demo's output folder (data, semantic encoder, "
                             "pseudo-labels)")
    parser.add_argument("--stages", nargs="+", default=["teacher", "student"],
                        choices=["teacher", "student"])
    parser.add_argument("--steps", type=int, default=60, help="steps per stage (default 60)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="first steps left out of the split (default 5)")
    parser.add_argument("--ops", type=int, default=1,
                        help="steps after the timed ones under torch.profiler (its operator "
                             "table; default 1, at least 1: it closes the timed window)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="FIELD=VALUE", help="config override (repeatable)")
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    args = parser.parse_args(argv)
    if args.ops < 1 or not 0 <= args.warmup < args.steps:
        parser.error("need --ops >= 1 and 0 <= --warmup < --steps")
    for part in ("data/labelled", "semantic_encoder/encoder.safetensors", "pseudo_labels"):
        if not (args.world / part).exists():
            parser.error(f"--world {args.world}: {part} not found (run the demo into it first)")
    from depth_anything_fast.recipe import pipeline

    pipeline.set_threads()  # as the demo
    machine = {"cpu": cpu_description(), "torch": torch.__version__,
               "torch_threads": torch.get_num_threads(),
               "load_before": [round(x, 2) for x in os.getloadavg()]}
    results = [profile_stage(stage, args.world, args.steps, args.warmup, args.overrides,
                             args.ops) for stage in args.stages]
    machine["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(markdown(results, machine))
    for r in results:
        if "ops_table" in r:
            print(f"{r['stage']}: top operators over {r['ops_steps']} step(s) under "
                  "torch.profiler\n" + r["ops_table"])
    if args.out is not None:
        args.out.write_text(json.dumps({"machine": machine, "results": results}, indent=2)
                            + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
