"""The users' API's answers are defined once (piseduce.api_models): the web UI's routes answer with
those classes and the Python client reads with the very same ones, keeping what a newer web UI adds."""

from __future__ import annotations

import typing

from fastapi.routing import APIRoute

from piseduce import api_models
from piseduce.client import models as m
from piseduce.webui.api import routes_account, routes_catalog, routes_reservations, routes_slots


def _answered_classes() -> set[type]:
    found: set[type] = set()
    routes = [r for mod in (routes_account, routes_catalog, routes_reservations, routes_slots)
              for r in mod.router.routes]
    for route in routes:
        if isinstance(route, APIRoute) and route.response_model is not None:
            model = route.response_model
            found.update(typing.get_args(model) or (model,))
    return found


def test_the_routes_and_the_client_use_the_same_classes() -> None:
    served = _answered_classes()
    client_side = {v for v in vars(m).values() if isinstance(v, type) and issubclass(v, api_models.ApiModel)}
    assert served, "no route declares its answer"
    assert all(cls.__module__ == "piseduce.api_models" for cls in served), served
    # Every answer the API gives is read with its own class (the error model is read by errors.py).
    assert served <= client_side, served - client_side
    # The rest are parts of answers (a reservation's connection, a schedule row's slots).
    assert client_side - served <= {api_models.ApiModel, api_models.ConnectionOut, api_models.SlotOut}


def _reservation(**extra: object) -> dict[str, object]:
    return {
        "key": "rpi/1", "agent": "rpi", "id": 1, "node": "pi-1", "type": "raspberry", "owner": "a@x.org",
        "bin": "", "status": "deployed", "step": "", "progress": None, "start": "2026-12-01T10:00:00Z",
        "end": "2026-12-01T12:00:00Z", "actions": ["release"], "events": [],
        "connection": {"host": "10.0.0.1", "user": "pi", "tunnel": "wg0"}, **extra,
    }


def test_a_newer_web_uis_extra_fields_are_kept_for_json() -> None:
    r = m.ReservationDetail.model_validate(_reservation(energy_wh=12.5))
    sent = r.as_json()
    assert sent["energy_wh"] == 12.5
    assert sent["connection"]["tunnel"] == "wg0"
    assert "port" not in sent["connection"]  # a default the server left out is not invented


def test_the_spec_does_not_declare_the_leniency() -> None:
    # The spec stays what it was: no `additionalProperties` on the answers (JSON Schema allows them).
    schema = api_models.ReservationDetailOut.model_json_schema()
    assert "additionalProperties" not in schema
    assert all("additionalProperties" not in d for d in schema.get("$defs", {}).values())
