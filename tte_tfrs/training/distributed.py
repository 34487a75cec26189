"""TensorFlow's own distributed engine, `tf.distribute`, for training on several processes.

Two strategies, chosen by ``TrainConfig.strategy`` and configured by the standard ``TF_CONFIG``
environment variable (``{"cluster": {"worker": ["host:port", ...], ...}, "task": {"type": ...,
"index": ...}}``):

``multi_worker``
    `tf.distribute.MultiWorkerMirroredStrategy`: synchronous data parallelism. Every worker runs the
    same command; each step splits the global batch over the workers and all-reduces the
    gradients, so a step is the single-process step on the same batch. The chief (``chief`` task,
    else ``worker`` 0) exports; the other workers export into temporary folders and delete them.
``parameter_server``
    `tf.distribute.ParameterServerStrategy`: the ``chief`` task is the coordinator (it builds the
    model, schedules steps on the ``worker`` tasks and exports); ``ps`` tasks hold the variables,
    and embedding tables larger than ``min_shard_bytes`` become `ShardedVariable`s split over
    them (`MinSizePartitioner`), so no table has to fit on one host. Worker and ps tasks only
    serve (`serve`); steps are asynchronous, each a whole batch on one worker.

Both run under `tf.keras.callbacks.BackupAndRestore` when ``backup_dir`` is set: a worker killed
mid-training is restarted with the same command and the run resumes from the last finished epoch.
Exports never depend on the cluster: the trained weights are copied into a plain single-process
model first (`plain_copy`), which the usual writer exports.

May import: tte_tfrs.data, tte_tfrs.model, tte_tfrs.training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tte_tfrs.errors import ConfigError, TteError
from tte_tfrs.model.two_tower import TwoTowerRatingModel
from tte_tfrs.training import checkpoint

TF_CONFIG = "TF_CONFIG"
NONE, MULTI_WORKER, PARAMETER_SERVER = "none", "multi_worker", "parameter_server"


@dataclasses.dataclass(frozen=True)
class Role:
    """This process's place in the cluster, from ``TF_CONFIG``.

    Attributes:
      strategy: the ``TrainConfig.strategy`` it was read for.
      task_type: ``chief``, ``worker`` or ``ps`` (None in one process).
      task_id: the task's index within its type.
      cluster: job name -> list of ``host:port`` (empty in one process).
    """

    strategy: str
    task_type: str | None = None
    task_id: int = 0
    cluster: Mapping[str, list] = dataclasses.field(default_factory=dict)

    @property
    def is_chief(self) -> bool:
        """Whether this process exports: the ``chief`` task, else ``worker`` 0, or one process."""
        if self.task_type is None or self.task_type == "chief":
            return True
        return self.task_type == "worker" and self.task_id == 0 and "chief" not in self.cluster

    @property
    def trains(self) -> bool:
        """Whether this process runs the training program (not a ps or a PS-strategy worker)."""
        if self.strategy == PARAMETER_SERVER:
            return self.task_type == "chief"
        return self.task_type != "ps"

    @property
    def num_workers(self) -> int:
        """Processes that compute steps: chief + workers (multi_worker) or workers (parameter_server)."""
        if self.strategy == PARAMETER_SERVER:
            return len(self.cluster.get("worker", []))
        return max(1, len(self.cluster.get("chief", [])) + len(self.cluster.get("worker", [])))

    @property
    def num_ps(self) -> int:
        return len(self.cluster.get("ps", []))

    def describe(self) -> str:
        if self.task_type is None:
            return "one process"
        jobs = ", ".join(f"{len(v)} {k}" for k, v in sorted(self.cluster.items()))
        return f"{self.task_type} {self.task_id} of a cluster of {jobs}"


def read_role(strategy: str, environ: Mapping[str, str] | None = None) -> Role:
    """Parses ``TF_CONFIG`` for `strategy`, checking that the cluster fits it.

    Raises:
      ConfigError: ``TF_CONFIG`` is missing (for a strategy), not JSON, or does not describe a
        cluster the strategy can use; the message says what was expected.
    """
    environ = os.environ if environ is None else environ
    if strategy == NONE:
        return Role(strategy)
    text = environ.get(TF_CONFIG, "")
    if not text.strip():
        raise ConfigError(f"--strategy={strategy} needs the {TF_CONFIG} environment variable: "
                          + _TF_CONFIG_HELP[strategy], field="strategy")
    try:
        spec = json.loads(text)
        cluster = {str(k): [str(a) for a in v] for k, v in spec["cluster"].items()}
        task = spec["task"]
        role = Role(strategy, str(task["type"]), int(task["index"]), cluster)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{TF_CONFIG} is not a usable cluster description ({exc!r}): "
                          + _TF_CONFIG_HELP[strategy], field="strategy") from None
    jobs = set(cluster)
    allowed = {"chief", "worker"} if strategy == MULTI_WORKER else {"chief", "worker", "ps"}
    if not jobs <= allowed | {"evaluator"} or role.task_type not in allowed:
        raise ConfigError(f"{TF_CONFIG} for --strategy={strategy} may name only "
                          f"{', '.join(sorted(allowed))} tasks, got jobs {sorted(jobs)} and task "
                          f"{role.task_type!r}: " + _TF_CONFIG_HELP[strategy], field="strategy")
    if strategy == PARAMETER_SERVER and (len(cluster.get("chief", [])) != 1 or not
                                         cluster.get("worker") or not cluster.get("ps")):
        raise ConfigError(f"{TF_CONFIG} for --strategy=parameter_server needs one chief (the "
                          "coordinator), at least one worker and at least one ps task: "
                          + _TF_CONFIG_HELP[strategy], field="strategy")
    if role.task_id >= len(cluster.get(role.task_type, [])) or role.task_id < 0:
        raise ConfigError(f"{TF_CONFIG} names task {role.task_type} {role.task_id}, but the "
                          f"cluster lists {len(cluster.get(role.task_type, []))} "
                          f"{role.task_type} address(es)", field="strategy")
    return role


_TF_CONFIG_HELP = {
    MULTI_WORKER: 'every worker sets TF_CONFIG=\'{"cluster": {"worker": ["host1:port", '
                  '"host2:port"]}, "task": {"type": "worker", "index": N}}\' and runs the same '
                  "command (worker 0 exports)",
    PARAMETER_SERVER: 'TF_CONFIG=\'{"cluster": {"chief": ["host0:port"], "worker": '
                      '["host1:port", ...], "ps": ["host2:port", ...]}, "task": {"type": '
                      '"chief", "index": 0}}\' with the task set to each role; the chief trains',
}


_STARTED: dict = {}


def start(config: Any) -> tuple[Role, tf.distribute.Strategy | None]:
    """This process's role and strategy (created once per process, None for a task that only serves).

    Call it before TensorFlow runs any op: `MultiWorkerMirroredStrategy` configures the runtime's
    collective ops, which is only possible at program start.

    Raises:
      ConfigError: ``TF_CONFIG`` does not fit the strategy, or TensorFlow had already started.
    """
    key = (config.strategy, config.min_shard_bytes, os.environ.get(TF_CONFIG, ""))
    if key not in _STARTED:
        role = read_role(config.strategy)
        prepare_process(role)
        strategy = _make_strategy(config, role) if role.trains else None
        _STARTED.clear()
        _STARTED[key] = (role, strategy)
    return _STARTED[key]


def _make_strategy(config: Any, role: Role) -> tf.distribute.Strategy:
    if config.strategy == MULTI_WORKER:
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as exc:
            raise ConfigError(f"--strategy=multi_worker must start before TensorFlow runs anything "
                              f"in this process ({exc}); in Python call "
                              "tte_tfrs.training.distributed.start(config) first",
                              field="strategy") from None
    if config.strategy == PARAMETER_SERVER:
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=config.min_shard_bytes, max_shards=role.num_ps)
        return tf.distribute.experimental.ParameterServerStrategy(
            resolver, variable_partitioner=partitioner)
    return tf.distribute.get_strategy()


def prepare_process(role: Role) -> None:
    """Process-wide settings a strategy needs before TensorFlow starts its runtime."""
    if role.strategy == PARAMETER_SERVER:
        # As TensorFlow's parameter-server tutorial: RPC failures reach the coordinator, which
        # re-schedules the steps of a lost worker instead of hanging.
        os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")


def serve(role: Role) -> None:
    """Runs this worker or ps task of a parameter-server cluster until the process is stopped."""
    prepare_process(role)
    server = tf.distribute.Server(tf.train.ClusterSpec(dict(role.cluster)),
                                  job_name=role.task_type, task_index=role.task_id,
                                  protocol="grpc", start=True)
    server.join()


def replica_batch(batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """Examples per replica per step: the global batch split evenly over the replicas in sync.

    Raises:
      ConfigError: `batch_size` does not split evenly.
    """
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ConfigError(f"batch_size {batch_size} must be a multiple of the {replicas} "
                          "replicas in sync, so every step is the single-process step",
                          field="batch_size")
    return batch_size // replicas


def distribute(strategy: tf.distribute.Strategy,
               make: Callable[[tf.distribute.InputContext], tf.data.Dataset]) -> Any:
    """What `Model.fit` takes under `strategy`: `make(input_context)` runs once per input
    pipeline (each worker builds its own, reading its own part of the data)."""
    if isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
        return tf.keras.utils.experimental.DatasetCreator(make)
    return strategy.distribute_datasets_from_function(make)


class WorkerLostError(TteError, RuntimeError):
    """A process of the cluster stopped answering; the others cannot go on without it."""


LOST = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
        tf.errors.DeadlineExceededError)


def backup_callbacks(backup_dir: str | None, role: Role) -> list:
    """[BackupAndRestore, HistoryBackup] when `backup_dir` is set: each epoch's end is saved, and a
    run restarted with the same command resumes after the last saved epoch (the backup is
    deleted when training finishes)."""
    if not backup_dir:
        return []
    return [tf.keras.callbacks.BackupAndRestore(backup_dir=backup_dir, save_freq="epoch"),
            HistoryBackup(backup_dir, role.is_chief)]


class HistoryBackup(tf.keras.callbacks.Callback):
    """Keeps every epoch's logs next to BackupAndRestore's checkpoint (``history.json``, written
    by the chief), so a restarted run's history also has the epochs before the restart."""

    def __init__(self, backup_dir: str, writes: bool):
        super().__init__()
        self.path = os.path.join(backup_dir, "history.json")
        self.writes = writes
        self.epochs: dict = {}

    def on_train_begin(self, logs=None):
        try:
            with open(self.path, encoding="utf-8") as f:
                self.epochs = {int(k): v for k, v in json.load(f).items()}
        except (OSError, ValueError):
            self.epochs = {}

    def on_epoch_end(self, epoch, logs=None):
        self.epochs[epoch] = {k: float(v) for k, v in (logs or {}).items()
                              if np.ndim(v) == 0 and np.isfinite(float(v))}
        if self.writes:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            staged = self.path + ".tmp"
            with open(staged, "w", encoding="utf-8") as f:
                json.dump(self.epochs, f)
            os.replace(staged, self.path)

    def full_history(self, history: dict, first_epoch: int) -> dict:
        """`history` (this run's epochs, from `first_epoch` on) with the saved earlier epochs in
        front."""
        earlier = [self.epochs[e] for e in range(first_epoch) if e in self.epochs]
        if not earlier:
            return history
        return {key: [e.get(key, float("nan")) for e in earlier] + list(values)
                for key, values in history.items()}

    def finish(self) -> None:
        """Deletes the history and, once empty, the backup folder (the chief's job)."""
        if self.writes:
            with contextlib.suppress(OSError):
                os.remove(self.path)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(self.path))


