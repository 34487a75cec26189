"""Runs that need a fresh process (test_distributed.py starts them): TensorFlow's device and cluster
settings can only be made before its runtime starts.

    python tests/cluster_runs.py parameter_server DATA_DIR OUTPUT_DIR
    python tests/cluster_runs.py same_batch DATA_DIR

parameter_server: `tte-train --strategy=parameter_server` on an in-process cluster (2 workers and
2 parameter servers as `tf.distribute.Server`s, this process the coordinator), reading streamed
data. same_batch: one batch under `tf.distribute.MirroredStrategy` over two CPU devices and without
a strategy: the loss, J and RMSE of `test_step` and `train_step`, and the weights after the step;
then the weight average (`trainer.WeightAverage`) swapping the mirrored model's weights on every
replica.

Prints one JSON line with what the test checks.
"""

import json
import os
import socket
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"     # Keras 2 for tfrs, whatever is imported first


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(mode, data_dir, output_dir=None):
    if mode == "parameter_server":
        cluster = {"chief": [f"127.0.0.1:{free_port()}"],
                   "worker": [f"127.0.0.1:{free_port()}" for _ in range(2)],
                   "ps": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
        os.environ["TF_CONFIG"] = json.dumps({"cluster": cluster,
                                              "task": {"type": "chief", "index": 0}})
        out = parameter_server(data_dir, output_dir, cluster)
    else:
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        out = same_batch(data_dir, ["/cpu:0", "/cpu:1"])
    print("RESULT " + json.dumps(out))


def tiny(data_dir, **overrides):
    from tte_tfrs.training.config import TrainConfig
    values = dict(data_dir=data_dir, embedding_dim=8, epochs=4, batch_size=256,
                  early_stopping_patience=0)
    values.update(overrides)
    return TrainConfig(**values)


def same_batch(data_dir, devices):
    """{name: (one process, two replicas)} for one batch's reported values, and the largest
    difference between the weights after one training step."""
    import numpy as np
    import tensorflow as tf

    from tte_tfrs.data.tfdata import make_training_dataset
    from tte_tfrs.model.two_tower import RATING
    from tte_tfrs.model.vocabulary import build_vocabularies
    from tte_tfrs.training import trainer

    config = tiny(data_dir)
    dataset, _, train_columns, _ = trainer.start(config)
    mean = float(np.mean(train_columns[RATING]))
    vocabularies = build_vocabularies(dataset.user_features + dataset.item_features, train_columns,
                                      config.min_count, config.max_text_tokens)
    sample = {k: v[:1] for k, v in train_columns.items() if k != RATING}
    strategy = tf.distribute.MirroredStrategy(devices)
    models = []
    for scope in (tf.distribute.get_strategy(), strategy):
        with scope.scope():
            model = trainer.build_model(config, dataset, train_columns, mean, vocabularies)
            model(sample)
            model.compile(optimizer=trainer.make_optimizer(config))
        models.append(model)
    single, mirrored = models
    batch = next(iter(make_training_dataset(single.preprocess, train_columns, config.batch_size)))
    half = config.batch_size // 2
    shares = strategy.experimental_distribute_values_from_function(
        lambda context: tf.nest.map_structure(
            lambda t: t[context.replica_id_in_sync_group * half:
                        (context.replica_id_in_sync_group + 1) * half], batch))

    def both(step):
        for model in models:
            model.reset_metrics()
        one = {k: float(v) for k, v in getattr(single, step)(batch).items()}
        two = strategy.run(tf.function(getattr(mirrored, step)), args=(shares,))
        two = {k: float(strategy.experimental_local_results(v)[0]) for k, v in two.items()}
        return {k: [one[k], two[k]] for k in ("loss", "regularization_loss", "rmse")}

    out = {"test_step": both("test_step"), "train_step": both("train_step")}
    out["weights_max_difference"] = max(
        float(np.max(np.abs(a.numpy() - b.numpy())))
        for a, b in zip(single.trainable_variables, mirrored.trainable_variables))
    out["weights_moved"] = max(
        float(np.max(np.abs(a.numpy() - b)))
        for a, b in zip(single.trainable_variables, [w for w in _initial(config, dataset,
                                                                         train_columns, mean,
                                                                         vocabularies, sample)]))
    out.update(mirrored_average(strategy, mirrored))
    return out


def mirrored_average(strategy, model, decay=0.5, epochs=3):
    """Drives `trainer.WeightAverage` over `epochs` epochs whose steps leave random weights in the
    mirrored `model`: the largest difference, over every replica's copy, from the normalised
    average (during and after each validation pass) and from the raw weights (at the next
    epoch's start)."""
    import numpy as np

    from tte_tfrs.training import trainer
    variables = model.trainable_variables
    rng = np.random.default_rng(0)
    average = trainer.WeightAverage(decay)
    average.set_model(model)
    sums, norm, raw = None, 0.0, None
    errors = {"average_max_error": 0.0, "raw_max_error": 0.0}

    def largest(expected):
        return max(float(np.max(np.abs(copy.numpy() - want)))
                   for variable, want in zip(variables, expected)
                   for copy in strategy.experimental_local_results(variable))

    for epoch in range(epochs):
        average.on_epoch_begin(epoch)
        if raw is not None:
            errors["raw_max_error"] = max(errors["raw_max_error"], largest(raw))
        raw = [rng.normal(size=v.shape).astype(np.float32) for v in variables]
        with strategy.scope():
            for variable, value in zip(variables, raw):
                variable.assign(value)
        sums = raw if sums is None else [decay * s + r for s, r in zip(sums, raw)]
        norm = norm * decay + 1.0
        expected = [s / norm for s in sums]
        average.on_test_begin()
        # What the validation pass sees, and what the epoch's end (early stopping) sees.
        errors["average_max_error"] = max(errors["average_max_error"], largest(expected))
        average.on_test_end()
        average.on_epoch_end(epoch)
        errors["average_max_error"] = max(errors["average_max_error"], largest(expected))
    errors["replicas"] = len(strategy.experimental_local_results(variables[0]))
    return errors


def _initial(config, dataset, train_columns, mean, vocabularies, sample):
    from tte_tfrs.training import trainer
    model = trainer.build_model(config, dataset, train_columns, mean, vocabularies)
    model(sample)
    return [v.numpy() for v in model.trainable_variables]


def parameter_server(data_dir, output_dir, cluster):
    import tensorflow as tf

    from tte_tfrs.workflows import train_and_export
    # In one process the servers share its thread pool; TensorFlow's tutorial gives the workers
    # more inter-op threads than cores so their steps cannot starve each other.
    threads = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=4)
    servers = [tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name=job, task_index=n,
                                    protocol="grpc", config=threads, start=True)
               for job in ("worker", "ps") for n in range(2)]
    # Asynchronous steps: with Adagrad's default step of 0.5, stale updates of the same rows by
    # both workers made the first epoch overshoot in about 1 run in 3 on a loaded machine
    # (validation RMSE 4-14 after epoch 1, 1.52-1.74 test RMSE after 8); at 0.2, 3 runs of 3
    # under the same load ended at 1.32 (README "Scaling out" gives the same advice).
    config = tiny(data_dir, strategy="parameter_server", input_mode="streaming",
                  min_shard_bytes=1024, backup_dir=os.path.join(output_dir, ".backup"),
                  epochs=8, early_stopping_patience=3, learning_rate=0.2,
                  weight_average_decay=0.5)     # the average of sharded tables too
    checked = _checked_average()
    result, exported = train_and_export(config, output_dir, log=lambda message: None)
    del servers
    return {"metrics": result.metrics, "version": exported.version, "average": checked.seen}


