"""The two-tower rating model: predicted rating = <user embedding, item embedding>."""

from tte_tfrs import _keras_env  # noqa: F401
import tensorflow as tf
import tensorflow_recommenders as tfrs

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
        """Predicted ratings for a batch of feature dicts: the row-wise dot product."""
        return tf.reduce_sum(self.user_tower(features) * self.item_tower(features), axis=1)

    def compute_loss(self, features, training=False):
        predictions = self(features)
        return self.task(labels=features[RATING], predictions=predictions, training=training)