def lost_worker(exc: Exception, backup_dir: str | None) -> WorkerLostError:
    """The message for a cluster that lost a process mid-training."""
    lines = [line.strip() for line in str(getattr(exc, "message", exc)).splitlines()]
    telling = [line for line in lines if re.search(r"abort|closed|unavailable|connect|socket|peer",
                                                   line, re.I)]
    first = (telling or [line for line in lines if line] or [type(exc).__name__])[0][:200]
    resume = (f"training resumes after the last epoch saved in {backup_dir}" if backup_dir else
              "without --backup_dir training starts again from the first epoch")
    return WorkerLostError(f"a process of the cluster stopped ({first}); restart every process "
                           f"that stopped with the same command and TF_CONFIG: {resume}")


def plain_copy(model: TwoTowerRatingModel, build: Callable[[], TwoTowerRatingModel]
               ) -> TwoTowerRatingModel:
    """A single-process copy of a model trained under a strategy: same weights (shards joined) and
    Adagrad accumulators, no distributed variables, so its exports load anywhere.

    Args:
      model: the trained model.
      build: returns a model of the same configuration and vocabularies, built (weights created)
        outside any strategy scope; its weights are overwritten.

    Raises:
      ValueError: the two models' weights do not correspond.
    """
    copy = build()
    slots = _accumulator_slots(model)
    accumulators = {}
    for source, target in ((model.user_tower, copy.user_tower), (model.item_tower, copy.item_tower)):
        groups = shard_groups(source.weights)
        if len(groups) != len(target.weights):
            raise ValueError(f"{source.name} has {len(groups)} weights, its copy "
                             f"{len(target.weights)}")
        for parts, twin in zip(groups.values(), target.weights):
            value = np.concatenate([p.numpy() for p in parts]) if len(parts) > 1 else parts[0].numpy()
            if tuple(value.shape) != tuple(twin.shape):
                raise ValueError(f"{twin.name}: shape {value.shape} does not fit {twin.shape}")
            twin.assign(value)
            found = [slots.get(id(part)) for part in parts]
            if all(slot is not None for slot in found):
                values = [slot.numpy() for slot in found]
                accumulators[target.weight_key(twin)] = (
                    np.concatenate(values) if len(values) > 1 else values[0])
    if accumulators:
        copy.compile(optimizer=tf.keras.optimizers.Adagrad(
            learning_rate=float(model.optimizer.learning_rate.numpy())))
        checkpoint.restore_optimizer(copy, accumulators)
    return copy


