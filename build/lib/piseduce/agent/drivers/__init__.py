"""Drivers by node type; each is self-contained behind `base.Driver`."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from piseduce.agent.drivers.base import Driver

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from piseduce.config import AgentConfig

DRIVERS = {
    "raspberry": "piseduce.agent.drivers.raspberry.driver:RaspberryDriver",
    "g5k": "piseduce.agent.drivers.g5k.driver:G5kDriver",
    "iot-lab": "piseduce.agent.drivers.iotlab.driver:IotlabDriver",
}


def driver_class(config: AgentConfig) -> type[Driver]:
    target = config.driver or DRIVERS[config.node_type]
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise TypeError(f"{target} is not a Driver")
    return cls


def load_driver(config: AgentConfig, sessions: sessionmaker[Session]) -> Driver:
    return driver_class(config)(config, sessions)
