"""`--config` values of the benchmarks: 'a=1,b=x' -> TrainConfig field changes."""

from tte_tfrs.training.config import TrainConfig


def parse_config(text):
    """'a=1,b=x' -> {field: value}, typed like TrainConfig's defaults."""
    defaults = TrainConfig()
    values = {}
    for part in filter(None, text.split(",")):
        name, _, raw = part.partition("=")
        default = getattr(defaults, name)
        values[name] = (raw.lower() in ("1", "true", "yes") if isinstance(default, bool)
                        else type(default)(raw))
    return values
