"""A dask.distributed cluster runs the modular exponentiations: its workers get the code they run.

A task names its kernel by module and name (``speed.kernels``), so a worker in another process,
or on another machine, has to import that module and every module it imports — and nothing of
this project is installed there. :func:`ship_code` zips those modules from this checkout (found
by modulefinder from the kernels, so the zip follows the code as it changes) in a temporary
directory and registers it with dask.distributed's ``UploadFile`` worker plugin, which puts the
zip first on each worker's ``sys.path`` and imports it, on every current worker and on every
worker that joins later — and with ``SchedulerUploadFile``, since the scheduler unpickles every
task too (what ``Client.upload_file`` does, under one stable name per version of the code, so
that runs on a long-lived cluster do not pile up plugins). It then runs one real kernel on each
worker: a worker that still cannot run one is a :class:`WorkerCodeError`, in one line.

Caveats: the workers need the third-party packages themselves (numpy; gmpy2 or the pure-Python
backend), the same Python, and a worker that already imported another version of
``speed.kernels`` keeps it until it restarts. The data party's workers receive its private key
factors (speed/kernels.py says why): give them only a cluster the key owner trusts.
"""

from __future__ import annotations

import hashlib
import modulefinder
import os
import socket
import tempfile
import zipfile
from pathlib import Path

from speed import kernels

ROOT = Path(__file__).resolve().parent.parent
KERNEL_MODULES = ("speed.kernels",)  # what a task names; the rest follows from their imports
PROBE_SECONDS = 60.0


class WorkerCodeError(ValueError):
    """A worker of the cluster cannot run the kernels (one line, naming why)."""


def code_modules(roots=KERNEL_MODULES) -> dict:
    """{path in the zip: file} of the project modules the kernels import, directly or not
    (imports inside functions too: modulefinder reads the byte code), packages with their
    ``__init__.py``. Only this checkout is searched: numpy and the standard library are the
    workers' own."""
    finder = modulefinder.ModuleFinder(path=[str(ROOT)])
    for name in roots:
        finder.import_hook(name)
    files = {}
    for module in finder.modules.values():
        if module.__file__:
            path = Path(module.__file__).resolve()
            files[path.relative_to(ROOT).as_posix()] = path
    return dict(sorted(files.items()))


def ship_code(client, *, probe_seconds: float = PROBE_SECONDS) -> None:
    """Make the cluster of ``client`` able to run the kernels (see the module's docstring), or
    raise WorkerCodeError in one line. The scheduler gets the code too: it unpickles each task
    on arrival, kernel name included. A scheduler or workers in this very process already share
    its modules and are left as they are (an upload would reload them here)."""
    here = (socket.gethostname(), os.getpid())
    hosts, pids = client.run(socket.gethostname), client.run(os.getpid)
    if not pids:
        raise WorkerCodeError("the cluster has no workers")
    scheduler_here = (client.run_on_scheduler(socket.gethostname),
                      client.run_on_scheduler(os.getpid)) == here
    workers_here = all((hosts[worker], pids[worker]) == here for worker in pids)
    if not (scheduler_here and workers_here):
        from distributed.diagnostics.plugin import SchedulerUploadFile, UploadFile
        files = code_modules()
        digest = hashlib.sha256()
        for inside, path in files.items():
            digest.update(inside.encode() + b"\0" + path.read_bytes())
        name = f"acml-code-{digest.hexdigest()[:16]}"  # the same code: the same plugin, once
        with tempfile.TemporaryDirectory(prefix="acml-code-") as folder:
            archive = Path(folder) / f"{name}.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
                for inside, path in files.items():
                    zipped.write(path, inside)
            plugins = ([] if scheduler_here else [SchedulerUploadFile(str(archive), load=True)])
            plugins += [] if workers_here else [UploadFile(str(archive), load=True)]
            try:
                for plugin in plugins:
                    client.register_plugin(plugin, name=name)
            except Exception as error:  # raised over there: only its one line matters here
                raise WorkerCodeError(f"sending the code to the cluster failed: "
                                      f"{describe(error)}") from None
    probe(client, probe_seconds)


def probe(client, seconds: float = PROBE_SECONDS) -> None:
    """One real (trivial) kernel on each worker, pinned to it: WorkerCodeError unless every
    worker imports speed.kernels and runs it."""
    futures = {worker: client.submit(kernels.worker_count, None, 1, workers=[worker],
                                     allow_other_workers=False, pure=False)
               for worker in client.scheduler_info(n_workers=-1)["workers"]}
    for worker, future in futures.items():
        try:
            future.result(timeout=seconds)
        except Exception as error:
            raise WorkerCodeError(f"the worker at {worker} cannot run the kernels: "
                                  f"{describe(error)}") from None


def describe(error: BaseException) -> str:
    """An exception in one line: the root cause's type and message, e.g. the ImportError
    behind dask's "Error during deserialization of the task graph" (its first line joined)."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
