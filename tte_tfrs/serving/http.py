"""The HTTP service of `tte-serve` (FastAPI): recommendations, embeddings and scores from the current
version of an export folder, with health, readiness and Prometheus metrics.

Endpoints (JSON unless said otherwise; every answer names the model ``version`` that produced it):

    POST /v1/recommend        top k for a known user id or a new user's raw features
    POST /v1/recommend/batch  the same for several users at once (one k for all)
    POST /v1/embed            the user tower's embedding of one user
    POST /v1/score            predicted ratings of one user for given item ids
    GET  /v1/model            version, backend, data set, test metrics, user features
    GET  /healthz             200 while the process runs
    GET  /readyz              200 once a version is loaded (503 before), with load details
    GET  /metrics             Prometheus text: requests, errors, latency, version, loads
    GET  /openapi.json        the OpenAPI schema (/docs renders it)

Bad input gets a 4xx answer ``{"error": "what was wrong", "version": N}``: 400 malformed JSON, 413 a
body over the limit, 422 a field of the wrong type or out of range, an unknown feature or item, an
unknown user without features, k above the catalogue size; 503 while no version is loaded.

May import: fastapi, pydantic (the ``serve`` extra), tte_tfrs.serving.
"""


import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StringConstraints, WithJsonSchema
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tte_tfrs.serving.batching import MicroBatcher
from tte_tfrs.serving.config import ServeConfig
from tte_tfrs.serving.metrics import CONTENT_TYPE, ServiceMetrics
from tte_tfrs.serving.recommender import Recommendation, RecommendationError, Recommender, UserQuery
from tte_tfrs.serving.versions import VersionManager

log = logging.getLogger("tte_tfrs.serve")

MAX_ID_CHARS = 200
MAX_VALUE_CHARS = 1000
MAX_FEATURES = 64
DATASET_KEYS = ("name", "layout", "rating_scale", "counts", "splits")   # never the source path


