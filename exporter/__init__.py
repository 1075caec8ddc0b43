"""The exporter: the learner's model as a versioned, verified ONNX bundle, and its way to devices.

Modules (each one job; the public API in brief):
  config    ExportConfig, the `export:` section of the YAML config
  export    to_onnx(model, ...) -> ONNX bytes: uint8 NHWC `image` in, one named output per head
            (HEADS: `mask`, `embedding`, `segments`), normalisation, sigmoid and softmax inside,
            dynamic batch; and
            export_checkpoint / export_model: load -> export -> verify -> publish, the one path
            `motionmask export` and the daemon take; PeriodicExport, the daemon's policy (every N
            steps or minutes, only a model that beats the last export on held-back samples) (torch)
  verify    verify_onnx(...): onnx.checker, an ONNX Runtime CPU session, parity vs PyTorch on
            real frames, latency (torch)
  bundle    EXPORTS/<version>/{model.onnx, manifest.json} published atomically, LATEST, keep N,
            read_bundle(path) for devices (no torch)
  runtime   BundleRunner: runs a bundle with ONNX Runtime only, hot-reloads LATEST (no torch)
  transfer  BundleServer (announce on PUB, chunks on ROUTER) and pull_bundle / DeviceAgent (a
            device pulls, checks sha256, swaps atomically, keeps the previous bundle) (no torch)

Kept light on purpose (no imports here): devices import exporter.runtime and exporter.transfer
and must never load torch.
"""
