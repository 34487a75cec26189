"""Names in an export folder, in one place for the writers (export, lifecycle) and the readers."""

MODELS = ("user_tower", "item_tower", "scorer", "retrieval")   # SavedModels TF Serving serves
EMBEDDINGS = "item_embeddings"
USERS = "users"
TRAINING = "training"
CHECKPOINT = "checkpoint"                                       # vocabularies + weights for updates
VERSIONED = MODELS + (EMBEDDINGS, USERS, TRAINING, CHECKPOINT)  # every <name>/<version>/ folder
INDEX = "index"                                                 # index/<backend>/<version>/
MANIFEST = "manifest.json"
MANIFESTS = "manifests"                                         # manifests/<version>.json
MODELS_CONFIG = "models.config"
LOCK_FILE = ".lock"
ROLLED_BACK = ".rolled_back"