class ApiError(Exception):
    """A request the service answers with `status` and a message (never a traceback)."""

    def __init__(self, status: int, message: str, version: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.version = version


# ---- request bodies -------------------------------------------------------------------------

def _user_id(value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"must be a string or an integer, got {_json_type(value)}")
    if isinstance(value, str) and len(value) > MAX_ID_CHARS:
        raise ValueError(f"must be at most {MAX_ID_CHARS} characters")
    return value


def _feature_value(value: Any) -> str | int | float | None:
    if value is None or isinstance(value, str) and len(value) <= MAX_VALUE_CHARS:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value                          # any size: the tower reads it as float32
    if isinstance(value, str):
        raise ValueError(f"must be at most {MAX_VALUE_CHARS} characters")
    raise ValueError(f"must be a string, a finite number or null, got {_json_type(value)}")


def _json_type(value: Any) -> str:
    return {bool: "a boolean", list: "an array", dict: "an object", float: "a non-finite number",
            int: "a number", type(None): "null"}.get(type(value), type(value).__name__)


# Strict JSON types with one clear message each (a plain union would list one error per branch).
UserId = Annotated[str | int, PlainValidator(_user_id), WithJsonSchema(
    {"anyOf": [{"type": "string", "maxLength": MAX_ID_CHARS}, {"type": "integer"}]})]
FeatureValue = Annotated[str | int | float | None, PlainValidator(_feature_value), WithJsonSchema(
    {"anyOf": [{"type": "string", "maxLength": MAX_VALUE_CHARS}, {"type": "number"},
               {"type": "null"}]})]
FeatureName = Annotated[str, StringConstraints(max_length=MAX_ID_CHARS)]
Features = Annotated[dict[FeatureName, FeatureValue], Field(max_length=MAX_FEATURES)]

USER_ID_DOC = ("A known user's id (string or integer). An unknown id needs `features`; it then "
               "counts as a new user.")
FEATURES_DOC = ("Raw user features by name (see GET /v1/model -> user_features): strings as "
                "strings, numbers as numbers, null or missing for unknown. With a known user_id "
                "they override the stored features.")


class UserSpec(BaseModel):
    """One user: a known id, raw features of a new user, or both."""

    model_config = ConfigDict(extra="forbid")
    user_id: UserId | None = Field(None, description=USER_ID_DOC)
    features: Features = Field(default_factory=dict, description=FEATURES_DOC)


def features_schema(user_inputs: dict[str, dict]) -> dict[str, Any]:
    """The JSON schema of ``features`` naming the user tower's inputs (of the version loaded when
    the service started; validation itself follows the version answering)."""
    kinds = {"float32": {"type": "number"}}
    return {"type": "object", "maxProperties": MAX_FEATURES,
            "properties": {name: {"anyOf": [kinds.get(spec.get("dtype"), {
                "type": "string", "maxLength": MAX_VALUE_CHARS}), {"type": "null"}]}
                for name, spec in user_inputs.items()}}


def request_models(config: ServeConfig,
                   user_inputs: dict[str, dict] | None = None) -> dict[str, type[BaseModel]]:
    """The request bodies, with the service's limits (and the user features of `user_inputs`,
    when given) in their schema."""
    User = UserSpec
    if user_inputs:
        known = WithJsonSchema(features_schema(user_inputs))

        class User(UserSpec):
            """One user: a known id, raw features of a new user, or both."""

            features: Annotated[Features, known] = Field(default_factory=dict,
                                                         description=FEATURES_DOC)

    K = Annotated[int, Field(strict=True, ge=1, le=config.max_k,
                             description="How many items (at most the catalogue size).")]
    ExcludeRated = Annotated[bool, Field(strict=True,
                                         description="Skip items the user has rated.")]

    class RecommendRequest(User):
        """Top-k items for one user."""

        k: K = 10
        exclude_rated: ExcludeRated = True

    class BatchRequest(BaseModel):
        """Top-k items for each of several users."""

        model_config = ConfigDict(extra="forbid")
        users: Annotated[list[User], Field(min_length=1, max_length=config.max_batch_users)]
        k: K = 10
        exclude_rated: ExcludeRated = True

    class ScoreRequest(User):
        """Predicted ratings of one user for some items."""

        item_ids: Annotated[list[UserId], Field(min_length=1, max_length=config.max_score_items,
                                                description="Catalogue item ids.")]

    return {"user": User, "recommend": RecommendRequest, "batch": BatchRequest,
            "score": ScoreRequest}


# ---- answers --------------------------------------------------------------------------------

class Item(BaseModel):
    rank: int = Field(description="1 for the best item.")
    item_id: str
    score: float = Field(description="The predicted rating (user embedding . item embedding).")
    title: str = Field(description="The item's title, or empty when the data set has none.")


class RecommendResponse(BaseModel):
    version: int = Field(description="The model version that produced the answer.")
    backend: str
    user_id: str | None
    features: dict[str, Any]
    recommendations: list[Item]


class UserRecommendations(BaseModel):
    user_id: str | None
    features: dict[str, Any]
    recommendations: list[Item]


class BatchResponse(BaseModel):
    version: int
    backend: str
    results: list[UserRecommendations]


class EmbedResponse(BaseModel):
    version: int
    user_id: str | None
    embedding: list[float] = Field(description="The user tower's output, k + 2 numbers.")


class ScoredItem(BaseModel):
    item_id: str
    title: str
    score: float = Field(description="The predicted rating.")


class ScoreResponse(BaseModel):
    version: int
    user_id: str | None
    scores: list[ScoredItem]


class ModelInfo(BaseModel):
    version: int
    backend: str
    created: str | None
    loaded_at: float | None
    catalogue_size: int
    embedding_dim: int
    dataset: dict[str, Any]
    metrics: dict[str, Any]
    user_features: dict[str, Any]
    index_notes: list[str]


class Health(BaseModel):
    status: str
    version: int | None


class Readiness(BaseModel):
    ready: bool
    version: int | None
    loaded_at: float | None
    loading: int | None = Field(description="A version being loaded now.")
    waiting_for_index: int | None = Field(description="A newer version waiting for its saved "
                                          "index (tte-index).")
    last_failure: dict[str, Any] | None = Field(description="The last version that could not "
                                                "be loaded: version, error, at (unix time).")
    history: list[dict[str, Any]]


class ErrorAnswer(BaseModel):
    error: str = Field(description="What was wrong with the request.")
    version: int | None


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorAnswer, "description": "Malformed JSON."},
    413: {"model": ErrorAnswer, "description": "Request body over the size limit."},
    422: {"model": ErrorAnswer, "description": "A field of the wrong type or out of range, an "
          "unknown feature or item, an unknown user without features."},
    503: {"model": ErrorAnswer, "description": "No model version loaded yet."},
}


