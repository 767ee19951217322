"""Sharded runs on Ray: `specbench run --workers N [--ray-address ADDR]`.

- A worker is a Ray actor holding one whole device (a GPU, by Ray's resource request, or a
  share of the CPU cores) with the model loaded once and warmed up as a single-process run is.
- The unit of work is one question in one repeat with every method of the run in turn, exactly
  as the single-process runner interleaves them: a speedup is always vanilla vs method on one
  device. Units are dealt one at a time to whichever worker is free, so the shards are
  as small as they can be and a slow worker holds nobody up. Sweep points are methods of the
  run and travel inside each unit.
- Only this process (the driver) writes: a unit's answer lines come back together and are
  appended to the usual answer files, flushed. A worker that dies loses only its unit in
  flight, which goes back to the queue for a fresh worker; nothing can be written twice.
  A killed driver loses at most the units in flight; `--resume` continues as ever.
- run.json records every worker (host, device, pid) and every answer line names its worker,
  so that `report` can keep devices apart.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from pathlib import Path

import torch
from rich.console import Console

from ..analysis.results import read_run_json
from ..engine.load import load_engine, load_tokenizer
from ..errors import SpecbenchError
from ..models.targets import model_folder
from .profile import attach_profile, measured_profile, prompt_lengths
from .runner import Runner, answer_files, append_line, environment, pending_units, run_meta, \
    unit_label, write_run_json

# Retries of one unit whose worker died (each time on a fresh worker) before the run stops:
# a unit that kills every worker it meets (out of memory on a long question) is not a fault
# that another try mends.
UNIT_RETRIES = 3


def require_ray():
    try:
        import ray     # an optional extra
    except ImportError:
        raise SpecbenchError("--workers needs Ray, an optional extra: pip install "
                             "'specbench-suite[ray]'") from None
    return ray


class Worker:
    """One device's share of a run (wrapped as a Ray actor by `start_worker`)."""

    def __init__(self, worker_id: str, config, folder: str, questions: list, threads: int):
        self.worker_id = worker_id
        if config.device == "cpu":
            torch.set_num_threads(threads)
        # The driver's folder where the file system is shared; else the model as named (a hub
        # id, the package index's target), fetched on this host.
        if not Path(folder).is_dir():
            folder = str(model_folder(config.model))
        # Ray shows this worker only its own GPU, as cuda:0, whatever the driver's index.
        device = "cuda:0" if config.device.startswith("cuda") else config.device
        engine, _, _ = load_engine(folder, dtype=config.dtype, device=device,
                                   with_tokenizer=False, compile=config.compile)
        self.questions = {q.question_id: q for q in questions}
        self.runner = Runner(config, engine, load_tokenizer(folder), questions, None,
                             Path(config.model).name)
        self.runner.warm_up()

    def describe(self) -> dict:
        """This worker for run.json, and the run's meta as this worker sees it."""
        engine = self.runner.engine
        env = environment(engine.device)
        return {"id": self.worker_id, "host": socket.gethostname(), "pid": os.getpid(),
                "device": str(engine.device), "device_name": env["gpu"] or env["cpu"],
                "environment": env,
                "meta": run_meta(self.runner.config, engine, self.runner)}

    def answer(self, question_id: int, repeat: int, names: list[str]) -> list[dict]:
        lines = list(self.runner.answer_unit(self.questions[question_id], repeat, names))
        for line in lines:
            line["worker"] = self.worker_id
        return lines

    def profile(self, contexts: list[int]) -> dict:
        return measured_profile(self.runner.engine, self.runner.config.model, contexts)


def start_ray(ray, address: str | None) -> bool:
    """Connect to the cluster at `address`, or start a local Ray; True when started here."""
    if ray.is_initialized():
        return False
    # The workers read add-ons and kernel choices where the driver does, and follow a forced
    # kernel (SPECBENCH_KERNELS): a kernel's summation order can move a near-tie.
    passed = {k: v for k, v in os.environ.items() if k in ("SPECBENCH_HOME", "SPECBENCH_KERNELS")}
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", runtime_env={"env_vars": passed} if passed else None)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise SpecbenchError(f"--ray-address {address}: cannot connect to Ray "
                             f"({str(err).splitlines()[0]})") from None
    return address is None


def worker_resources(ray, device: str, workers: int) -> tuple[dict, int]:
    """Ray's resource request for one worker, and its torch threads: a whole GPU, or an equal
    share of the cluster's CPU cores."""
    if device.startswith("cuda"):
        return {"num_gpus": 1, "num_cpus": 1}, 1
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
    return {"num_cpus": cpus}, cpus