def _checked_average():
    """Puts in `trainer.WeightAverage`'s place a subclass that reads the model's variables back
    (sharded ones included) after every swap and every restore: its ``seen`` holds the swaps,
    the restores and the largest difference from the average, and from the raw weights."""
    import numpy as np

    from tte_tfrs.training import trainer

    class CheckedAverage(trainer.WeightAverage):
        seen = {"swaps": 0, "restores": 0, "average_max_error": 0.0, "raw_max_error": 0.0}

        def _largest(self, expected):
            return max(float(np.max(np.abs(variable.numpy() - want)))
                       for variable, want in zip(self._variables(), expected))

        def _swap_in_average(self):
            swapping = self.raw is None
            super()._swap_in_average()
            if swapping:
                seen = self.seen
                seen["swaps"] += 1
                seen["average_max_error"] = max(seen["average_max_error"], self._largest(
                    [total / np.float32(self.norm) for total in self.sums]))

        def on_epoch_begin(self, epoch, logs=None):
            raw = self.raw
            super().on_epoch_begin(epoch, logs)
            if raw is not None:
                self.seen["restores"] += 1
                self.seen["raw_max_error"] = max(self.seen["raw_max_error"], self._largest(raw))

    trainer.WeightAverage = CheckedAverage
    return CheckedAverage


if __name__ == "__main__":
    main(*sys.argv[1:])
