"""``run``'s start-up: the Kubernetes client configuration, then one probe of the API server.

Each failure is a :class:`StartupError` that tells apart what the operator has to fix,
naming the value at fault:

* the kubeconfig file: not found, unreadable, not YAML, not usable (a missing key);
* no in-cluster configuration (not in a pod): use ``--kubeconfig PATH``;
* the API server: connection refused at its URL, TLS failing, a name that does not
  resolve, no answer within :data:`PROBE_TIMEOUT_SECONDS`, the credentials refused (401).

Permissions are told apart by the first real call (the ConfigMap's LIST in
:meth:`autoscaler.controller.loop.Controller.start`): "forbidden: list configmaps".
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client.rest import ApiException

from autoscaler.controller.kube import server_message
from autoscaler.controller.loop import StartupError

PROBE_TIMEOUT_SECONDS = 5.0
"""``GET /version`` at start-up. A live API server answers in milliseconds; 5 s tolerates a
loaded one, and an unreachable one is reported within seconds instead of after the 30 s the
ConfigMap's first LIST may take."""

NO_IN_CLUSTER = "use --kubeconfig PATH (or BUILDKIT_AUTOSCALER_KUBECONFIG) outside a pod"


def _os_reason(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, IsADirectoryError):
        return "is a directory, not a kubeconfig file"
    return (error.strerror or str(error)).lower()


def _check_kubeconfig_file(path: str) -> None:
    """Fail on what the library would only log (a missing file) or crash on (a file that is not a mapping)."""
    flag = f"--kubeconfig={path!r}"
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as e:
        raise StartupError(f"{flag}: {_os_reason(e)}") from e
    except UnicodeDecodeError as e:
        raise StartupError(f"{flag}: not a kubeconfig (not text)") from e
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise StartupError(f"{flag}: not a kubeconfig (not YAML: {' '.join(str(e).split())})") from e
    if not isinstance(document, dict):
        raise StartupError(f"{flag}: not a kubeconfig (a YAML mapping with clusters, users, contexts expected)")


async def api_client(kubeconfig: str | None) -> client.ApiClient:
    """The API client: from ``kubeconfig`` if given, else the pod's in-cluster configuration."""
    configuration = client.Configuration()
    if kubeconfig:
        _check_kubeconfig_file(kubeconfig)
        try:
            # persist_config=False: never write token refreshes back into the operator's file.
            await kube_config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration, persist_config=False
            )
        # The library reports a malformed kubeconfig as ConfigException, or as whichever
        # error its walk over the mapping hits first (a list where a mapping belongs...).
        except (kube_config.ConfigException, KeyError, TypeError, AttributeError, ValueError) as e:
            reason = str(e) or type(e).__name__
            raise StartupError(f"--kubeconfig={kubeconfig!r}: not a usable kubeconfig: {reason}") from e
    else:
        try:
            kube_config.load_incluster_config(client_configuration=configuration)
        except kube_config.ConfigException as e:
            raise StartupError(f"no in-cluster config ({str(e).rstrip('.')}): {NO_IN_CLUSTER}") from e
    return client.ApiClient(configuration)


def unreachable(error: BaseException, *, url: str, timeout_seconds: float) -> str:
    """Why the API server at ``url`` could not be asked, with what to check."""
    check = "check the API server's address (the kubeconfig's server)"
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate of {url} not trusted ({error.certificate_error}): check the CA in the kubeconfig"
    if isinstance(error, aiohttp.ClientSSLError):
        return f"TLS handshake with {url} failed ({error.os_error}): is it an https:// API server address?"
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve the host of {url}: {check}"
    if isinstance(error, aiohttp.ClientConnectorError):
        if isinstance(error.os_error, ConnectionRefusedError):
            return f"connection refused at {url}: is the API server running? {check}"
        return f"cannot connect to {url} ({error.os_error.strerror or error.os_error}): {check}"
    if isinstance(error, TimeoutError):
        return f"no answer from {url} within {timeout_seconds:g} s: {check}"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return f"{url} closed the connection without an answer: is it an API server (and http vs https right)?"
    return f"{url}: {type(error).__name__}: {error}"


async def probe(api: client.ApiClient, *, timeout_seconds: float = PROBE_TIMEOUT_SECONDS) -> str:
    """``GET /version`` once; the server's version, or a :class:`StartupError` naming the URL and the fix."""
    url = str(api.configuration.host)
    try:
        info = await client.VersionApi(api).get_code(_request_timeout=timeout_seconds)
    except ApiException as e:
        said = server_message(e)
        detail = f" ({said})" if said else ""
        if e.status == 401:
            raise StartupError(
                f"unauthorized at {url}{detail}: the API server refused the credentials "
                "(the kubeconfig's user, or the pod's service account token)"
            ) from e
        if e.status == 403:
            return "unknown (GET /version forbidden)"  # allowed to differ: the calls that matter are checked next
        raise StartupError(
            f"{url} answered GET /version with HTTP {e.status} {e.reason or ''}{detail}: is it a Kubernetes API server?"
        ) from e
    except (aiohttp.ClientError, TimeoutError) as e:
        raise StartupError(unreachable(e, url=url, timeout_seconds=timeout_seconds)) from e
    except (ValueError, TypeError) as e:  # the client's model refused the body (a required field missing)
        raise StartupError(
            f"{url} answered GET /version with no Kubernetes version: is it a Kubernetes API server?"
        ) from e
    return str(info.git_version)
