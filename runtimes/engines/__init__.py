"""TensorRT engines, built on the device they run on: their build settings and profiles (`tensorrt_engine`,
`tensorrt_profile`, pure logic, tested everywhere) and the build itself (`tensorrt_build`, TensorRT and CUDA). It may
import the bundle format and the core; only the backends, the command line and the host's exporters import it."""
