"""The `iot-lab` driver (FIT IoT-LAB sensors through iotlabcli's Python API)."""

from piseduce.agent.drivers.iotlab.driver import IotlabDriver

__all__ = ["IotlabDriver"]
