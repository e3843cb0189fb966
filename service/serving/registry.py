"""Model versions as TF Serving serves them: a base path of numbered version folders, followed while serving.

A version is loaded, checked against the contract and warmed up off the serving path (a thread), then published: the
routing table (`Registry.routing`) is replaced in one assignment on the event loop, so a request sees the old table or
the new one, never a mix. A request keeps the version it picked (`DataPlane.lease`, through
http/versions.ready_serving, until the response is sent); a replaced version is unloaded once its leases reach 0:
its batchers stopped, its model dropped.

A version that fails to load, breaks the contract or fails its warm-up is refused: it is not retried until its folder
changes, the failure is logged once, counted in vae_model_load_failures_total and shown in the status. Everything
here runs on the event loop except loading and warming up; the loop alone changes the records."""

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import contract
from service.serving.batcher import Batchers, ready_sizes
from service.serving.metrics import Metrics
from service.serving.model import ModelContractError, ModelLoadError, VaeModel, load_model, read_model_metadata
from service.settings import Settings

log = logging.getLogger(__name__)
POLICIES = ("latest", "specific", "all")


class State(StrEnum):
    """TF Serving's version states."""

    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


@dataclass(frozen=True)
class Serving:
    """One loaded model version as the data plane uses it: its model, its batchers and the settings."""

    model: VaeModel
    batchers: Batchers
    settings: Settings


@dataclass(eq=False)
class Version:
    """One version's record. `leases`: requests using it now (event loop only)."""

    number: int
    path: Path
    folder_id: tuple | None  # the folder as it was when loaded: a changed folder is tried again
    state: State = State.LOADING
    error_code: str = "OK"
    error_message: str = ""
    serving: Serving | None = None
    leases: int = 0

    @property
    def refused(self) -> bool:
        return self.state is State.END and self.error_code != "OK"

    def status(self) -> dict[str, Any]:
        return {"version": str(self.number), "state": self.state.value,
                "status": {"error_code": self.error_code, "error_message": self.error_message}}


@dataclass(frozen=True)
class Routing:
    """What requests may use: the AVAILABLE versions and the default one. Replaced whole, never changed."""

    default: Version | None = None
    versions: dict[int, Version] = field(default_factory=dict)


class UnknownModelError(LookupError):
    """A status request named a model or version this service does not have (404, TF Serving's message)."""