class Pool:
    """The workers of one run: starts them, replaces the dead, and knows who holds what."""

    def __init__(self, ray, plan, workers: int):
        self.ray, self.plan = ray, plan
        self.options, self.threads = worker_resources(ray, plan.config.device, workers)
        self.threads = plan.config.threads or self.threads
        self.actor_class = ray.remote(max_restarts=0, max_task_retries=0)(Worker)
        self.actors: dict[int, object] = {}      # slot → its live worker
        self.ids: dict[int, str] = {}
        self.info: dict[int, dict] = {}          # slot → its worker's description, once loaded
        self.restarts: dict[int, int] = {}

    def start(self, slot: int):
        """A fresh worker in `slot` ('w1', its replacements 'w1.1', 'w1.2', …): returns the
        future of its description, which resolves once the model is loaded and warm."""
        if slot in self.actors:
            self.restarts[slot] = self.restarts.get(slot, 0) + 1
        worker_id = f"w{slot}" + (f".{self.restarts[slot]}" if slot in self.restarts else "")
        plan = self.plan
        actor = self.actor_class.options(**self.options).remote(
            worker_id, plan.config, str(plan.folder), plan.questions, self.threads)
        self.actors[slot], self.ids[slot] = actor, worker_id
        self.info.pop(slot, None)
        return actor.describe.remote()

    def stop(self):
        for actor in self.actors.values():
            self.ray.kill(actor)


def execute_sharded(plan, workers: int, address: str | None = None,
                    console: Console | None = None, progress=None, on_result=None) -> Path:
    """Run the plan over `workers` Ray workers (see the module's notes). `on_result(pool,
    slot)` is called after each unit is stored and the next is handed out (tests use it to
    kill a worker mid-unit)."""
    if workers < 1:
        raise SpecbenchError(f"--workers must be at least 1 (got {workers})")
    ray = require_ray()
    console = console or Console()
    config, out = plan.config, plan.out
    files = answer_files(out, config.methods)
    todo = deque(pending_units(config, plan.questions, files))
    if not todo:
        return out
    started_here = start_ray(ray, address)
    pool = Pool(ray, plan, min(workers, len(todo)))
    failures: dict[tuple[int, int], int] = {}
    console.print(f"{len(plan.questions)} questions × {len(config.methods)} methods × "
                  f"{config.repeats} repeats on {min(workers, len(todo))} Ray workers "
                  f"({pool.options}) → {out}", highlight=False)
    task = progress.add_task("questions", total=len(todo), info="starting workers") \
        if progress else None
    in_flight = {}          # future → (slot, unit or None for a worker's start)

    def hand_out(slot: int):
        if todo:
            repeat, question, names = unit = todo.popleft()
            ref = pool.actors[slot].answer.remote(question.question_id, repeat, names)
            in_flight[ref] = (slot, unit)

    try:
        for slot in range(min(workers, len(todo))):
            in_flight[pool.start(slot)] = (slot, None)
        while in_flight:
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            slot, unit = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as err:
                retry_or_stop(unit, failures, pool.ids[slot], err, console)
                if unit is not None:
                    todo.appendleft(unit)
                in_flight[pool.start(slot)] = (slot, None)
                continue
            except ray.exceptions.RayTaskError as err:
                raise unwrapped(err) from None
            if unit is None:
                pool.info[slot] = result
                result["meta"]["dtype_choice"] = plan.dtype_why
                record_worker(out, result)
            else:
                repeat, question, names = unit
                for line in result:
                    append_line(files[line["method"]], line)
                if progress:
                    progress.update(task, advance=1, info=f"{unit_label(question, repeat)} "
                                                          f"on {pool.ids[slot]}")
            hand_out(slot)
            if on_result and unit is not None:
                on_result(pool, slot)
        if config.breakdown:
            actor = next(iter(pool.actors.values()))
            attach_profile(lambda contexts: ray.get(actor.profile.remote(contexts)), out,
                           plan.profile, prompt_lengths(plan))
    finally:
        pool.stop()
        if started_here:
            ray.shutdown()
    return out


def retry_or_stop(unit, failures: dict, worker_id: str, err, console: Console):
    """Count a dead worker against its unit; stop the run when the unit has had its tries."""
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if unit is None:
        key, what = ("start", 0), "while loading"
    else:
        repeat, question, _ = unit
        key, what = (question.question_id, repeat), f"on q{question.question_id} r{repeat + 1}"
    failures[key] = failures.get(key, 0) + 1
    if failures[key] > UNIT_RETRIES:
        raise SpecbenchError(f"worker {worker_id} died {what} for the {failures[key]}th time; "
                             f"stopping (last error: {first_line})")
    console.print(f"[yellow]worker {worker_id} died {what}[/yellow]; starting a fresh worker "
                  "and trying again", highlight=False)


def unwrapped(err) -> Exception:
    """A user error raised in a worker (a prompt past the context) as the CLI shows errors."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, SpecbenchError) else err


def record_worker(out: Path, info: dict):
    """Add a worker to run.json, which the first worker of a new run writes from its meta."""
    path = out / "run.json"
    meta = read_run_json(path) if path.exists() else info["meta"]
    worker = {k: v for k, v in info.items() if k != "meta"}
    meta.setdefault("workers", {})[info["id"]] = worker
    out.mkdir(parents=True, exist_ok=True)
    write_run_json(out, meta)
