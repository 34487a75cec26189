"""The two-tower rating model: predicted rating = <user embedding, item embedding>.

May import: tte_tfrs.model.towers.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tte_tfrs.model.towers import ITEM, USER, Tower

RATING = "rating"
# Cross-fitting (`TrainConfig.cross_fit`): the ensemble member that must not learn from a row
# (-1: every member learns from it); validation rows are scored by that member alone.
HOLDOUT = "holdout_member"
# In the error a training step raises when its loss (or gradient) is NaN or infinite.
NON_FINITE_LOSS = "tte_tfrs: the training loss is not finite"


class TwoTowerRatingModel(tfrs.Model):
    """Combines a user and an item `Tower` with a tfrs Ranking task (MSE loss, RMSE and MAE).

    Each step minimises the SRS loss 1/|B| sum (r - <u, v>)^2 + gamma [J(u) + J(v)]: the task loss
    plus ``regularization_loss``, which is J of the embedding rows the batch looked up (batch
    scope, from `Tower.embed_with_penalty`) plus the towers' Keras weight regularizers (table
    scope, hidden-layer kernels). The steps mirror ``tfrs.Model``'s and report the same metrics
    (``loss``, ``regularization_loss``, ``total_loss``, ``rmse``, ``mae``).

    With ``retrieval_weight`` w > 0 training adds w times a tfrs Retrieval task on the same dot
    product (`retrieval_loss`); with w = 0 the step is exactly the SRS loss above.

    Under a `tf.distribute` strategy each replica computes its share of the batch's loss (the
    per-example losses summed over the global batch size, `tf.nn.compute_average_loss`, and J
    over the number of replicas), so the summed gradients and the reported values are those of
    the whole batch in one process; metrics are reported once, not summed over the workers
    (``distribute_reduction_method = "first"``: Keras' metrics are already global).
    """

    def __init__(self, user_tower: Tower, item_tower: Tower, retrieval_weight: float = 0.0,
                 item_probabilities: np.ndarray | None = None, retrieval_temperature: float = 1.0,
                 logq_strength: float = 1.0):
        super().__init__()
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.retrieval_weight = float(retrieval_weight)
        if self.retrieval_weight:
            if item_probabilities is None:
                raise ValueError("a retrieval weight needs the items' sampling probabilities")
            # Each item id row's share of the training rows (row 0: unknown items), raised to the
            # logQ strength alpha: the logits are lowered by alpha log q.
            self.item_probabilities = tf.constant(
                np.power(np.asarray(item_probabilities, np.float64), logq_strength), tf.float32)
            self.retrieval = tfrs.tasks.Retrieval(
                loss=tf.keras.losses.CategoricalCrossentropy(
                    from_logits=True, reduction=tf.keras.losses.Reduction.NONE),
                remove_accidental_hits=True, temperature=float(retrieval_temperature))
        self.task = tfrs.tasks.Ranking(
            # Per-example losses: averaged by losses_of, as tf.distribute needs.
            loss=tf.keras.losses.MeanSquaredError(reduction=tf.keras.losses.Reduction.NONE),
            metrics=[tf.keras.metrics.RootMeanSquaredError(name="rmse"),
                     tf.keras.metrics.MeanAbsoluteError(name="mae")])
        self.distribute_reduction_method = "first"

    def call(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Predicted ratings for a batch of raw feature dicts: the row-wise dot product."""
        return tf.reduce_sum(self.user_tower(features) * self.item_tower(features), axis=1)

    def preprocess(self, features: Mapping[str, tf.Tensor]) -> dict:
        """Raw features -> what the training steps use: both towers' integer inputs and ratings.

        String standardisation, lookups and tokenisation then run once per data set rather than
        once per step (`tte_tfrs.data.tfdata.make_training_dataset`).
        """
        out = {USER: self.user_tower.preprocess(features),
               ITEM: self.item_tower.preprocess(features), RATING: features[RATING]}
        if HOLDOUT in features:
            out[HOLDOUT] = features[HOLDOUT]
        return out

    def score(self, inputs: Mapping) -> tf.Tensor:
        """Predicted ratings of a batch from `preprocess` (no J, no metrics)."""
        return tf.reduce_sum(self.user_tower.embed(inputs[USER]) * self.item_tower.embed(inputs[ITEM]),
                             axis=1)

    def compute_loss(self, inputs: Mapping, training: bool = False) -> tf.Tensor:
        """The task loss on a batch from `preprocess` (J apart: see `losses_of`)."""
        return self.losses_of(inputs, training)[0]

    def losses_of(self, inputs: Mapping, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """(task loss, regularization loss) of a batch from `preprocess`: this replica's share,
        so that the sums over the replicas of a strategy are the values of the whole batch (in
        one process: the values themselves)."""
        if self.user_tower.members > 1:
            return self._ensemble_losses(inputs, training)
        user, user_penalty = self.user_tower.embed_with_penalty(inputs[USER])
        item, item_penalty = self.item_tower.embed_with_penalty(inputs[ITEM])
        predictions = tf.reduce_sum(user * item, axis=1)
        per_example = self.task(labels=inputs[RATING][:, tf.newaxis],
                                predictions=predictions[:, tf.newaxis], training=training)
        loss = tf.nn.compute_average_loss(per_example)
        return self._with_retrieval_and_penalties(loss, user, item, inputs, training,
                                                  user_penalty, item_penalty)

    def _ensemble_losses(self, inputs: Mapping, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """M members: the sum of each member's own squared error (M independent models in the
        same tables); metrics score the members' mean, the rating the export serves.

        A row whose ``HOLDOUT`` names a member (cross-fitting) is left out of that member's
        error, and its metrics score that member's prediction alone (for a validation row: the
        prediction of the one member that never learnt from it)."""
        users, user_penalty = self.user_tower.members_with_penalty(inputs[USER])
        items, item_penalty = self.item_tower.members_with_penalty(inputs[ITEM])
        member_predictions = tf.reduce_sum(users * items, axis=-1)             # [batch, M]
        ratings = inputs[RATING]
        squared = tf.square(ratings[:, tf.newaxis] - member_predictions)
        predicted = tf.reduce_mean(member_predictions, axis=1)
        if HOLDOUT in inputs:
            held = tf.one_hot(tf.cast(inputs[HOLDOUT], tf.int32), self.user_tower.members,
                              dtype=squared.dtype)                             # -1: no member
            squared *= 1.0 - held
            predicted = tf.where(inputs[HOLDOUT] >= 0,
                                 tf.reduce_sum(member_predictions * held, axis=1), predicted)
        self.task(labels=ratings[:, tf.newaxis], training=training,
                  predictions=predicted[:, tf.newaxis])
        per_example = tf.reduce_sum(squared, axis=1)
        loss = tf.nn.compute_average_loss(per_example)
        user = self.user_tower.fold_members(users)
        item = self.item_tower.fold_members(items)
        return self._with_retrieval_and_penalties(loss, user, item, inputs, training,
                                                  user_penalty, item_penalty)

    def _with_retrieval_and_penalties(self, loss, user, item, inputs, training, user_penalty,
                                      item_penalty):
        if self.retrieval_weight and training:
            loss += self.retrieval_weight * self.retrieval_loss(user, item, inputs[ITEM])
        penalties = [user_penalty, item_penalty] + [tf.reduce_sum(x) for x in self.losses]
        return loss, per_replica(tf.reduce_sum(tf.stack(penalties)))

    def retrieval_loss(self, user: tf.Tensor, item: tf.Tensor, item_inputs: Mapping) -> tf.Tensor:
        """The joint objective's term: the mean over the batch of the softmax cross-entropy of
        each user's own item among the batch's items, scored by the same dot product, each
        candidate's logit lowered by the log of its sampling probability (logQ correction) and
        other rows of the same item removed from a user's negatives."""
        name = self.item_tower.specs[0].name
        ids = item_inputs[name][name]                    # the item id's row numbers
        per_example = self.retrieval(
            user, item, candidate_sampling_probability=tf.gather(self.item_probabilities, ids),
            candidate_ids=ids, compute_metrics=False)
        return tf.reduce_mean(per_example)

    def train_step(self, inputs: Mapping) -> dict:
        with tf.GradientTape() as tape:
            loss, regularization_loss = self.losses_of(inputs, training=True)
            # Stops training at the first step whose loss or gradient is NaN or infinite.
            total_loss = tf.debugging.check_numerics(loss + regularization_loss, NON_FINITE_LOSS)
        gradients = tape.gradient(total_loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return self._report(loss, regularization_loss, total_loss)

    def test_step(self, inputs: Mapping) -> dict:
        loss, regularization_loss = self.losses_of(inputs, training=False)
        return self._report(loss, regularization_loss, loss + regularization_loss)

    def _report(self, loss: tf.Tensor, regularization_loss: tf.Tensor,
                total_loss: tf.Tensor) -> dict:
        metrics = {metric.name: metric.result() for metric in self.metrics}
        values = (loss, regularization_loss, total_loss)
        if tf.distribute.get_strategy().num_replicas_in_sync > 1:     # the shares -> the batch's
            values = tf.unstack(tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, tf.stack(values)))
        metrics.update(zip(("loss", "regularization_loss", "total_loss"), values))
        return metrics


def per_replica(value: tf.Tensor) -> tf.Tensor:
    """`value` (a whole batch's term, such as J) divided by the number of replicas in sync, so
    that summing the replicas' shares gives it once (unchanged in one process)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value / replicas if replicas > 1 else value
