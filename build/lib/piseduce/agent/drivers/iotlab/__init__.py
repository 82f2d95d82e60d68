"""The `iot-lab` driver (FIT IoT-LAB sensors through iotlabcli's Python API): `driver.IotlabDriver`.
The package imports nothing itself (no import goes round through it)."""