def items_of(recommendations: list[Recommendation]) -> list[dict[str, Any]]:
    return [{"rank": r.rank, "item_id": r.item_id, "score": r.score, "title": r.title}
            for r in recommendations]


# ---- the app --------------------------------------------------------------------------------

def create_app(manager: VersionManager, config: ServeConfig) -> FastAPI:
    """The FastAPI application serving `manager`'s current version.

    Starting the app (its lifespan) starts the version watcher and the micro-batcher; stopping it
    lets requests in flight finish, then stops both.
    """
    metrics = manager.metrics
    current = manager.current
    models = request_models(config, current.reader.user_inputs() if current else None)
    UserRequest, RecommendRequest, BatchRequest, ScoreRequest = (
        models["user"], models["recommend"], models["batch"], models["score"])
    state: dict[str, MicroBatcher] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["batcher"] = MicroBatcher(config.micro_batch, on_batch=metrics.batch_size.observe)
        manager.start()
        try:
            yield
        finally:
            manager.stop()
            state.pop("batcher").close()

    app = FastAPI(title="tte-serve", version="1", lifespan=lifespan,
                  description="Recommendations from a tte_tfrs export, following its current "
                              "version. Every answer names the model version that produced it.")
    app.add_middleware(BodyLimitMiddleware, limit=config.max_body_bytes,
                       version=lambda: manager.current.version if manager.current else None)
    app.add_middleware(MetricsMiddleware, metrics=metrics,
                       endpoints={"/v1/recommend", "/v1/recommend/batch", "/v1/embed", "/v1/score",
                                  "/v1/model", "/healthz", "/readyz", "/metrics"})

    def serving() -> Recommender:
        recommender = manager.current
        if recommender is None:
            raise ApiError(503, "no model version is loaded yet; see /readyz")
        return recommender

    def prepare(recommender: Recommender, user: UserSpec, where: str = "") -> UserQuery:
        try:
            return recommender.prepare(user.user_id, user.features)
        except RecommendationError as exc:
            raise ApiError(422, f"{where}{exc}", recommender.version) from None

    def check_k(recommender: Recommender, k: int) -> int:
        try:
            return recommender.check_k(k)
        except RecommendationError as exc:
            raise ApiError(422, str(exc), recommender.version) from None

    def user_id_of(user: UserSpec) -> str | None:
        return None if user.user_id is None else str(user.user_id).strip()

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": printable(exc.message), "version": exc.version},
                            status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        current = manager.current
        version = current.version if current else None
        errors = exc.errors()
        malformed = [e for e in errors if e.get("type") == "json_invalid"]
        if malformed:
            context = malformed[0].get("ctx", {}).get("error", "")
            return JSONResponse({"error": f"malformed JSON body: {context}".rstrip(": "),
                                 "version": version}, status_code=400)
        content_type = request.headers.get("content-type", "")
        if "json" not in content_type and any(tuple(e.get("loc", ())) == ("body",)
                                              for e in errors):
            return JSONResponse({"error": "the body must be a JSON object sent with Content-Type: "
                                 f"application/json (got {content_type or 'no Content-Type'}; "
                                 "with curl use --json)", "version": version}, status_code=400)
        return JSONResponse({"error": printable("; ".join(describe(e) for e in errors[:5])),
                             "version": version}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        current = manager.current
        return JSONResponse({"error": str(exc.detail), "version": current.version if current else None},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        current = manager.current
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the service "
                             "log", "version": current.version if current else None},
                            status_code=500)

    @app.post("/v1/recommend", response_model=RecommendResponse, responses=ERRORS,
              summary="Top k items for one user")
    async def recommend(body: RecommendRequest) -> dict[str, Any]:
        recommender = serving()
        query = prepare(recommender, body)
        k = check_k(recommender, body.k)
        try:
            answer = await state["batcher"].recommend(recommender, query, k, body.exclude_rated)
        except RecommendationError as exc:
            raise ApiError(422, str(exc), recommender.version) from None
        return {"version": recommender.version, "backend": recommender.index.name,
                "user_id": user_id_of(body), "features": body.features,
                "recommendations": items_of(answer)}

    @app.post("/v1/recommend/batch", response_model=BatchResponse, responses=ERRORS,
              summary="Top k items for each of several users")
    def recommend_batch(body: BatchRequest) -> dict[str, Any]:
        recommender = serving()
        queries = [prepare(recommender, user, f"users[{n}]: ") for n, user in enumerate(body.users)]
        answers = recommender.recommend_queries(queries, check_k(recommender, body.k),
                                                body.exclude_rated)
        return {"version": recommender.version, "backend": recommender.index.name,
                "results": [{"user_id": user_id_of(user), "features": user.features,
                             "recommendations": items_of(answer)}
                            for user, answer in zip(body.users, answers)]}

    @app.post("/v1/embed", response_model=EmbedResponse, responses=ERRORS,
              summary="The user tower's embedding of one user")
    def embed(body: UserRequest) -> dict[str, Any]:
        recommender = serving()
        embedding = recommender.embed_queries([prepare(recommender, body)])[0]
        return {"version": recommender.version, "user_id": user_id_of(body),
                "embedding": embedding.tolist()}

    @app.post("/v1/score", response_model=ScoreResponse, responses=ERRORS,
              summary="Predicted ratings of one user for given items")
    def score(body: ScoreRequest) -> dict[str, Any]:
        recommender = serving()
        try:
            scores = recommender.score(body.user_id, body.features, body.item_ids)
        except RecommendationError as exc:
            raise ApiError(422, str(exc), recommender.version) from None
        rows = recommender.item_rows(body.item_ids)
        titles = recommender.reader.item_table.titles
        return {"version": recommender.version, "user_id": user_id_of(body),
                "scores": [{"item_id": str(recommender.index.ids[row]), "title": str(titles[row]),
                            "score": float(value)} for row, value in zip(rows, scores)]}

    @app.get("/v1/model", response_model=ModelInfo, responses={503: ERRORS[503]},
             summary="The version serving now: data set, metrics, features")
    def model_info() -> dict[str, Any]:
        recommender = serving()
        manifest = recommender.manifest
        dataset = manifest.get("dataset", {})
        return {"version": recommender.version, "backend": recommender.index.name,
                "created": manifest.get("created"), "loaded_at": manager.state()["loaded_at"],
                "catalogue_size": recommender.catalogue_size,
                "embedding_dim": int(manifest["embedding_dim"]),
                "dataset": {key: dataset[key] for key in DATASET_KEYS if key in dataset},
                "metrics": manifest.get("metrics") or {},
                "user_features": recommender.reader.user_inputs(),
                "index_notes": list(recommender.index.notes)}

    @app.get("/healthz", response_model=Health, summary="The process is up")
    def healthz() -> dict[str, Any]:
        current = manager.current
        return {"status": "ok", "version": current.version if current else None}

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}},
             summary="A version is loaded; what the watcher is doing")
    def readyz() -> JSONResponse:
        details = manager.state()
        ready = details["version"] is not None
        return JSONResponse({"ready": ready, **details}, status_code=200 if ready else 503)

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {}}}})
    def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def printable(message: str) -> str:
    """`message` with anything UTF-8 cannot encode (unpaired surrogates from a request's JSON)
    escaped, so an answer about bad text never fails itself."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def describe(error: dict[str, Any]) -> str:
    """One pydantic validation error as ``where: what`` (e.g. ``k: Input should be ...``)."""
    loc = tuple(error.get("loc", ()))
    if loc == ("body",):
        if error.get("type") == "missing":
            return "the body is empty: send a JSON object"
        return f"the body must be a JSON object, got {_json_type(error.get('input'))}"
    where = ".".join(str(part) for part in loc if part != "body")
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {message}"


class BodyLimitMiddleware:
    """Refuses request bodies over `limit` bytes with 413: at once when Content-Length says so,
    otherwise as soon as the bytes read pass the limit (chunked bodies)."""

    def __init__(self, app: ASGIApp, limit: int, version: Callable[[], int | None]):
        self.app = app
        self.limit = limit
        self.version = version

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body over the limit of {self.limit} bytes"
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            response = JSONResponse({"error": message, "version": self.version()},
                                    status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            incoming = await receive()
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, message)
            return incoming

        await self.app(scope, receive_limited, send)


class MetricsMiddleware:
    """Counts every request and its latency by endpoint (unknown paths count as ``other``)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, endpoints: set[str]):
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            path = scope.get("path", "")
            self.metrics.observe(path if path in self.endpoints else "other", status,
                                 time.perf_counter() - started)