def shard_groups(weights: list) -> dict:
    """{weight name: [its variables]}: Keras lists a `ShardedVariable`'s shards (``.../part_N``)
    one by one; they are grouped back, in order."""
    groups: dict = {}
    for weight in weights:
        name = re.sub(r"/part_\d+(:\d+)?$", "", weight.name)
        groups.setdefault(name, []).append(weight)
    return groups


def sharded_tables(model: TwoTowerRatingModel) -> dict:
    """{weight name: number of shards} of the model's weights split over parameter servers."""
    out = {}
    for tower in (model.user_tower, model.item_tower):
        for name, parts in shard_groups(tower.weights).items():
            if len(parts) > 1:
                out[f"{tower.side}/" + "/".join(name.split("/")[-2:])] = len(parts)
    return out


def _accumulator_slots(model: TwoTowerRatingModel) -> dict:
    """{id(trainable variable): its Adagrad accumulator} of a compiled model ({} for others)."""
    optimizer = getattr(model, "optimizer", None)
    if not isinstance(optimizer, tf.keras.optimizers.Adagrad) or not optimizer.variables:
        return {}
    # Keras' Adagrad keeps one accumulator per variable, found through its index (the same
    # lookup its update step makes); shards of a ShardedVariable each have their own.
    out = {}
    for variable in model.trainable_variables:
        for part in getattr(variable, "variables", None) or [variable]:
            index = optimizer._index_dict.get(optimizer._var_key(part))
            if index is not None:
                out[id(part)] = optimizer._accumulators[index]
    return out


@contextlib.contextmanager
def export_folder(output_dir: str, role: Role) -> Iterator[str]:
    """The folder this process exports into: `output_dir` for the chief, a temporary folder for
    every other worker (deleted afterwards), as TensorFlow's multi-worker saving guide asks."""
    if role.is_chief:
        yield output_dir
        return
    folder = tempfile.mkdtemp(prefix=f"tte-{role.task_type}-{role.task_id}-")
    try:
        yield os.path.join(folder, "export")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
