"""The two-tower rating model: predicted rating = <user embedding, item embedding>."""

from tte_tfrs import _keras_env  # noqa: F401
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tte_tfrs.model.towers import ITEM, USER

RATING = "rating"


class TwoTowerRatingModel(tfrs.Model):
    """Combines a user and an item `Tower` with a tfrs Ranking task (MSE loss, RMSE and MAE).

    The towers' kernel and embedding regularizers are added to the loss by ``tfrs.Model.train_step``
    (reported as ``regularization_loss``), which gives the SRS loss
    1/|B| sum (r - <u, v>)^2 + gamma [J(u) + J(v)].
    """

    def __init__(self, user_tower, item_tower):
        super().__init__()
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.MeanSquaredError(),
            metrics=[tf.keras.metrics.RootMeanSquaredError(name="rmse"),
                     tf.keras.metrics.MeanAbsoluteError(name="mae")])

    def get_config(self):
        return {"user_tower": self.user_tower.get_config(), "item_tower": self.item_tower.get_config()}

    def call(self, features):
        """Predicted ratings for a batch of raw feature dicts: the row-wise dot product."""
        return tf.reduce_sum(self.user_tower(features) * self.item_tower(features), axis=1)

    def preprocess(self, features):
        """Raw features -> what `compute_loss` trains on: both towers' integer inputs and ratings.

        String standardisation, lookups and tokenisation then run once per data set rather than
        once per step (`tte_tfrs.data.tfdata.make_training_dataset`).
        """
        return {USER: self.user_tower.preprocess(features),
                ITEM: self.item_tower.preprocess(features), RATING: features[RATING]}

    def compute_loss(self, inputs, training=False):
        """The task loss on a batch from `preprocess`."""
        predictions = tf.reduce_sum(self.user_tower.embed(inputs[USER])
                                    * self.item_tower.embed(inputs[ITEM]), axis=1)
        return self.task(labels=inputs[RATING], predictions=predictions, training=training)