class Registry:
    def __init__(self, settings: Settings, metrics: Metrics, *, after_load: Callable[[], None] = lambda: None,
                 after_unload: Callable[[], None] = lambda: None):
        """after_load, after_unload: called on the event loop once a version is warmed up, and once one is dropped
        (service.process tunes the garbage collector there)."""
        self.settings = settings
        self.metrics = metrics
        self.after_load, self.after_unload = after_load, after_unload
        self.ready = False  # a version is available: every protocol's readiness route reads this
        self.failure: str | None = None  # why nothing can be served, once that is known (liveness fails)
        self.device = "/CPU:0"
        self.routing = Routing()
        self.records: dict[int, Version] = {}  # the latest record of every version number seen
        self.base_path = Path(settings.model_dir or settings.model_base_path)
        self._policy: tuple[str, tuple[int, ...]] = (settings.model_version_policy, settings.model_versions)
        self._config_seen: tuple | None = None  # model_config_file's (mtime, size) last read
        self._wanted: list[int] = []
        self._retiring: set[asyncio.Task] = set()
        self._starting = False  # refusals at start are reported by start(): one line if nothing can be served

    # -- what routes and status use

    @property
    def name(self) -> str:
        if self.settings.model_name:
            return self.settings.model_name
        for record in sorted(self.records.values(), key=lambda r: -r.number):
            if record.serving is not None:
                return record.serving.model.name
        return self.base_path.parent.name if self.settings.model_dir else self.base_path.name

    def not_ready_reason(self) -> str:
        if self.records or self.settings.model_dir:
            return "the model is not loaded yet"
        return f"no model version under {self.base_path} yet"

    def status_document(self, name: str, version: int | None = None) -> dict[str, Any]:
        """GET /v1/models/{name}[/versions/{version}] in TF Serving's format, newest version first."""
        if name != self.name:
            raise UnknownModelError(f"Could not find any versions of model {name}")
        if version is None:
            records = sorted(self.records.values(), key=lambda r: -r.number)
            if not records:
                raise UnknownModelError(f"Could not find any versions of model {name}")
        elif version in self.records:
            records = [self.records[version]]
        else:
            raise UnknownModelError(f"Could not find version {version} of model {name}")
        return {"model_version_status": [record.status() for record in records]}

    # -- start, follow, stop

    async def start(self, device: str) -> None:
        """Load (not warm up) the versions to serve, before the port opens. Raises ModelContractError if there are
        version folders but none loads; an empty base path is not an error (the service waits for a version)."""
        self.device = device
        folders = await asyncio.to_thread(self._scan)
        if not folders:
            log.warning("no model version under %s yet: waiting for one (not ready)", self.base_path)
            return
        self._starting = True
        try:
            while todo := [n for n in self._choose(folders) if self.records.get(n) is None
                           or self.records[n].folder_id != folders[n][1]]:
                for number in todo:
                    await self._load(number, *folders[number])
        finally:
            self._starting = False
        refused = [r for r in sorted(self.records.values(), key=lambda r: -r.number) if r.refused]
        if not any(record.serving for record in self.records.values()) and refused:
            if self.settings.model_dir:  # one folder: its own problem (load_error adds the path if it lacks it)
                raise ModelContractError(refused[0].error_message)
            raise ModelContractError(f"no version under {self.base_path} can be served: {self._refusals()}")
        for record in refused:  # not fatal: another version serves
            self._log_refusal(record)

    async def run(self, on_failure: Callable[[], None] | None = None) -> None:
        """Warm up and publish what start() loaded, then follow the base path every VAE_MODEL_POLL_S."""
        try:
            await self.reconcile()
        except Exception:  # e.g. the volume went away: keep polling
            log.exception("model scan failed")
        if self.routing.default is None and self._refusals():
            # Nothing to serve and something was refused at start: /healthz answers 503 from now on (a liveness probe
            # restarts the container), and on_failure may end the process (`python -m service` does).
            self.failure = self._refusals()
            log.error("no version can be served: %s", self.failure)
            if on_failure is not None:
                on_failure()
            return
        if self.settings.model_dir or not self.settings.model_poll_s:
            return
        while True:
            await asyncio.sleep(self.settings.model_poll_s)
            try:
                await self.reconcile()
            except Exception:  # a bug or an unreadable volume must not end the watch
                log.exception("model poll failed; trying again in %.1f s", self.settings.model_poll_s)

    async def stop(self) -> None:
        """At shutdown: stop every version's batchers (their unanswered requests fail with 503)."""
        self.ready = False
        for task in self._retiring:
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        servings = [record.serving for record in self.records.values() if record.serving is not None]
        self.routing = Routing()
        await asyncio.gather(*(serving.batchers.stop() for serving in servings))

    async def reconcile(self) -> None:
        """Bring up the versions the policy wants (newest first), then retire the others once one wanted version is
        available. Under `latest`, a refused newest version leaves the next one wanted."""
        self._read_config_file()
        folders = await asyncio.to_thread(self._scan)
        await self._follow_rewrites(folders)
        while True:
            self._wanted = self._choose(folders)
            todo = [n for n in sorted(self._wanted, reverse=True) if n not in self.routing.versions]
            if not todo:
                break
            await self._bring_up(todo[0], *folders[todo[0]])
        self._publish()
        if any(n in self.routing.versions for n in self._wanted):
            for number, record in self.routing.versions.items():
                if number not in self._wanted:
                    self._retire(record)

    # -- the steps

    def _scan(self) -> dict[int, tuple[Path, tuple | None]]:
        """Complete version folders -> (path, folder id). With --model-dir, that folder alone."""
        if self.settings.model_dir:
            folder = Path(self.settings.model_dir)
            named = contract.is_count(folder.name)
            number = int(folder.name) if named else read_model_metadata(folder)["model_version"]
            return {number: (folder, _folder_id(folder))}
        return {n: (path, _folder_id(path)) for n, path in contract.version_folders(self.base_path).items()}

    async def _follow_rewrites(self, folders: dict[int, tuple[Path, tuple | None]]) -> None:
        """A served version whose metadata.json was rewritten in place (`evaluate --update-metadata` after the export
        was published): take its metrics and calibration. A folder replaced whole, or a rewrite that changes anything
        else, is logged once and left alone: the loaded copy keeps serving (publish another version number)."""
        for number, record in list(self.routing.versions.items()):
            path, folder_id = folders.get(number, (None, None))
            if folder_id is None or folder_id == record.folder_id:
                continue
            same_saved_model = record.folder_id is not None and folder_id[:2] == record.folder_id[:2]
            record.folder_id = folder_id
            problem = "its folder was replaced"
            if same_saved_model:
                try:
                    metadata = await asyncio.to_thread(read_model_metadata, path, number)
                except ModelContractError as err:
                    problem = f"its metadata.json was rewritten and is unreadable ({err})"
                else:
                    changed = record.serving.model.update_evaluation(metadata)
                    if not changed:
                        log.info("version %d: metrics and calibration re-read from its rewritten metadata.json", number)
                        continue
                    problem = f"its metadata.json was rewritten with other {', '.join(changed)}"
            log.warning("version %d: %s while serving; the loaded copy keeps serving (export another version number "
                        "to change the model)", number, problem)

    def _choose(self, folders: dict[int, tuple[Path, tuple | None]]) -> list[int]:
        """The versions the policy wants, among the folders not refused as they are now."""
        servable = [n for n, (_, folder_id) in folders.items()
                    if not (n in self.records and self.records[n].refused and self.records[n].folder_id == folder_id)]
        policy, numbers = self._policy
        if policy == "latest":
            return [max(servable)] if servable else []
        if policy == "specific":
            return sorted(n for n in numbers if n in servable)
        return sorted(servable)

    async def _load(self, number: int, path: Path, folder_id: tuple | None) -> Version:
        record = self.records[number] = Version(number, path, folder_id)
        settings = self.settings
        expected = None if settings.model_dir else number
        try:
            model = await asyncio.to_thread(load_model, path, self.device, version=expected, name=settings.model_name)
            batchers = Batchers.for_model(model, max_size=settings.batch_max_size,
                                          max_delay_s=settings.batch_max_delay_ms / 1000,
                                          queue_max=settings.queue_max, metrics=self.metrics,
                                          deadline_s=settings.queue_deadline_ms / 1000,
                                          ready_size=settings.batch_ready_size,
                                          score_max_samples=settings.max_posterior_samples,
                                          trim=settings.batch_trim)
        except ModelLoadError as err:  # TensorFlow's own failure, its message already made one clear line
            self._refuse(record, "UNKNOWN", f"load failed: {err}")
        except ModelContractError as err:
            self._refuse(record, "FAILED_PRECONDITION", str(err))
        except Exception as err:  # TensorFlow's errors for a corrupt or unreadable SavedModel, among others
            self._refuse(record, "UNKNOWN", f"load failed: {type(err).__name__}: {err}")
        else:
            record.serving = Serving(model, batchers, settings)
        return record

    async def _bring_up(self, number: int, path: Path, folder_id: tuple | None) -> None:
        record = self.records.get(number)
        if record is None or record.serving is None or record.state is not State.LOADING:
            record = await self._load(number, path, folder_id)
            if record.serving is None:
                return
        started = time.perf_counter()
        try:
            row_seconds = await asyncio.to_thread(
                record.serving.model.warm_up, ready_sizes(self.settings.batch_max_size, self.settings.batch_ready_size),
                self.settings.warm_up_threads)
        except Exception as err:
            self._refuse(record, "UNKNOWN", f"warm-up failed: {type(err).__name__}: {err}")
            return
        self.after_load()
        # Admission by work holds from the first score request on: score's cost grows with its rows (k x images), and
        # its second warm-up call is a steady one. The others' warm-up calls are dominated by fixed costs (sample at
        # n = 1), which would overstate their time per row; their own calls set it.
        record.serving.batchers.seed({name: row_seconds[name] for name in ("score",) if name in row_seconds})
        record.serving.batchers.start()
        record.state = State.AVAILABLE
        self._publish()
        log.info("version %d available after a %.1f s warm-up (serving %s; default %s)", number,
                 time.perf_counter() - started, sorted(self.routing.versions), self.routing.default.number)

    def _refuse(self, record: Version, code: str, message: str) -> None:
        record.state, record.error_code, record.error_message, record.serving = State.END, code, message, None
        self.metrics.load_failures.labels(str(record.number)).inc()
        if not self._starting:
            self._log_refusal(record)

    def _log_refusal(self, record: Version) -> None:
        serving = sorted(self.routing.versions) or sorted(n for n, r in self.records.items() if r.serving)
        log.error("version %d refused (%s): %s; %s", record.number, record.error_code, record.error_message,
                  f"still serving {serving}" if serving else "nothing to serve")

    def _publish(self) -> None:
        """Replace the routing table: the AVAILABLE versions; the default is the newest one the policy wants (else the
        newest available, until a wanted one is)."""
        available = {n: r for n, r in sorted(self.records.items()) if r.state is State.AVAILABLE}
        wanted = [n for n in self._wanted if n in available]
        default = available[max(wanted)] if wanted else available[max(available)] if available else None
        self.routing = Routing(default, available)
        self.ready = default is not None
        if default is not None:
            self.failure = None

    def _retire(self, record: Version) -> None:
        record.state = State.UNLOADING
        self._publish()
        task = asyncio.create_task(self._drain_and_unload(record))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _drain_and_unload(self, record: Version) -> None:
        """Wait until the requests that picked this version are answered, then stop its batchers and drop it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.model_drain_timeout_s
        while (record.leases or not record.serving.batchers.idle) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if record.leases:
            log.warning("version %d: %d requests still running after %.0f s; stopping it anyway", record.number,
                        record.leases, self.settings.model_drain_timeout_s)
        await record.serving.batchers.stop()
        record.serving, record.state = None, State.END
        self.after_unload()
        log.info("version %d unloaded (serving %s)", record.number, sorted(self.routing.versions))

    def _refusals(self) -> str:
        return "; ".join(f"version {r.number}: {r.error_message}" for r in sorted(self.records.values(),
                                                                                  key=lambda r: -r.number)
                         if r.refused)

    def _read_config_file(self) -> None:
        """VAE_MODEL_CONFIG_FILE, when it changed: {"model_version_policy": ..., "model_versions": [...]}. A bad file
        is logged once and the previous policy kept; a removed file brings back the settings' policy."""
        path = self.settings.model_config_file
        if path is None:
            return
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            if self._config_seen is not None:
                log.info("%s removed: back to the %s policy", path, self.settings.model_version_policy)
                self._config_seen = None
                self._policy = (self.settings.model_version_policy, self.settings.model_versions)
            return
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if seen == self._config_seen:
            return
        self._config_seen = seen
        try:
            self._policy = parse_model_config(Path(path).read_text())
        except (OSError, ValueError) as err:
            log.error("%s ignored, keeping the %s policy: %s", path, self._policy[0], err)
            return
        log.info("%s: policy %s %s", path, self._policy[0], list(self._policy[1]) or "")


