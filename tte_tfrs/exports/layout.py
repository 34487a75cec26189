"""Names in an export folder, in one place for the writer, the reader and the lifecycle.

    <root>/<model>/<version>/         SavedModels TF Serving serves (MODELS)
    <root>/item_embeddings/<version>/ embeddings.npy, item_ids.txt, items.csv
    <root>/users/<version>/           users.csv, rated.npz
    <root>/training/<version>/        history.json, training_curve.png
    <root>/checkpoint/<version>/      vocabularies.json, weights.npz (+ optimizer.npz)
    <root>/index/<backend>/<version>/ an ANN index
    <root>/manifest.json              the current version's manifest (manifests/<version>.json: all)
    <root>/models.config              TF Serving model_config_list
"""

FORMAT_VERSION = 1             # of the export folder; a reader refuses folders of a newer format

MODELS = ("user_tower", "item_tower", "scorer", "retrieval")   # SavedModels TF Serving serves
EMBEDDINGS = "item_embeddings"
USERS = "users"
TRAINING = "training"
CHECKPOINT = "checkpoint"                                       # vocabularies + weights for updates
VERSIONED = MODELS + (EMBEDDINGS, USERS, TRAINING, CHECKPOINT)  # every <name>/<version>/ folder
INDEX_ROOT = "index"                                            # index/<backend>/<version>/
MANIFEST = "manifest.json"
MANIFESTS = "manifests"                                         # manifests/<version>.json
MODELS_CONFIG = "models.config"
LOCK_FILE = ".lock"
ROLLED_BACK = ".rolled_back"

EMBEDDINGS_FILE = "embeddings.npy"                              # in item_embeddings/<version>/
ITEM_IDS_FILE = "item_ids.txt"
ITEMS_FILE = "items.csv"
USERS_FILE = "users.csv"                                        # in users/<version>/
RATED_FILE = "rated.npz"
HISTORY_FILE = "history.json"                                   # in training/<version>/
CURVE_FILE = "training_curve.png"
