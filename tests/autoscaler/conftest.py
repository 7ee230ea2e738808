"""Fixtures for the autoscaler's tests: the fake fleet (a builder Deployment, its pods and
their sidecars' ``/status``) and controllers wired to the fake Kubernetes API. Their
building blocks are in fleet.py."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client
from prometheus_client import CollectorRegistry

from autoscaler.controller.kube import Kube
from autoscaler.controller.loop import Controller, RunSettings
from autoscaler.controller.metrics import Metrics
from fakes.kubernetes import FakeCluster
from tests.autoscaler.fleet import DEPLOY, EPOCH, LABELS, NS, SIDECAR_PORT, FixedElector, Fleet, Sidecars, config_yaml


@pytest.fixture
async def sidecars() -> AsyncIterator[Sidecars]:
    fakes = Sidecars()
    SIDECAR_PORT.append(fakes.port)
    yield fakes
    await fakes.close()


@pytest.fixture
async def fleet(k8s: FakeCluster, sidecars: Sidecars) -> Fleet:
    k8s.put(
        "deployments.apps",
        NS,
        {
            "metadata": {"name": DEPLOY, "labels": dict(LABELS)},
            "spec": {"replicas": 2, "selector": {"matchLabels": dict(LABELS)}, "template": {}},
        },
    )
    k8s.put("configmaps", NS, {"metadata": {"name": "buildkit-autoscaler"}, "data": {"config.yaml": config_yaml()}})
    return Fleet(k8s, sidecars)


@pytest.fixture
async def controller_factory(api: client.ApiClient) -> AsyncIterator[Any]:
    made: list[Controller] = []
    async with aiohttp.ClientSession() as http:

        async def make(*, dry_run: bool = False, leader: bool = True) -> Controller:
            loop = asyncio.get_running_loop()
            controller = Controller(
                kube=Kube(api),
                settings=RunSettings(config_namespace=NS, config_name="buildkit-autoscaler", dry_run=dry_run),
                metrics=Metrics(registry=CollectorRegistry()),
                elector=FixedElector(leader),  # type: ignore[arg-type]
                http=http,
                clock=loop.time,
                wall=lambda: EPOCH + datetime.timedelta(seconds=loop.time()),
            )
            made.append(controller)
            await controller.start()
            return controller

        yield make
        for controller in made:
            await controller.close()