def parse_model_config(text: str) -> tuple[str, tuple[int, ...]]:
    """The policy in a model config file; ValueError naming what is wrong."""
    document = json.loads(text)
    if not isinstance(document, dict):
        raise ValueError("it must hold a JSON object")
    policy = document.get("model_version_policy", "latest")
    versions = document.get("model_versions", [])
    if policy not in POLICIES:
        raise ValueError(f"model_version_policy must be one of {list(POLICIES)}, got {policy!r}")
    if not isinstance(versions, list) or not all(isinstance(v, int) and v > 0 for v in versions):
        raise ValueError(f"model_versions must be a list of positive integers, got {versions!r}")
    if policy == "specific" and not versions:
        raise ValueError("the specific policy needs model_versions")
    return policy, tuple(versions)


def _folder_id(folder: Path) -> tuple | None:
    """Changes when the folder is replaced (renamed into place) or its files are rewritten."""
    try:
        return (folder.stat().st_ino, *((folder / name).stat().st_mtime_ns
                                        for name in (contract.SAVED_MODEL_FILE, contract.METADATA_FILE)))
    except OSError:
        return None


def status_document(registry: Registry, name: str, version: int | None = None) -> dict[str, Any]:
    """TF Serving's model status document ({"model_version_status": [...]}); UnknownModelError (404) for a model or
    version this service does not have. For any route that reports status (ops.py, tfserving.py)."""
    return registry.status_document(name, version)
